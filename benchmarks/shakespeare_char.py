"""nanoGPT's CPU shakespeare-char run in shoshin (and, given a nanoGPT checkout, in nanoGPT itself).

The configuration is nanoGPT's `config/train_shakespeare_char.py` with its README's CPU settings:
GPT, 4 layers, 4 heads, 128 wide, context 64, batch 12, 2,000 iterations, no dropout, lr 1e-3
(100 warmup steps, cosine to 1e-4 at 2,000), AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0,
first 90% of the text for training and the last 10% for validation. shoshin runs it as the
`shakespeare-char` preset (`shoshin train shakespeare-char data.source=CORPUS`).

Each trained model is scored three ways on the validation split: its own estimate as printed while
training (shoshin: 20 batches spread evenly over the split; nanoGPT: 20 random batches), nanoGPT's
way (the mean of 20 random batches of 12 windows, drawn here with a fixed seed), and the whole split
(every validation character scored once). The targets: whole-split val loss <= 1.88 and a wall time
<= 0.9x nanoGPT's, both runs as fresh processes on the same machine, one after the other.

    python benchmarks/shakespeare_char.py CORPUS [key=value ...]                  # shoshin only
    python benchmarks/shakespeare_char.py CORPUS --nanogpt ~/nanoGPT [--rounds 2]  # side by side

`--nanogpt` takes a nanoGPT checkout whose `data/shakespeare_char/` holds `train.bin`, `val.bin` and
`meta.pkl` written by its `prepare.py` from the same text. Threads: both inherit OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shoshin.config import load_config
from shoshin.data.dataset import Split, eval_batches, get_batch, prepare_data
from shoshin.loading import load
from shoshin.models.loss import IGNORE_INDEX
from shoshin.runs.store import latest_run

TARGET_VAL_LOSS = 1.88  # nanoGPT's README figure for this CPU run
TARGET_TIME_RATIO = 0.9
BLOCK_SIZE, BATCH_SIZE = 64, 12
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


@torch.no_grad()
def score(loss_fn, split: Split) -> dict[str, float]:
    """Validation loss on the whole split and nanoGPT's way (20 random batches of 12 windows)."""
    total = count = 0.0
    for x, y in eval_batches(split, 64, BLOCK_SIZE):
        n = int((y != IGNORE_INDEX).sum())
        total, count = total + loss_fn(x, y) * n, count + n
    gen = torch.Generator().manual_seed(1337)
    batches = [get_batch(split, BATCH_SIZE, BLOCK_SIZE, gen) for _ in range(20)]
    return {
        "full": total / count,
        "nanogpt_way": statistics.mean(loss_fn(x, y) for x, y in batches),
    }


def run_shoshin(corpus: str, overrides: list[str], workdir: Path) -> dict[str, float]:
    """`shoshin train shakespeare-char` in a fresh process; its wall time and scores."""
    runs = workdir / "runs"
    command = [sys.executable, "-m", "shoshin", "train", "shakespeare-char"]
    command += [f"data.source={corpus}", *overrides, "--runs-dir", str(runs)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    run = latest_run(runs)
    model, _ = load(run.path)
    model.eval()
    data = prepare_data(
        load_config("shakespeare-char", [f"data.source={corpus}"]).data, log=lambda line: None
    )
    scores = score(lambda x, y: model(x, y).item(), data.val)
    return {"wall": wall, "printed": run.manifest.final_val_loss, **scores}


def run_nanogpt(root: Path, workdir: Path) -> dict[str, float]:
    """nanoGPT's train.py in a fresh process; its wall time, printed val loss and scores."""
    out = workdir / "nanogpt-out"
    command = [sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={out}"]
    start = time.perf_counter()
    log = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    printed = float(re.findall(r"step 2000: train loss [\d.]+, val loss ([\d.]+)", log)[-1])
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    model = nanogpt.GPT(nanogpt.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    val = np.memmap(root / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16, mode="r")
    split = Split(val, np.ones(val.size, dtype=np.uint8))
    scores = score(lambda x, y: model(x, y)[1].item(), split)
    return {"wall": wall, "printed": printed, **scores}


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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="path to tinyshakespeare.txt")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for shoshin")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout with prepared data")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two runs this often")
    args = parser.parse_args()
    corpus = str(Path(args.corpus).resolve())
    if args.nanogpt:
        check_nanogpt(args.nanogpt)
    results: dict[str, list[dict[str, float]]] = {"shoshin": [], "nanoGPT": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            work = Path(tmp) / f"round-{r}"
            results["shoshin"].append(run_shoshin(corpus, args.overrides, work))
            if args.nanogpt:
                results["nanoGPT"].append(run_nanogpt(args.nanogpt.resolve(), work))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} round(s)")
    print(f"{'':8s} {'val (printed)':>14s} {'nanoGPT way':>12s} {'full split':>11s} {'wall':>8s}")
    for name, rows in results.items():
        for row in rows:
            print(
                f"{name:8s} {row['printed']:14.4f} {row['nanogpt_way']:12.4f} "
                f"{row['full']:11.4f} {row['wall']:7.1f}s"
            )
    ours = results["shoshin"]
    full = statistics.median(r["full"] for r in ours)
    print(
        f"shoshin val loss on the whole split {full:.4f} (target <= {TARGET_VAL_LOSS}): "
        f"{verdict(full <= TARGET_VAL_LOSS)}"
    )
    if results["nanoGPT"]:
        ratio = statistics.median(r["wall"] for r in ours) / statistics.median(
            r["wall"] for r in results["nanoGPT"]
        )
        print(
            f"wall time shoshin / nanoGPT {ratio:.2f}x (target <= {TARGET_TIME_RATIO}x): "
            f"{verdict(ratio <= TARGET_TIME_RATIO)}"
        )
    else:
        print("wall time against nanoGPT: not measured (give --nanogpt PATH)")


if __name__ == "__main__":
    main()
