"""Choosing the next token: the sampling parameters, the one sampling function, and the naive
reference generator.

`SamplingParams` is the one value that the CLI, the Python API and the HTTP server fill (the CLI's
options are generated from its fields). `sample_next` reads it, with the logits, the tokens so far
and the row's own `torch.Generator`; every surface samples through it. `naive_generate` re-runs the
model on the whole prefix at every step: the reference the fast engine is tested against.

Adding a sampling option touches three places: a field here (with its `help`), `sample_next`, and the
HTTP request schema (`shoshin/serving/schemas.py`).
"""

from __future__ import annotations

import math
import secrets
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields

import torch
import torch.nn as nn

from shoshin.errors import ShoshinError

MAX_LOGPROBS = 20  # top alternatives per position, at most (OpenAI allows 20)


def _option(default, help: str, **extra):
    """A sampling field that the CLI offers as `--name-with-dashes` (see cli_options)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata={"help": help, "cli": True, **extra})
    return field(default=default, metadata={"help": help, "cli": True, **extra})


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 means greedy (argmax).

    Penalties and logit_bias change the logits before anything else, so they also steer greedy
    decoding; temperature, top_k, top_p and min_p shape the distribution that is then sampled.
    """

    max_new_tokens: int = _option(256, "tokens to generate at most (0: none)")
    temperature: float = _option(1.0, "softmax temperature; 0 is greedy")
    top_k: int | None = _option(None, "sample among the K most likely tokens only")
    top_p: float | None = _option(None, "nucleus: the most likely tokens that cover P of the mass")
    min_p: float | None = _option(None, "drop tokens less likely than P x the most likely one")
    frequency_penalty: float = _option(
        0.0, "-2..2: lower each token's logit by this x its count in the reply so far (OpenAI)"
    )
    presence_penalty: float = _option(
        0.0, "-2..2: lower the logit of every token already in the reply by this (OpenAI)"
    )
    repetition_penalty: float = _option(
        1.0,
        ">0: divide positive / multiply negative logits of tokens seen in prompt or reply (CTRL)",
    )
    logit_bias: Mapping[int, float] = _option(
        {}, "token id -> bias in -100..100, added to its logit (OpenAI)", metavar="ID:BIAS"
    )
    seed: int | None = _option(
        None, "seed of this generation's torch.Generator (same seed, same text)"
    )
    stop_ids: Sequence[int] = ()  # a generation ends after any of these tokens (kept in its tokens)
    stop_sequences: Sequence[Sequence[int]] = ()  # ... or after any of these runs of tokens
    logprobs: int | None = None  # per new token: its log-probability and this many top alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token (the first has none)
    # A Lark grammar (llguidance's dialect; `%json {SCHEMA}` is a JSON value valid against SCHEMA)
    # that the new tokens must match: the engine masks every other token before sampling.
    grammar: str | None = None

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Check every value; a bad one is a ShoshinError naming it. Returns self."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ShoshinError(f"{f.name} must be a finite number, got {value}")
        if self.max_new_tokens < 0:
            raise ShoshinError(f"max_new_tokens must not be negative, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ShoshinError(
                f"temperature must be 0 (greedy) or positive, got {self.temperature}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ShoshinError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ShoshinError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ShoshinError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ShoshinError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.repetition_penalty <= 0:
            raise ShoshinError(
                f"repetition_penalty must be positive (1 is off), got {self.repetition_penalty}"
            )
        for token, bias in self.logit_bias.items():
            if not -100.0 <= bias <= 100.0 or not math.isfinite(bias):
                raise ShoshinError(
                    f"logit_bias for token {token} must be in [-100, 100], got {bias}"
                )
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                raise ShoshinError(
                    f"logit_bias names token {token}, which is not in the vocabulary"
                    + (f" (0..{vocab_size - 1})" if vocab_size else "")
                )
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(self, name)
            if n is not None and not 0 <= n <= MAX_LOGPROBS:
                raise ShoshinError(f"{name} must be in [0, {MAX_LOGPROBS}], got {n}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        """True when the choice depends on the tokens so far."""
        return bool(
            self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0
        )


def cli_options() -> list[tuple[str, type, object, str, str | None]]:
    """(name, value type, default, help, metavar) of every field the CLI offers, in declaration
    order; the value type of an optional field is its non-None type, of a mapping `dict`."""
    hints = typing.get_type_hints(SamplingParams)
    out = []
    for f in fields(SamplingParams):
        if f.metadata.get("cli"):
            kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)]
            kind = (
                dict
                if typing.get_origin(hints[f.name]) is Mapping
                else (kinds or [hints[f.name]])[0]
            )
            default = None if f.default is MISSING else f.default
            out.append((f.name, kind, default, f.metadata["help"], f.metadata.get("metavar")))
    return out


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
    allowed: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """The next token (B,) for each row of logits (B, vocab), each row with its own parameters,
    history and generator, so that a row's choice never depends on the other rows of the batch.

    Order: logit_bias and the penalties, then a row's `allowed` mask (vocab,) bool, if it has one,
    sets every other logit to -inf (its grammar, see generation.constraints), then greedy rows
    take the argmax; the others are divided
    by their temperature, cut by top_k, top_p and min_p, and drawn by inverse transform sampling
    with one uniform number from their own generator. Rows are computed together (no Python
    loop over the vocabulary), except the per-row options that need one.
    """
    B, V = logits.shape
    x = logits.float()
    masked = [b for b, m in enumerate(allowed or ()) if m is not None]
    if masked or any(p.logit_bias or p.penalised for p in params):
        x = x.clone()  # (B, V): changed in place below
    for b, (p, history) in enumerate(zip(params, histories, strict=True)):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=x.device)
            bias = torch.tensor(list(p.logit_bias.values()), dtype=x.dtype, device=x.device)
            x[b].index_add_(0, ids, bias)
        if p.penalised:
            _penalise(x[b], p, history)
    if masked:
        keep = torch.stack([allowed[b] for b in masked]).to(x.device)  # (M, V)
        rows = torch.tensor(masked, device=x.device)
        x[rows] = x[rows].masked_fill(~keep, float("-inf"))
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
            allowed = [constraint.allowed() if constraint else None]
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
