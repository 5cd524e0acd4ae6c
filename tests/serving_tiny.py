"""A tiny chat GPT trained in-process for a few seconds, so served replies are real text (no downloads)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from shoshin.config import ModelConfig
from shoshin.data.chat import render_chat
from shoshin.data.tokenizers import CHAT_TOKENS, EOT, CharTokenizer
from shoshin.models import build_model

CHATS = [
    [("user", "hello"), ("assistant", "hi there, how are you?")],
    [("user", "how are you?"), ("assistant", "i am fine, thank you.")],
    [("user", "what is your name?"), ("assistant", "my name is shoshin.")],
    [("user", "tell me a story"), ("assistant", "once upon a time a cat sat on a mat.")],
    [("user", "bye"), ("assistant", "goodbye, see you soon!")],
    [("user", "do you like tea?"), ("assistant", "yes, green tea is lovely.")],
]


@functools.cache
def tiny_chat_model(arch: str = "gpt", steps: int = 120):
    """(model, tokenizer): a 2-layer char-level chat model that has memorised CHATS a little."""
    torch.manual_seed(0)
    texts = [text for chat in CHATS for _, text in chat]
    tok = CharTokenizer.train(texts, [EOT, *CHAT_TOKENS])
    ids: list[int] = []
    for chat in CHATS * 4:
        ids += render_chat(tok, [{"role": r, "content": c} for r, c in chat])[0]
    data = torch.tensor(ids)
    config = ModelConfig(
        arch=arch, n_layer=2, n_head=2, n_embd=48, block_size=96, vocab_size=tok.vocab_size
    )
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    window = 48
    for _ in range(steps):
        starts = torch.randint(0, len(data) - window - 1, (16,))
        x = torch.stack([data[s : s + window] for s in starts])
        y = torch.stack([data[s + 1 : s + window + 1] for s in starts])
        loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tok


def endless_model(arch: str = "lstm"):
    """(model, tokenizer) that never stops by itself: random weights and no end-of-reply token."""
    torch.manual_seed(1)
    tok = CharTokenizer(list("abcdefgh "), [])
    config = ModelConfig(
        arch=arch, n_layer=1, n_head=1, n_embd=16, block_size=32, vocab_size=tok.vocab_size
    )
    return build_model(config).eval(), tok


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a busy machine: one intra-op thread is far faster than several spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sharp_chat_model(arch: str = "gpt"):
    """(model, tokenizer): a char-level chat model with large random weights. Its logits are sharp
    (no near-ties for greedy decoding to trip on) and its replies end whenever it happens to emit
    `<|end|>`, `<|endoftext|>` or a role token: a model to hold the server to the naive reference."""
    torch.manual_seed(2)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ,.?!"), [EOT, *CHAT_TOKENS])
    config = ModelConfig(
        arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=96, vocab_size=tok.vocab_size
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model, tok


def trained_tiny_run(runs: Path, *overrides: str, steps: int = 10) -> str:
    """The id of a `tiny` run that `shoshin train` trained for `steps` steps (into `runs`)."""
    trained = run_cli(
        "train",
        "tiny",
        f"train.max_steps={steps}",
        f"train.eval_interval={steps}",
        "train.sample_tokens=0",
        "train.calibrate=false",
        *overrides,
        env={"OMP_NUM_THREADS": "1"},  # a tiny model on a busy machine
    )
    assert trained.returncode == 0, trained.stderr
    return next(runs.iterdir()).name
