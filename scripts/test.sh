#!/usr/bin/env bash
# Install shoshin with its test dependencies into ./.venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh test
. .venv/bin/activate
python -m pytest -q "$@"
