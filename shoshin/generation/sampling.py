"""Sampling from a language model on token ids.

`generate` here is the naive reference: every step re-runs the model on the whole (windowed) prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of logits (B, vocab); temperature 0 means argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """New token ids continuing `prompt_ids`; stops early after a token in `stop_ids` (kept in the output).

    The prefix fed to the model is the last block_size tokens (GPT positions cannot slide further).
    """
    del use_cache  # this reference path always recomputes the whole prefix
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    was_training = model.training
    model.eval()
    block_size = model.config.block_size
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    new: list[int] = []
    stops = set(stop_ids)
    for _ in range(max_new_tokens):
        logits = model(ids[:, -block_size:])[:, -1, :]
        token = sample_next(logits, temperature, top_k, top_p, generator)
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
        new.append(int(token))
        if new[-1] in stops:
            break
    model.train(was_training)
    return new
