"""The GPT as training sees it: its gradients (inference is held to a reference in test_generation)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from shoshin.config import ModelConfig
from shoshin.models.gpt import GPT, TiedEmbedding


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    fields = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100, **overrides)
    return GPT(ModelConfig(**fields))


def test_tied_embedding_gradient_is_dense_and_equals_the_plain_embeddings():
    model = tiny()
    assert isinstance(model.wte, TiedEmbedding) and model.lm_head.weight is model.wte.weight
    plain = copy.deepcopy(model)
    plain.wte.__class__ = nn.Embedding  # the same weights, with nn.Embedding's dense gradient
    x = torch.randint(100, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(100, (3, 16), generator=torch.Generator().manual_seed(2))
    y[0, :5] = -1  # masked targets: the head sees fewer rows than the embedding
    model(x, y).backward()
    plain(x, y).backward()
    grad = model.wte.weight.grad
    assert grad.layout == torch.strided  # what AdamW, clipping and DDP need
    torch.testing.assert_close(grad, plain.wte.weight.grad, rtol=0, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)


def test_untied_embeddings_keep_their_own_dense_gradient():
    model = tiny(tie_embeddings=False)
    assert type(model.wte) is nn.Embedding and model.lm_head.weight is not model.wte.weight
    x = torch.randint(100, (2, 16))
    model(x, x).backward()
    assert model.wte.weight.grad.layout == torch.strided
