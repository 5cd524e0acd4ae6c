"""Fine-tuning throughput: shoshin's training step vs the Hugging Face `Trainer`, side by side.

Same work for both: a GPT-2-124M-shaped model with the same random weights (saved once with
`save_pretrained`, loaded by transformers and by shoshin's own loader), the same tokenized chitchat
batches (drawn once, fed to both in the same order), the same batch size, sequence length, fp32,
AdamW with weight decay, gradient clipping at 1.0, warmup, no dropout, and the same thread count.
The first step of each side is a warm-up and is not timed; rounds alternate to share the noise.

    python benchmarks/finetune_vs_hf_trainer.py            # a few minutes on a 2-core CPU
    python benchmarks/finetune_vs_hf_trainer.py --steps 3 --rounds 1 --n-layer 2   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from shoshin.config import DataConfig, TrainConfig
from shoshin.data.dataset import get_batch, prepare_data
from shoshin.interop.hf import load_checkpoint
from shoshin.models.loss import IGNORE_INDEX
from shoshin.training.optim import lr_at, make_optimizer


def make_batches(
    n: int, batch_size: int, seq_len: int, loss_on: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches of chitchat windows, tokenized with a BPE trained on chitchat (ids < 8192).

    With loss_on="assistant" the targets of user turns are masked, as `shoshin finetune` does.
    """
    data = prepare_data(
        DataConfig(source="chitchat", tokenizer="bpe", vocab_size=8192, loss_on=loss_on)
    )
    gen = torch.Generator().manual_seed(0)
    return [get_batch(data.train, batch_size, seq_len, gen) for _ in range(n)]


def save_random_gpt2(folder: Path, n_layer: int) -> None:
    """GPT-2 124M's shape (12 layers unless told), random weights, no dropout; plus a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    # The batches are already token ids; the checkpoint only needs some tokenizer beside it.
    tok = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)


def shoshin_steps(folder: Path, batches, tc: TrainConfig) -> list[float]:
    """Seconds per step of shoshin's training step (as in training/trainer.py) on each batch."""
    model = load_checkpoint(folder).model
    model.train()
    opt = make_optimizer(model, tc, "cpu")
    times = []
    for step, (x, y) in enumerate(batches):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        loss = model(x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def hf_labels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """transformers' labels for one window: the inputs, -100 where shoshin's target is masked.

    transformers shifts labels itself, so label t is the target of position t-1 (y[t-1]).
    """
    labels = x.clone()
    labels[0] = -100
    labels[1:][y[:-1] == IGNORE_INDEX] = -100
    return labels


def hf_trainer_steps(folder: Path, batches, tc: TrainConfig, workdir: Path) -> list[float]:
    """Seconds per step of transformers' Trainer on the same batches, in the same order."""
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    rows = [
        {"input_ids": x, "labels": hf_labels(x, y)}
        for xb, yb in batches
        for x, y in zip(xb, yb, strict=True)
    ]

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=batches[0][0].size(0),
        max_steps=len(batches),
        learning_rate=tc.lr,
        weight_decay=tc.weight_decay,
        adam_beta1=tc.beta1,
        adam_beta2=tc.beta2,
        max_grad_norm=tc.grad_clip,
        warmup_steps=tc.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=tc.seed,
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    InOrder(model=model, args=args, train_dataset=rows, callbacks=[timer]).train()
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=12, help="12 = GPT-2 124M")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--loss-on",
        choices=("all", "assistant"),
        default="all",
        help="assistant: mask user turns, the default of shoshin finetune",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    tc = TrainConfig(
        lr=6e-5, min_lr=6e-6, warmup_steps=2, weight_decay=0.01, max_steps=args.steps + 1
    )
    batches = make_batches(args.steps + 1, args.batch_size, args.seq_len, args.loss_on)
    tokens = args.batch_size * args.seq_len
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-random"
        save_random_gpt2(folder, args.n_layer)
        for r in range(args.rounds):
            ours += shoshin_steps(folder, batches, tc)[1:]  # the first step warms up
            theirs += hf_trainer_steps(folder, batches, tc, Path(tmp) / f"hf-{r}")[1:]
    s_ours, s_theirs = statistics.median(ours), statistics.median(theirs)
    print(
        f"GPT-2 shape: {args.n_layer} layers, 768 wide, vocab 50257; batch {args.batch_size} x "
        f"{args.seq_len} tokens, fp32, {args.threads} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, loss on {args.loss_on} tokens"
    )
    print(f"timed steps per side: {len(ours)} (median of each)")
    print(f"shoshin step      {s_ours:7.2f} s  {tokens / s_ours:8.1f} tokens/s")
    print(f"HF Trainer step   {s_theirs:7.2f} s  {tokens / s_theirs:8.1f} tokens/s")
    print(f"ratio shoshin / HF Trainer: {s_theirs / s_ours:.2f}x")


if __name__ == "__main__":
    main()
