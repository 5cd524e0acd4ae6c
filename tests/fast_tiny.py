"""Tiny models for the fast-path tests: random weights large enough that greedy output wanders
and logits depend on the input, so a wrong key, value or position changes tokens."""

from __future__ import annotations

import pytest
import torch

from shoshin.config import ModelConfig
from shoshin.models import build_model

VOCAB = 61
LLAMA = dict(arch="llama", bias=False, n_kv_head=1, qk_norm=True, tie_embeddings=False)


def sharp_model(arch: str = "gpt", n_embd: int = 64, block_size: int = 96) -> torch.nn.Module:
    """A tiny GPT or Llama (grouped-query attention and QK-norm) with sharp random weights."""
    torch.manual_seed(0)
    keys = LLAMA if arch == "llama" else {}
    config = ModelConfig(
        n_layer=2, n_head=2, n_embd=n_embd, block_size=block_size, vocab_size=VOCAB, **keys
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
