"""The quickstart's chatbot: `shoshin train demo` as the README runs it, scored against its target.

It trains the `demo` preset (GPT on the chitchat corpus, BPE 2,048) in a fresh process, as
`scripts/demo.sh` does, then scores the final model on the whole validation split: loss per token
(the first quickstart reached 3.93, estimated from 10 random batches of its 128-token windows) and
bits per UTF-8 byte (comparable across vocabularies). Target: val loss <= 3.65 within the demo's
budget, about 6 minutes of training on an idle 2-core CPU.

    python benchmarks/demo.py [key=value ...]      # ~7 minutes on an idle 2-core CPU
    python benchmarks/demo.py --run RUN_DIR        # score a finished run of the demo preset
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from shoshin.data.dataset import eval_batches, prepare_data
from shoshin.loading import load
from shoshin.models.loss import IGNORE_INDEX
from shoshin.runs.store import Run, latest_run

TARGET_VAL_LOSS = 3.65
BUDGET_MINUTES = 6.0  # the quickstart's training time on an idle 2-core CPU (README)


@torch.no_grad()
def whole_split_loss(model, split, batch_size: int, block_size: int) -> float:
    """Mean loss per target over every window of the validation split."""
    total = count = 0.0
    for x, y in eval_batches(split, batch_size, block_size):
        n = int((y != IGNORE_INDEX).sum())
        total, count = total + model(x, y).item() * n, count + n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides")
    parser.add_argument("--run", type=Path, help="score this finished run instead of training")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall = None
        if args.run:
            run = Run(args.run)
        else:
            runs = Path(tmp) / "runs"
            command = [sys.executable, "-m", "shoshin", "train", "demo", *args.overrides]
            start = time.perf_counter()
            subprocess.run(
                [*command, "--runs-dir", str(runs)], check=True, stdout=subprocess.DEVNULL
            )
            wall = time.perf_counter() - start
            run = latest_run(runs)
        manifest, config = run.manifest, run.config
        model, _ = load(run.path)
    model.eval()
    data = prepare_data(config.data, log=lambda line: None)
    T = config.model.block_size
    loss = whole_split_loss(model, data.val, config.train.batch_size, T)
    bits = loss * data.meta["tokens"]["val"] / data.meta["bytes"]["val"] / math.log(2)
    train_s = manifest.elapsed_seconds
    print(
        f"demo: {config.model.n_layer} layers x {config.model.n_embd} wide, context {T}, "
        f"{manifest.params:,} parameters, {manifest.steps} of {config.train.max_steps} steps "
        f"(batch {config.train.batch_size}), {torch.get_num_threads()} threads"
    )
    print(f"training {train_s / 60:.1f} min, {manifest.tokens_seen / train_s:,.0f} tokens/s")
    if wall is not None:
        print(
            f"whole command {wall / 60:.1f} min (budget: about {BUDGET_MINUTES:g} min of training)"
        )
    print(
        f"val loss while training (its {config.train.eval_iters} batches): "
        f"{manifest.final_val_loss:.4f}"
    )
    print(f"val loss on the whole split: {loss:.4f} ({bits:.4f} bits per byte)")
    verdict = "PASS" if loss <= TARGET_VAL_LOSS else "MISS"
    print(f"target val loss <= {TARGET_VAL_LOSS}: {verdict}")


if __name__ == "__main__":
    main()
