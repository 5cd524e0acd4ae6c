"""How good is `shoshin estimate`? Predict a shakespeare-char run, then run it and compare.

    python benchmarks/estimate_accuracy.py /path/to/tinyshakespeare.txt [--steps 300]

1. `shoshin estimate shakespeare-char ...` in its own process: predicted training time (from its
   calibration steps) and predicted peak memory of a training process.
2. `shoshin train shakespeare-char ...` with the same settings: the run records the time its
   optimizer steps took (`elapsed_seconds`), its peak resident memory, and its own estimate
   (calibrated inside the training process just before the loop).
3. Print predicted vs measured with their ratios; the target is within 30% (0.7x to 1.3x).

Both processes run one after the other on the same machine, so they see similar load; on a shared
machine the absolute times are noisy and the ratio is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def shoshin(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "shoshin", *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        sys.exit(f"shoshin {' '.join(args)} failed:\n{result.stderr}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=300, help="training steps (preset: 2000)")
    parser.add_argument("--calibration-steps", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="estimate-accuracy-"))
    env = {**os.environ, "SHOSHIN_RUNS_DIR": str(work / "runs")}
    overrides = [
        f"data.source={Path(args.corpus).resolve()}",
        f"train.max_steps={args.steps}",
        "train.sample_tokens=0",
    ]
    # Tokenize once up front (cached), so that neither measured process pays for it.
    shoshin("estimate", "shakespeare-char", *overrides, "--calibration-steps", "0", env=env)
    predicted = json.loads(
        shoshin(
            "estimate",
            "shakespeare-char",
            *overrides,
            "--json",
            "--calibration-steps",
            str(args.calibration_steps),
            env=env,
        ).stdout
    )

    start = time.perf_counter()
    shoshin("train", "shakespeare-char", *overrides, env=env)
    wall = time.perf_counter() - start
    (run,) = (work / "runs").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    own = manifest["estimate"]
    measured_s, peak = manifest["elapsed_seconds"], manifest["peak_rss_bytes"]

    mib = 2**20
    print(f"shakespeare-char, {args.steps} steps, {manifest['threads']} threads, run {run.name}")
    print(f"process wall time {wall:.1f}s (startup, data, evaluation and checkpoints included)")
    print()
    print("| quantity | predicted | measured | measured / predicted |")
    print("|---|---:|---:|---:|")
    for label, p in (
        ("training time, `shoshin estimate` (s)", predicted["predicted_train_seconds"]),
        ("training time, the run's own estimate (s)", own["predicted_train_seconds"]),
    ):
        print(f"| {label} | {p:.1f} | {measured_s:.1f} | {measured_s / p:.2f} |")
    for label, p in (
        ("peak memory, `shoshin estimate` (MiB)", predicted["memory"]["training_process"]),
        ("peak memory, the run's own estimate (MiB)", own["memory"]["training_process"]),
    ):
        print(f"| {label} | {p / mib:.0f} | {peak / mib:.0f} | {peak / p:.2f} |")
    m = predicted["memory"]
    print()
    print(
        f"memory parts (MiB): tensors {m['training_tensors'] / mib:.1f} "
        f"(weights {m['weights'] / mib:.1f}, gradients {m['gradients'] / mib:.1f}, "
        f"AdamW {m['optimizer'] / mib:.1f}, activations {m['activations'] / mib:.1f}, "
        f"data {m['data'] / mib:.1f}) + runtime {m['runtime'] / mib:.1f}"
    )
    print(
        f"calibration: {predicted['step_seconds'] * 1000:.1f} ms/step (estimate), "
        f"{own['step_seconds'] * 1000:.1f} ms/step (in the run); measured "
        f"{measured_s / manifest['steps'] * 1000:.1f} ms/step over {manifest['steps']} steps"
    )


if __name__ == "__main__":
    main()
