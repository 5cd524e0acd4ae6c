"""Fine-tuning throughput: shoshin's training step vs the Hugging Face `Trainer`, side by side.

Same work for both: a GPT-2-124M-shaped model (`--layout llama`: SmolLM2-135M's Llama shape,
loaded as shoshin's llama arch) with the same random weights (saved once with `save_pretrained`,
loaded by transformers and by shoshin's own loader), the same tokenized chitchat
batches (drawn once, fed to both in the same order), the same batch size, sequence length, fp32,
AdamW with weight decay, gradient clipping at 1.0, warmup, no dropout, and the same thread count.
By default the user turns carry no loss on either side (shoshin finetune's default; transformers
gets -100 labels at the same positions); --loss-on all trains on every token. The first step of
each side is a warm-up and is not timed; rounds alternate to share the noise. It prints the median
time of each phase (forward, backward, optimizer) for both, and the throughput ratio against the
target of 1.2x.

    python benchmarks/finetune_vs_hf_trainer.py            # a few minutes on a 2-core CPU
    python benchmarks/finetune_vs_hf_trainer.py --steps 3 --rounds 1 --n-layer 2   # a quick look
    python benchmarks/finetune_vs_hf_trainer.py --layout llama --steps 3 --rounds 1  # SmolLM2-135M
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shoshin.config import DataConfig, TrainConfig
from shoshin.data.dataset import Split, get_batch, prepare_data
from shoshin.interop.hf import load_checkpoint
from shoshin.models.loss import IGNORE_INDEX
from shoshin.training.distributed import DistContext
from shoshin.training.optim import lr_at
from shoshin.training.step import TrainStep

TARGET_RATIO = 1.2


def chitchat_split(loss_on: str) -> Split:
    """Chitchat's training split, tokenized with a BPE trained on chitchat (ids < 8192).

    With loss_on="assistant" the targets of user turns are masked, as `shoshin finetune` does.
    """
    data = prepare_data(
        DataConfig(source="chitchat", tokenizer="bpe", vocab_size=8192, loss_on=loss_on)
    )
    return data.train


def make_batches(
    split: Split, n: int, batch_size: int, seq_len: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The n batches that shoshin's training step draws from `split` with a generator seeded 0."""
    gen = torch.Generator().manual_seed(0)
    return [get_batch(split, batch_size, seq_len, gen) for _ in range(n)]


def save_random_gpt2(folder: Path, n_layer: int) -> None:
    """GPT-2 124M's shape (12 layers unless told), random weights, no dropout; plus a tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    _save_placeholder_tokenizer(folder)


def save_random_llama(folder: Path, n_layer: int) -> None:
    """SmolLM2-135M's shape (30 layers unless told: 576 wide, 9 query and 3 key/value heads, MLP
    1536, vocabulary 49,152, tied head), random weights; plus a tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=n_layer,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    _save_placeholder_tokenizer(folder)


def _save_placeholder_tokenizer(folder: Path) -> None:
    # The batches are already token ids; the checkpoint only needs some tokenizer beside it.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)


LAYOUTS = {  # name: (save the model, default layers, what it is)
    "gpt2": (save_random_gpt2, 12, "GPT-2 shape: {n} layers, 768 wide, vocab 50257"),
    "llama": (
        save_random_llama,
        30,
        "SmolLM2-135M's Llama shape: {n} layers, 576 wide, 9/3 heads (GQA), vocab 49152, tied",
    ),
}
PHASES = ("forward", "backward", "optimizer")


def shoshin_steps(
    folder: Path, split: Split, n: int, seq_len: int, tc: TrainConfig
) -> list[dict[str, float]]:
    """Seconds of each phase of shoshin's own training step (training/step.py), per step.

    Its batches are those of make_batches (the same generator seed). forward: until the loss is
    computed; backward: until the last parameter has its gradient; optimizer: the rest of the
    step (clipping, AdamW, zero_grad).
    """
    model = load_checkpoint(folder).model
    model.train()
    step = TrainStep(
        model,
        tc,
        seq_len,
        split,
        torch.Generator().manual_seed(0),
        schedule=lambda i: lr_at(i, tc),
        dist=DistContext(device=torch.device("cpu")),
    )
    marks: dict[str, float] = {}
    loss = step.loss

    def timed_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = loss(x, y)
        marks["forward"] = time.perf_counter()
        return out

    def gradient_done(_: torch.Tensor) -> None:
        marks["backward"] = time.perf_counter()  # the last parameter's hook marks the end

    step.loss = timed_loss
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(gradient_done)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        step(i)
        t1 = time.perf_counter()
        times.append(
            {
                "forward": marks["forward"] - t0,
                "backward": marks["backward"] - marks["forward"],
                "optimizer": t1 - marks["backward"],
            }
        )
    return times


