"""shoshin's shakespeare-char presets against nanoGPT's CPU shakespeare-char run, side by side.

nanoGPT's run is its `config/train_shakespeare_char.py` with its README's CPU settings: GPT, 4
layers, 4 heads, 128 wide, context 64, batch 12, 2,000 iterations, no dropout, lr 1e-3 (100 warmup
steps, cosine to 1e-4 at 2,000), AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0, the first 90%
of the text for training and the last 10% for validation.

Every model, nanoGPT's too, is scored by shoshin's one validation loss
(shoshin.training.validation): every validation character predicted once, in consecutive windows of
the model's own context. Each side runs as a fresh process on the same machine, alternating, once per
seed (shoshin: train.seed; nanoGPT: its fixed seed 1337 replaced by the same number in a copy of its
train.py written to a temporary folder). The targets (issue 19):

  --preset shakespeare-char-modern   mean whole-split val <= 1.80 over the seeds, in <= 1.0x
                                     nanoGPT's mean wall time (target 1)
  --preset shakespeare-char          nanoGPT's configuration: mean within one standard deviation of
                                     nanoGPT's mean, or better (target 2)

    python benchmarks/shakespeare_char.py CORPUS [--preset P] [key=value ...]    # shoshin only
    python benchmarks/shakespeare_char.py CORPUS --nanogpt ~/nanoGPT --seeds 3  # side by side

`--nanogpt` takes a nanoGPT checkout whose `data/shakespeare_char/` holds `train.bin`, `val.bin` and
`meta.pkl` written by its `prepare.py` from the same text. Threads: both inherit OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from shoshin.data.dataset import Split, prepare_data
from shoshin.loading import load
from shoshin.runs.store import latest_run
from shoshin.training.validation import validation_loss

TARGET_MODERN_VAL = 1.80  # target 1, with a wall time <= 1.0x nanoGPT's
TARGET_MODERN_RATIO = 1.0
SEED = 1337  # nanoGPT's and shoshin's default; seed k of a benchmark is SEED + k
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=100",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
    "--always_save_checkpoint=True",  # the checkpoint of step 2000, to score on the whole split
]


class LossOnly(nn.Module):
    """nanoGPT's model as shoshin's validation loss calls a model: forward(x, y) -> mean loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y)[1]


