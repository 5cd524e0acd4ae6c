"""LoRA vs full fine-tuning on a GPT-2-medium-shaped model: trainable parameters, peak memory and
step time, side by side.

Both sides run shoshin's own training step (shoshin.training.step.TrainStep: forward, backward,
gradient clipping, fused AdamW) on the same random weights and the same random batches, each in a
fresh subprocess, so each peak resident memory (the process's RSS high-water mark) is its own.
The first step of each side is a warm-up and is not timed; with --rounds 2 the sides alternate.

    python benchmarks/lora.py                      # 24 layers x 1024 wide: about 5 minutes on 2 cores
    python benchmarks/lora.py --n-layer 2 --steps 2   # a quick look

Targets (the reason for LoRA): under 1% of the parameters train, the process peaks at no more
than 60% of a full fine-tune's memory (no gradients or AdamW moments for the frozen weights), and
a step takes no longer (the frozen weights need no weight gradients).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TARGET_TRAINABLE = 0.01
TARGET_MEMORY = 0.60
TARGET_TIME = 1.0


def worker(args: argparse.Namespace) -> None:
    """One side: build the model, (LoRA: attach adapters), time the training steps; print JSON."""
    import numpy as np
    import torch

    from shoshin.config import LoraConfig, ModelConfig, TrainConfig
    from shoshin.data.dataset import Split
    from shoshin.models import build_model, count_parameters, count_trainable
    from shoshin.models import lora as lora_adapters
    from shoshin.training.distributed import DistContext
    from shoshin.training.step import TrainStep

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=args.n_layer,
        n_head=16,
        n_embd=1024,
        block_size=args.context,
        vocab_size=50257,
        dropout=0.0,
    )
    model = build_model(config)
    if args.worker == "lora":
        lora = LoraConfig(rank=args.rank, alpha=2.0 * args.rank, targets=args.targets)
        lora_adapters.attach(model, lora)
    model.train()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 200_000, dtype=np.int64)
    split = Split(tokens=tokens, mask=np.ones_like(tokens, dtype=np.uint8))
    tc = TrainConfig(batch_size=args.batch_size, lr=1e-4, weight_decay=0.01, grad_clip=1.0)
    step = TrainStep(
        model,
        tc,
        args.context,
        split,
        torch.Generator().manual_seed(0),
        schedule=lambda _: tc.lr,
        dist=DistContext(device=torch.device("cpu")),
    )
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    print(
        json.dumps(
            {
                "params": count_parameters(model),
                "trainable": count_trainable(model),
                "step_seconds": times[1:],  # the first step warms up
                "peak_rss_bytes": peak_kib * 1024,
            }
        )
    )


def run_side(side: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", side]
    for name in ("n_layer", "context", "batch_size", "steps", "threads", "rank", "targets"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"the {side} side failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=24, help="24 = GPT-2 medium")
    parser.add_argument("--context", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="both", choices=("attention", "mlp", "both"))
    parser.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for side in ("full", "lora"):
            r = run_side(side, args)
            prev = results.setdefault(side, {**r, "step_seconds": []})
            prev["step_seconds"] += r["step_seconds"]
            prev["peak_rss_bytes"] = max(prev["peak_rss_bytes"], r["peak_rss_bytes"])
    full, lora = results["full"], results["lora"]
    print(
        f"GPT-2-medium shape: {args.n_layer} layers, 1024 wide, 16 heads, vocab 50257, random "
        f"weights; batch {args.batch_size} x {args.context} tokens, fp32, {args.threads} threads; "
        f"LoRA rank {args.rank}, alpha {2 * args.rank}, on {args.targets}"
    )
    print(f"{'':8}{'parameters':>14}{'trainable':>14}{'peak RSS':>12}{'step (median)':>16}")
    for name, r in (("full", full), ("LoRA", lora)):
        step_s = statistics.median(r["step_seconds"])
        print(
            f"{name:8}{r['params']:>14,}{r['trainable']:>14,}"
            f"{r['peak_rss_bytes'] / 2**30:>10.2f} G{step_s:>14.2f} s"
        )
    share = lora["trainable"] / lora["params"]
    memory = lora["peak_rss_bytes"] / full["peak_rss_bytes"]
    time_ratio = statistics.median(lora["step_seconds"]) / statistics.median(full["step_seconds"])
    for what, value, target, fmt in (
        ("trainable share (LoRA)", share, TARGET_TRAINABLE, "{:.3%}"),
        ("peak memory LoRA / full", memory, TARGET_MEMORY, "{:.2f}x"),
        ("step time LoRA / full", time_ratio, TARGET_TIME, "{:.2f}x"),
    ):
        verdict = "PASS" if value <= target else "MISS"
        print(f"{what:26} {fmt.format(value):>9}  target <= {fmt.format(target)}  {verdict}")


if __name__ == "__main__":
    main()
