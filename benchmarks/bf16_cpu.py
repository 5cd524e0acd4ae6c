"""Training throughput of train.dtype=bfloat16 against float32 on this CPU, for each preset.

bfloat16 autocast pays off on a CPU only where matrix units take it (AMX, AVX-512 BF16); elsewhere
it emulates. This prints the CPU's flags, then for each preset the tokens per second of its real
training step (shoshin.training.step.TrainStep, the preset's model, batch and data), float32 and
bfloat16 timed alternately in one process, so that a busy machine slows both alike.

    python benchmarks/bf16_cpu.py [--steps 20] [--rounds 3] [--preset P ...] [--corpus TXT]

`--corpus` is the text the shakespeare presets train on (tinyshakespeare.txt); without it they
are skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from shoshin.config import load_config
from shoshin.data.dataset import prepare_data
from shoshin.models import build_model
from shoshin.training.distributed import init_distributed
from shoshin.training.step import TrainStep

PRESETS = ("tiny", "demo", "shakespeare-char", "shakespeare-char-modern", "lstm-char")


def cpu_flags() -> str:
    """The CPU's model name and its bfloat16-relevant flags, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip())
    flags = set(lines.get("flags\t\t", lines.get("flags", "")).split())
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni")
    name = lines.get("model name\t", lines.get("model name", "?")).strip()
    return f"{name}; flags: {' '.join(f for f in wanted if f in flags) or 'none of AVX-512/AMX'}"


def throughput(preset: str, corpus: str | None, steps: int, rounds: int) -> dict[str, float]:
    """Median tokens/s of each dtype over `rounds` alternating timings of `steps` steps."""
    overrides = [f"data.source={corpus}"] if corpus and preset.startswith("shakespeare") else []
    config = load_config(preset, overrides)
    data = prepare_data(config.data, log=lambda line: None)
    config.model.vocab_size = data.tokenizer.vocab_size
    tc, T = config.train, config.model.block_size
    dist = init_distributed(torch.device("cpu"))
    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    steppers = {}
    for dtype in rates:
        torch.manual_seed(0)
        tc.dtype = dtype
        step = TrainStep(
            build_model(config.model), tc, T, data.train, torch.Generator().manual_seed(0),
            schedule=lambda s: tc.lr, dist=dist,
        )  # fmt: skip
        step(0)  # the first step allocates; it is not timed
        steppers[dtype] = step
    tokens = tc.batch_size * tc.grad_accum * T * steps
    for _ in range(rounds):
        for dtype, step in steppers.items():
            started = time.perf_counter()
            for i in range(steps):
                step(i + 1)
            rates[dtype].append(tokens / (time.perf_counter() - started))
    return {dtype: statistics.median(r) for dtype, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two dtypes")
    parser.add_argument("--preset", action="append", help="preset(s) to time (default: all)")
    parser.add_argument("--corpus", help="tinyshakespeare.txt, for the shakespeare presets")
    args = parser.parse_args()
    print(cpu_flags())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':26s} {'float32 tok/s':>14s} {'bfloat16 tok/s':>15s} {'bf16/fp32':>10s}")
    for preset in args.preset or PRESETS:
        if preset.startswith("shakespeare") and not args.corpus:
            print(f"{preset:26s} skipped (give --corpus tinyshakespeare.txt)")
            continue
        r = throughput(preset, args.corpus, args.steps, args.rounds)
        ratio = r["bfloat16"] / r["float32"]
        print(f"{preset:26s} {r['float32']:14,.0f} {r['bfloat16']:15,.0f} {ratio:9.2f}x")


if __name__ == "__main__":
    main()
