"""How long `shoshin --help` and the commands that touch no model take to start, beside
`python -c pass`, for this checkout and optionally another (e.g. the code before a change).

    python benchmarks/startup.py [--before /path/to/other/checkout] [--repeats 7]

Each command runs `--repeats` times, interleaved so that load on a shared machine hits them alike;
the median wall time of each is printed, and whether `import torch` happened (from -X importtime).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _env(checkout: Path | None) -> dict[str, str]:
    return {**os.environ, **({"PYTHONPATH": str(checkout)} if checkout else {})}


# `python -m` puts the working directory first on sys.path: run elsewhere, so PYTHONPATH decides.
ELSEWHERE = tempfile.gettempdir()


def timed(argv: list[str], checkout: Path | None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=_env(checkout), capture_output=True, cwd=ELSEWHERE)
    return time.perf_counter() - start


def imports_torch(argv: list[str], checkout: Path | None) -> bool:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=_env(checkout),
        capture_output=True,
        text=True,
        cwd=ELSEWHERE,
    )
    return any(re.search(r"\|\s+torch$", line) for line in out.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to time beside this one")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    runs = tempfile.mkdtemp()
    commands = {
        "python -c pass": (["-c", "pass"], None),
        "shoshin --help": (["-m", "shoshin", "--help"], HERE),
        "shoshin runs": (["-m", "shoshin", "runs", "--runs-dir", runs], HERE),
        "shoshin config": (["-m", "shoshin", "config"], HERE),
        "shoshin config model.n_layr=2": (["-m", "shoshin", "config", "model.n_layr=2"], HERE),
    }
    if args.before:
        for name in list(commands)[1:]:
            commands[f"{name} (before)"] = (commands[name][0], args.before)
    times: dict[str, list[float]] = {name: [] for name in commands}
    torch = {name: imports_torch(argv, checkout) for name, (argv, checkout) in commands.items()}
    for _ in range(args.repeats):
        for name, (argv, checkout) in commands.items():
            times[name].append(timed(argv, checkout))
    base = statistics.median(times["python -c pass"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:42s} {median:6.3f} s  ({median - base:+.3f} s over python -c pass)"
            f"  torch imported: {'yes' if torch[name] else 'no'}"
        )


if __name__ == "__main__":
    main()
