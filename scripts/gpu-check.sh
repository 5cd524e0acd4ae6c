#!/usr/bin/env bash
# The CUDA paths on a GPU machine, in one run: a short bf16 training run (eager and torch.compile),
# sample and serve of it on the GPU, the generation and serving benchmarks with --device cuda, and
# the tests that drive generation, training and serving (device auto = the GPU there).
#
#   bash scripts/gpu-check.sh            # in a checkout whose environment has shoshin's dependencies
#
# Where the GPU machine lacks some of them, wheels in .whl/ are installed first (see
# docs/BENCHMARKS.md). Figures and logs go to $OUT (default /tmp/gpu-check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
PY=${PYTHON:-python3}
RUNS=$(mktemp -d)
section() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

section machine
nvidia-smi -L
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

section "train tiny, bf16 autocast, eager"
$PY -m shoshin train --runs-dir "$RUNS" tiny train.device=cuda train.dtype=bfloat16 \
    train.max_steps=300 train.calibrate=false 2>&1 | tail -8
section "train tiny, bf16 autocast, torch.compile"
$PY -m shoshin train --runs-dir "$RUNS" tiny train.device=cuda train.dtype=bfloat16 \
    train.compile=true train.max_steps=300 train.calibrate=false 2>&1 | tail -8
$PY -m shoshin runs --runs-dir "$RUNS"

section "sample on the GPU (fp32, bf16, int8), seeded"
for opts in "--dtype fp32" "--dtype bf16" "--quantize int8"; do
    $PY -m shoshin sample latest --runs-dir "$RUNS" --device cuda $opts --max-new-tokens 48 \
        --seed 1 --prompt "hello" 2>&1 | tail -3
done

section "serve on the GPU"
$PY -m shoshin serve latest --runs-dir "$RUNS" --device cuda --port 8765 >"$OUT/serve.log" 2>&1 &
server=$!
$PY - <<'PY'
import time, httpx
for _ in range(120):
    try:
        httpx.get("http://127.0.0.1:8765/health").raise_for_status()
        break
    except httpx.HTTPError:
        time.sleep(0.5)
body = {"prompt": "hello", "max_tokens": 24, "seed": 1, "logprobs": 2}
r = httpx.post("http://127.0.0.1:8765/v1/completions", json=body, timeout=60)
print(r.status_code, r.json()["choices"][0]["text"][:60].encode(), r.json()["usage"])
body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "seed": 1, "n": 1}
r = httpx.post("http://127.0.0.1:8765/v1/chat/completions", json=body, timeout=60)
print(r.status_code, r.json()["choices"][0]["finish_reason"], r.json()["usage"])
PY
kill -INT $server; wait $server; echo "serve exited $?"; tail -3 "$OUT/serve.log"

section "generation benchmark, cuda"
$PY benchmarks/generation.py --device cuda --new-tokens 128 --rounds 3 2>&1 | tee "$OUT/generation.txt"

section "serving benchmark, cuda"
for dtype in fp32 bf16; do
    $PY benchmarks/serving.py --device cuda --dtype $dtype --models gpt2-124m --rounds 1 \
        2>&1 | tee "$OUT/serving-$dtype.txt"
done

section "tests (device auto = cuda)"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_sampling.py tests/test_generation.py \
    tests/test_smoke.py tests/test_chat.py tests/test_step.py tests/test_finetune.py \
    tests/test_interop.py 2>&1 | tail -15
section done
