"""Sampling from a language model on token ids.

`sample_next` picks one token from logits; `naive_generate` is the reference generator: every step
re-runs the model on the whole prefix. The fast path (shoshin.generation.engine) is tested against it.
"""

from __future__ import annotations

import secrets
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


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed` (a fresh random seed when None); the global RNG is untouched."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def ends_with_stop(new: Sequence[int], stop_ids, stop_sequences) -> bool:
    """True when the newest token is a stop token or the new tokens end with a stop sequence."""
    if new and new[-1] in stop_ids:
        return True
    return any(
        len(s) and len(new) >= len(s) and list(new[-len(s) :]) == list(s) for s in stop_sequences
    )


def context_window(model: nn.Module) -> int | None:
    """How many tokens the model can see at once: block_size for a GPT (learned positions), None for an LSTM."""
    return model.config.block_size if model.config.arch == "gpt" else None


@torch.no_grad()
def naive_generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
) -> list[int]:
    """New token ids continuing `prompt_ids`, re-running the model on the whole prefix at every step.

    A GPT sees the last block_size tokens (its positions cannot slide further); an LSTM sees the
    whole history. Stops after a token in `stop_ids` or a run of tokens in `stop_sequences`
    (kept in the output).
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token")
    device = next(model.parameters()).device
    generator = make_generator(seed, device)
    was_training = model.training
    model.eval()
    window = context_window(model)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    new: list[int] = []
    stops = set(stop_ids)
    try:
        for _ in range(max_new_tokens):
            context = ids if window is None else ids[:, -window:]
            logits = model(context)[:, -1, :]
            token = sample_next(logits, temperature, top_k, top_p, generator)
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
            new.append(int(token))
            if ends_with_stop(new, stops, stop_sequences):
                break
    finally:
        model.train(was_training)
    return new