def run_shoshin(preset: str, corpus: str, seed: int, overrides: list[str], workdir: Path) -> dict:
    """`shoshin train PRESET` in a fresh process; its wall time, final val loss and our score."""
    runs = workdir / "runs"
    command = [sys.executable, "-m", "shoshin", "train", preset, f"data.source={corpus}"]
    command += [f"train.seed={seed}", *overrides, "--runs-dir", str(runs)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    run = latest_run(runs)
    model, _ = load(run.path)
    config = run.config
    data = prepare_data(config.data, log=lambda line: None)
    full = validation_loss(model, data.val, config.model.block_size, config.train.batch_size)
    return {"wall": wall, "printed": run.manifest.final_val_loss, "full": full}


def run_nanogpt(root: Path, seed: int, workdir: Path) -> dict:
    """nanoGPT's train.py (its seed set to `seed`) in a fresh process; wall time and scores."""
    out = workdir / "nanogpt-out"
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "nanogpt_train.py"
    source = (root / "train.py").read_text()
    script.write_text(
        source.replace(
            "torch.manual_seed(1337 + seed_offset)", f"torch.manual_seed({seed} + seed_offset)"
        )
    )
    env = {**os.environ, "PYTHONPATH": str(root)}  # its `from model import GPT`
    command = [sys.executable, str(script), *NANOGPT_ARGS, f"--out_dir={out}"]
    start = time.perf_counter()
    log = subprocess.run(
        command, cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout
    wall = time.perf_counter() - start
    printed = float(re.findall(r"step 2000: train loss [\d.]+, val loss ([\d.]+)", log)[-1])
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    model = nanogpt.GPT(nanogpt.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    val = np.memmap(root / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16, mode="r")
    split = Split(val, np.ones(val.size, dtype=np.uint8))
    full = validation_loss(LossOnly(model), split, ckpt["model_args"]["block_size"], 12)
    return {"wall": wall, "printed": printed, "full": full}


def check_nanogpt(root: Path) -> None:
    data = root / "data" / "shakespeare_char"
    missing = [
        p for p in (root / "train.py", data / "train.bin", data / "val.bin") if not p.exists()
    ]
    if missing:
        sys.exit(
            f"error: {missing[0]} not found; --nanogpt takes a nanoGPT checkout whose "
            "data/shakespeare_char was prepared with its prepare.py"
        )
    if "torch.manual_seed(1337 + seed_offset)" not in (root / "train.py").read_text():
        sys.exit(f"error: {root / 'train.py'} does not seed as nanoGPT does; cannot set its seed")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def spread(values: list[float]) -> str:
    """mean ± standard deviation (sample), or the one value."""
    if len(values) < 2:
        return f"{values[0]:.4f} (one seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(preset: str, results: dict[str, list[dict]]) -> None:
    """The table, then the target of the preset with PASS or MISS."""
    print(f"{'':8s} {'seed':>5s} {'val (printed)':>14s} {'whole split':>12s} {'wall':>8s}")
    for name, rows in results.items():
        for row in rows:
            print(
                f"{name:8s} {row['seed']:5d} {row['printed']:14.4f} {row['full']:12.4f} "
                f"{row['wall']:7.1f}s"
            )
    ours = [r["full"] for r in results["shoshin"]]
    theirs = [r["full"] for r in results["nanoGPT"]]
    print(f"shoshin {preset}: whole-split val {spread(ours)}")
    if theirs:
        print(f"nanoGPT: whole-split val {spread(theirs)}")
        ratio = statistics.mean(r["wall"] for r in results["shoshin"]) / statistics.mean(
            r["wall"] for r in results["nanoGPT"]
        )
        print(f"wall time shoshin / nanoGPT: {ratio:.2f}x")
    mean = statistics.mean(ours)
    if preset == "shakespeare-char-modern":
        ok = mean <= TARGET_MODERN_VAL
        line = f"target 1: mean val {mean:.4f} <= {TARGET_MODERN_VAL}"
        if theirs:
            line += f" and wall {ratio:.2f}x <= {TARGET_MODERN_RATIO}x"
            ok = ok and ratio <= TARGET_MODERN_RATIO
        else:
            line += " (wall time not compared: give --nanogpt PATH)"
        print(f"{line}: {verdict(ok)}")
    elif preset == "shakespeare-char" and theirs:
        sd = statistics.stdev(theirs) if len(theirs) > 1 else 0.0
        bound = statistics.mean(theirs) + sd
        note = "" if len(theirs) > 1 else " (one nanoGPT seed: no spread, its value itself)"
        print(
            f"target 2: mean val {mean:.4f} <= nanoGPT's mean + 1 sd {bound:.4f}{note}: "
            f"{verdict(mean <= bound)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="path to tinyshakespeare.txt")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for shoshin")
    parser.add_argument("--preset", default="shakespeare-char", help="the shoshin preset to run")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout with prepared data")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of each side, 1337, 1338, ...")
    args = parser.parse_args()
    corpus = str(Path(args.corpus).resolve())
    if args.nanogpt:
        check_nanogpt(args.nanogpt)
    results: dict[str, list[dict]] = {"shoshin": [], "nanoGPT": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.seeds):
            work, seed = Path(tmp) / f"seed-{k}", SEED + k
            row = run_shoshin(args.preset, corpus, seed, args.overrides, work)
            results["shoshin"].append({"seed": seed, **row})
            print(f"shoshin seed {seed}: {row}", flush=True)  # as it comes: runs take minutes
            if args.nanogpt:
                row = run_nanogpt(args.nanogpt.resolve(), seed, work)
                results["nanoGPT"].append({"seed": seed, **row})
                print(f"nanoGPT seed {seed}: {row}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seeds} seed(s)")
    report(args.preset, results)


if __name__ == "__main__":
    main()
