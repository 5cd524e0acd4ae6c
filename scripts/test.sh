#!/usr/bin/env bash
# Install shoshin with its test dependencies into ./.venv and run the whole test suite, slow tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh test
# The web chat page's browser test drives Debian's chromium (Playwright's own browsers are not
# downloaded); install it when we can, otherwise that test skips and says why.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium through apt-get (for the web chat page's browser test) ..."
  log="$(mktemp)"
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >"$log" 2>&1; then  # apt's and debconf's chatter stays in the log unless it fails
    tail -n 5 "$log" >&2
    echo "warning: could not install chromium; the browser test will skip" >&2
  fi
  rm -f "$log"
fi
. .venv/bin/activate
# Every test, the slow ones included: this is the check before a merge (and what CI runs).
# `python -m pytest` alone runs the default suite, without the tests marked slow.
python -m pytest -q -m "slow or not slow" "$@"
