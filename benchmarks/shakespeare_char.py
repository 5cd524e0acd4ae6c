"""Train the `shakespeare-char` preset and report validation loss and training tokens/s.

The published CPU baseline for these settings (nanoGPT's shakespeare_char, CPU variant: GPT, 4 layers,
4 heads, 128 wide, context 64, batch 12, no dropout, 2,000 iterations) is val loss 1.88.

    python benchmarks/shakespeare_char.py PATH/TO/tinyshakespeare.txt [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from shoshin.config import load_config
from shoshin.training.trainer import train

REFERENCE_VAL_LOSS = 1.88


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="path to tinyshakespeare.txt (or any text file)")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides")
    args = parser.parse_args()

    config = load_config("shakespeare-char", [f"data.source={args.corpus}", *args.overrides])
    with tempfile.TemporaryDirectory() as runs_dir:
        start = time.perf_counter()
        run = train(config, runs_dir, log=lambda line: None)
        wall = time.perf_counter() - start
        rows = run.metrics()
        manifest = run.manifest
    evals = [r for r in rows if "val_loss" in r]
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
    result = {
        "steps": manifest.steps,
        "final_val_loss": round(evals[-1]["val_loss"], 4),
        "best_val_loss": round(min(r["val_loss"] for r in evals), 4),
        "val_bits_per_char": round(evals[-1].get("val_bits_per_char", float("nan")), 4),
        "reference_val_loss": REFERENCE_VAL_LOSS,
        "train_tokens_per_sec_median": round(statistics.median(speeds)),
        "train_seconds": round(manifest.elapsed_seconds, 1),
        "wall_seconds": round(wall, 1),
        "threads": torch.get_num_threads(),
        "params": manifest.params,
        "torch": torch.__version__,
    }
    for r in evals:
        print(f"step {r['step']:5d}  val loss {r['val_loss']:.4f}")
    print(json.dumps(result, indent=2))
    verdict = "meets" if result["final_val_loss"] <= REFERENCE_VAL_LOSS else "misses"
    print(f"val loss {result['final_val_loss']} {verdict} the reference {REFERENCE_VAL_LOSS}")


if __name__ == "__main__":
    main()
