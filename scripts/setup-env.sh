#!/usr/bin/env bash
# Create ./.venv (if needed) with PyTorch and shoshin installed; `source` it or call it from the other scripts.
# PyTorch comes first so that shoshin's `torch>=2.4` requirement is already met (a bare `torch`
# requirement on a machine with nothing installed would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i warning || true
fi
python -m pip install -q -e ".${extras:+[$extras]}" 2>&1 | grep -v -i warning || true
python -c "import shoshin, torch; print(f'shoshin {shoshin.__version__}, torch {torch.__version__}')"
