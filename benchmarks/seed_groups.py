"""The cost of a seed group: one run against `--seeds 3`, one after another and `--parallel`.

    python benchmarks/seed_groups.py CORPUS [--preset P] [--seeds 3] [--threads 2] [key=value ...]

Trains a preset (default shakespeare-char) on CORPUS (e.g. tinyshakespeare.txt, or chitchat)
three ways, side by side
in one script, each command timed whole (process start, data, provenance, checkpoints included):
a single run, a group of N seeds trained one after another, and the same group with --parallel
(N processes, the threads split between them). Prints the wall times, their ratios to the single
run, and the group's final val loss (mean ± sd). Overrides (e.g. train.max_steps=200) apply to all.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str], runs_dir: Path, threads: int) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SHOSHIN_RUNS_DIR": str(runs_dir)}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "shoshin", *args], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - started
    if out.returncode:
        sys.exit(f"shoshin {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, per command")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    corpus = args.corpus if args.corpus == "chitchat" else Path(args.corpus).resolve()
    base = ["train", args.preset, f"data.source={corpus}"]
    base += ["train.sample_tokens=0", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="seed-groups-") as tmp:
        root = Path(tmp)
        timed([*base, "train.max_steps=1"], root / "warm", args.threads)  # tokenize once, cached
        single, _ = timed(base, root / "single", args.threads)
        seq, _ = timed([*base, "--seeds", str(args.seeds)], root / "seq", args.threads)
        par, _ = timed(
            [*base, "--seeds", str(args.seeds), "--parallel"], root / "par", args.threads
        )
        env = {**os.environ, "SHOSHIN_RUNS_DIR": str(root / "seq")}
        listed = subprocess.run(
            [sys.executable, "-m", "shoshin", "runs"], capture_output=True, text=True, env=env
        ).stdout
    group_row = next(line for line in listed.splitlines() if line.startswith("g-"))
    print(
        f"{args.preset} on {args.corpus}; threads in all: {args.threads}; overrides: "
        f"{' '.join(args.overrides) or 'none'}"
    )
    print("| command | wall time | x one run |")
    print("|---|---:|---:|")
    print(f"| one run | {single:.1f} s | 1.00 |")
    print(f"| --seeds {args.seeds} (one after another) | {seq:.1f} s | {seq / single:.2f} |")
    print(f"| --seeds {args.seeds} --parallel | {par:.1f} s | {par / single:.2f} |")
    print(f"group (one after another): {group_row}")


if __name__ == "__main__":
    main()