def hf_labels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """transformers' labels for one window: the inputs, -100 where shoshin's target is masked.

    transformers shifts labels itself, so label t is the target of position t-1 (y[t-1]).
    """
    labels = x.clone()
    labels[0] = -100
    labels[1:][y[:-1] == IGNORE_INDEX] = -100
    return labels


def hf_trainer_steps(
    folder: Path, batches, tc: TrainConfig, workdir: Path
) -> list[dict[str, float]]:
    """Seconds of each phase of transformers' Trainer step on the same batches, in the same order.

    forward: its compute_loss; backward: the rest of its training_step; optimizer: from there to
    the end of the step (clipping, AdamW, scheduler, zero_grad).
    """
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
    marks: dict[str, float] = {}
    times: list[dict[str, float]] = []

    class TimedTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, *args, **kwargs):
            out = super().compute_loss(*args, **kwargs)
            marks["forward"] = time.perf_counter()
            return out

        def training_step(self, *args, **kwargs):
            out = super().training_step(*args, **kwargs)
            marks["backward"] = time.perf_counter()
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            end = time.perf_counter()
            times.append(
                {
                    "forward": marks["forward"] - marks["start"],
                    "backward": marks["backward"] - marks["forward"],
                    "optimizer": end - marks["backward"],
                }
            )

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
    TimedTrainer(model=model, args=args, train_dataset=rows, callbacks=[StepTimer()]).train()
    return times


def median_phases(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds of each phase and of the whole step."""
    out = {p: statistics.median(s[p] for s in steps) for p in PHASES}
    out["step"] = statistics.median(sum(s.values()) for s in steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="gpt2")
    parser.add_argument(
        "--n-layer", type=int, default=0, help="0 = the full model (GPT-2 124M: 12, SmolLM2: 30)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--loss-on",
        choices=("all", "assistant"),
        default="assistant",
        help="assistant (shoshin finetune's default): no loss on user turns; all: every token",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    save_random, full_depth, shape = LAYOUTS[args.layout]
    n_layer = args.n_layer or full_depth
    tc = TrainConfig(
        batch_size=args.batch_size,
        lr=6e-5,
        min_lr=6e-6,
        warmup_steps=2,
        weight_decay=0.01,
        max_steps=args.steps + 1,
    )
    split = chitchat_split(args.loss_on)
    batches = make_batches(split, args.steps + 1, args.batch_size, args.seq_len)
    tokens = args.batch_size * args.seq_len
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{args.layout}-random"
        save_random(folder, n_layer)
        for r in range(args.rounds):
            ours += shoshin_steps(folder, split, len(batches), args.seq_len, tc)[
                1:
            ]  # the first step warms up
            theirs += hf_trainer_steps(folder, batches, tc, Path(tmp) / f"hf-{r}")[1:]
    a, b = median_phases(ours), median_phases(theirs)
    print(
        f"{shape.format(n=n_layer)}; batch {args.batch_size} x "
        f"{args.seq_len} tokens, fp32, {args.threads} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, loss on {args.loss_on} tokens"
    )
    print(f"timed steps per side: {len(ours)} (median of each phase and of the whole step)")
    print(f"{'':12s} {'shoshin':>9s} {'HF Trainer':>11s} {'HF / shoshin':>13s}")
    for phase in (*PHASES, "step"):
        print(f"{phase:12s} {a[phase]:8.3f}s {b[phase]:10.3f}s {b[phase] / a[phase]:12.2f}x")
    print(f"tokens/s     {tokens / a['step']:9.1f} {tokens / b['step']:11.1f}")
    ratio = b["step"] / a["step"]
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"throughput shoshin / HF Trainer: {ratio:.2f}x (target >= {TARGET_RATIO}x): {verdict}")


if __name__ == "__main__":
    main()
