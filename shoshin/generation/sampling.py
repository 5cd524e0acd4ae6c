"""Choosing the next token: the one sampling function, and the naive reference generator.

`SamplingParams` (declared in `shoshin/generation/params.py`) is the one value that the CLI, the
Python API and the HTTP server fill. `sample_next` reads it, with the logits, the tokens so far and
the row's own `torch.Generator`; every surface samples through it. `naive_generate` re-runs the
model on the whole prefix at every step: the reference the fast engine is tested against.

Adding a sampling option touches two places: its declaration in `params.py` and `sample_next`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from shoshin.generation.params import SamplingParams


@dataclass
class TokenHistory:
    """The tokens a row has seen: its prompt, then what it generated (penalties read both)."""

    ids: list[int]
    prompt_len: int

    @property
    def generated(self) -> list[int]:
        return self.ids[self.prompt_len :]


def sample_next(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[TokenHistory],
    generators: Sequence[torch.Generator | None],
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token (B,) for each row of logits (B, vocab), each row with its own parameters,
    history and generator, so that a row's choice never depends on the other rows of the batch.

    Order: logit_bias and the penalties, then `allowed` (B, vocab) bool, when given, sets every
    token a row may not choose to -inf (rows' grammars, see generation.constraints), then greedy
    rows take the argmax; the others are divided
    by their temperature, cut by top_k, top_p and min_p, and drawn by inverse transform sampling
    with one uniform number from their own generator. Rows are computed together (no Python
    loop over the vocabulary), except the per-row options that need one.
    """
    B, V = logits.shape
    x = logits.float()
    if any(p.logit_bias or p.penalised for p in params):
        x = x.clone()  # (B, V): changed in place below
    for b, (p, history) in enumerate(zip(params, histories, strict=True)):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=x.device)
            bias = torch.tensor(list(p.logit_bias.values()), dtype=x.dtype, device=x.device)
            x[b].index_add_(0, ids, bias)
        if p.penalised:
            _penalise(x[b], p, history)
    if allowed is not None:
        x = x.masked_fill(~allowed.to(x.device), float("-inf"))
    tokens = torch.zeros(B, dtype=torch.long, device=x.device)
    greedy = [b for b, p in enumerate(params) if p.greedy]
    sampled = [b for b, p in enumerate(params) if not p.greedy]
    if greedy:
        rows = torch.tensor(greedy, device=x.device)
        tokens[rows] = (x if len(greedy) == B else x[rows]).argmax(dim=-1)
    if sampled:
        rows = torch.tensor(sampled, device=x.device)
        z = x if len(sampled) == B else x[rows]
        # A tiny repetition penalty can overflow a logit to +inf, and a tiny temperature the
        # others: clamped to finite and shifted so the largest is 0 (softmax does not change),
        # dividing by the temperature then only sends the others towards -inf, never NaN.
        finfo = torch.finfo(z.dtype)
        z = z.clamp(max=finfo.max)
        z = z - z.max(dim=-1, keepdim=True).values
        temperatures = [params[b].temperature for b in sampled]
        if any(t != 1.0 for t in temperatures):
            t = torch.tensor(temperatures, device=x.device, dtype=z.dtype).clamp(min=finfo.tiny)
            z = z / t[:, None]
        z = _truncate(z, [params[b] for b in sampled])
        u = [torch.rand((), generator=generators[b], dtype=torch.float64) for b in sampled]
        tokens[rows] = _inverse_transform(z.softmax(dim=-1), torch.stack(u).to(x.device))
    return tokens


BLOCK = 256  # vocabulary entries per block of the two-level inverse transform


