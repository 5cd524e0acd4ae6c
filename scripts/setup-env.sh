#!/usr/bin/env bash
# Create ./.venv (if needed) with PyTorch and shoshin installed; `source` it or call it from the other scripts.
# PyTorch comes first so that shoshin's `torch>=2.4` requirement is already met (a bare `torch`
# requirement on a machine with nothing installed would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"

# pip's own chatter (progress, build-backend notes such as setuptools' "Editable installation")
# goes to a log that is shown only when the step fails.
quiet_pip() {
  local log
  log="$(mktemp)"
  if ! python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "error: pip install $* failed (output above)" >&2
    return 1
  fi
  rm -f "$log"
}

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
quiet_pip --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "installing PyTorch 2.13.0 (CPU) into .venv ..."
  quiet_pip "torch==2.13.0"
fi
echo "installing shoshin${extras:+ with [$extras]} and its dependencies into .venv ..."
quiet_pip -e ".${extras:+[$extras]}"
python -c "import shoshin, torch; print(f'shoshin {shoshin.__version__}, torch {torch.__version__}')"
