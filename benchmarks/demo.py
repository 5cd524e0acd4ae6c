"""The quickstart's chatbot: `shoshin train demo` as the README runs it, scored against its target.

It trains the `demo` preset (on the chitchat corpus, BPE 2,048) in a fresh process, as
`scripts/demo.sh` does, then scores the final model by shoshin's one validation loss
(shoshin.training.validation: the whole split, every token predicted once, in windows of the
model's context): loss per token and bits per UTF-8 byte (comparable across vocabularies). Target
(issue 19, target 3): <= 1.72 bits per byte (the GPT demo with a 128-token context reached 1.857)
with a context of at least 256 tokens, within the demo's budget of about 6 minutes of training on an
idle 2-core CPU.

    python benchmarks/demo.py [key=value ...]      # ~7 minutes on an idle 2-core CPU
    python benchmarks/demo.py --run RUN_DIR        # score a finished run of the demo preset
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from shoshin.data.dataset import prepare_data
from shoshin.loading import load
from shoshin.runs.store import Run, latest_run
from shoshin.training.validation import per_unit, validation_loss

TARGET_BITS_PER_BYTE = 1.72
MIN_CONTEXT = 256
BUDGET_MINUTES = 6.0  # the quickstart's training time on an idle 2-core CPU (README)


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
    data = prepare_data(config.data, log=lambda line: None)
    T = config.model.block_size
    loss = validation_loss(model, data.val, T, config.train.batch_size)
    _, bits = per_unit(loss, data.meta, config.data.tokenizer)
    train_s = manifest.elapsed_seconds
    print(
        f"demo: {config.model.arch}, {config.model.n_layer} layers x {config.model.n_embd} wide, "
        f"context {T}, "
        f"{manifest.params:,} parameters, {manifest.steps} of {config.train.max_steps} steps "
        f"(batch {config.train.batch_size}), {torch.get_num_threads()} threads"
    )
    print(f"training {train_s / 60:.1f} min, {manifest.tokens_seen / train_s:,.0f} tokens/s")
    if wall is not None:
        print(
            f"whole command {wall / 60:.1f} min (budget: about {BUDGET_MINUTES:g} min of training)"
        )
    print(f"val loss at the end of training (whole split): {manifest.final_val_loss:.4f}")
    print(f"val loss on the whole split, scored here: {loss:.4f} ({bits:.4f} bits per byte)")
    ok = bits <= TARGET_BITS_PER_BYTE and T >= MIN_CONTEXT
    print(
        f"target 3: <= {TARGET_BITS_PER_BYTE} bits per byte with a context >= {MIN_CONTEXT} "
        f"(this: {bits:.4f}, context {T}): {'PASS' if ok else 'MISS'}"
    )


if __name__ == "__main__":
    main()