def _inverse_transform(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of probs (S, V) given a uniform number per row (S,) in [0, 1).

    The smallest token whose cumulative probability exceeds u x the total, found in two levels
    (which block of BLOCK tokens, then where in it) so that only one block per row is summed token
    by token; that sum is in float64, and a token of probability 0 is never drawn.
    """
    S, V = probs.shape
    full = V // BLOCK * BLOCK
    sums = [probs[:, :full].view(S, -1, BLOCK).sum(dim=-1)] if full else []
    if full < V:
        sums.append(probs[:, full:].sum(dim=-1, keepdim=True))
    block_cdf = torch.cat(sums, dim=-1).double().cumsum(dim=-1)  # (S, blocks)
    target = u * block_cdf[:, -1]  # (S,)
    last_block = block_cdf.size(1) - 1
    block = torch.searchsorted(block_cdf, target[:, None], right=True)[:, 0].clamp(max=last_block)
    rows = torch.arange(S, device=probs.device)
    before = torch.where(block > 0, block_cdf[rows, (block - 1).clamp(min=0)], 0.0)
    index = block[:, None] * BLOCK + torch.arange(BLOCK, device=probs.device)  # (S, BLOCK)
    inside = probs.gather(1, index.clamp(max=V - 1)).double().masked_fill(index >= V, 0.0)
    within = torch.searchsorted(
        before[:, None] + inside.cumsum(dim=-1), target[:, None], right=True
    )
    # Rounding may put the target past the block's own sum: take its last possible token then.
    last = BLOCK - 1 - (inside > 0).flip(-1).int().argmax(dim=-1)
    return block * BLOCK + torch.minimum(within[:, 0], last)


def _penalise(x: torch.Tensor, p: SamplingParams, history: TokenHistory) -> None:
    """Apply the history-dependent penalties to one row of logits (V,), in place."""
    if p.frequency_penalty or p.presence_penalty:
        reply = torch.tensor(history.generated, dtype=torch.long, device=x.device)
        counts = torch.bincount(reply, minlength=x.numel()).to(x.dtype)
        x -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(x.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(history.ids)), dtype=torch.long, device=x.device)
        v = x[seen]
        x[seen] = torch.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)


def _truncate(z: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Set to -inf the logits that top_k, top_p and min_p exclude, row by row (S, V)."""
    V = z.size(-1)
    ks = [p.top_k if p.top_k is not None and p.top_k < V else V for p in params]
    ps = [p.top_p if p.top_p is not None else 1.0 for p in params]
    if any(k < V for k in ks) or any(q < 1.0 for q in ps):
        sorted_z, order = torch.sort(z, descending=True, dim=-1)
        rank = torch.arange(V, device=z.device)
        drop = rank[None, :] >= torch.tensor(ks, device=z.device)[:, None]
        probs = sorted_z.softmax(dim=-1)
        # top_p drops a token when the tokens ranked above it already reach p; the first stays.
        before = probs.cumsum(dim=-1) - probs
        drop |= before >= torch.tensor(ps, device=z.device, dtype=probs.dtype)[:, None]
        drop[:, 0] = False
        sorted_z = sorted_z.masked_fill(drop, float("-inf"))
        z = torch.full_like(z, float("-inf")).scatter(-1, order, sorted_z)
    mins = [p.min_p or 0.0 for p in params]
    if any(mins):
        probs = z.softmax(dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values
        floor = floor * torch.tensor(mins, device=z.device, dtype=probs.dtype)[:, None]
        z = z.masked_fill(probs < floor, float("-inf"))
    return z


def make_generator(seed: int | None) -> torch.Generator:
    """A torch.Generator seeded with `seed` (a fresh random seed when None); the global RNG is untouched.

    It lives on the CPU whatever the model's device: sampling draws one uniform number per token
    from it (then moves it to the logits' device), so a seed gives the same draws on CPU and GPU.
    """
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def ends_with_stop(new: Sequence[int], stop_ids, stop_sequences) -> bool:
    """True when the newest token is a stop token or the new tokens end with a stop sequence."""
    if new and new[-1] in stop_ids:
        return True
    return any(
        len(s) and len(new) >= len(s) and list(new[-len(s) :]) == list(s) for s in stop_sequences
    )


@torch.no_grad()
def naive_generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    logits_out: list[torch.Tensor] | None = None,
    constraints=None,
) -> list[int]:
    """New token ids continuing `prompt_ids`, re-running the model on the whole prefix at every step.

    The reference the engine is held to: a model with a window (a GPT) sees the last
    `context_window` tokens, so its window slides by one token; a recurrent model sees everything.
    Stops after a stop token or stop sequence (kept in the output), or where params.grammar (which
    needs `constraints`, a generation.constraints.Constraints) is complete. With `logits_out`,
    each step's raw next-token logits (1, vocab) are appended to it.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token")
    params.validate()
    if params.grammar is not None and constraints is None:
        raise ValueError("a grammar needs `constraints` (the vocabulary's Constraints)")
    constraint = constraints.start(params.grammar, params.stop_ids) if params.grammar else None
    device = next(model.parameters()).device
    generator = make_generator(params.seed)
    was_training = model.training
    model.eval()
    window = model.context_window
    history = TokenHistory(list(prompt_ids), len(prompt_ids))
    stops = set(params.stop_ids)
    try:
        for _ in range(params.max_new_tokens):
            context = history.ids if window is None else history.ids[-window:]
            logits = model(torch.tensor([context], dtype=torch.long, device=device))[:, -1, :]
            if logits_out is not None:
                logits_out.append(logits)
            allowed = constraints.allowed([constraint]) if constraint else None
            token = int(sample_next(logits, [params], [history], [generator], allowed)[0])
            history.ids.append(token)
            if constraint is not None:
                constraint.advance(token)
            if ends_with_stop(history.generated, stops, params.stop_sequences):
                break
            if constraint is not None and constraint.done:
                break
    finally:
        model.train(was_training)
    return history.generated
