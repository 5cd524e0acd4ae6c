"""The inference engine: token ids in, token ids out; it knows nothing of text.

Prefill runs each prompt through the model once, filling a KV cache (GPT) or the carried (h, c)
state (LSTM); decode then feeds only the newest token of every row, so each new token costs the
same however long the text already is. The naive reference (sampling.naive_generate) re-runs the
whole prefix instead; tests hold this engine to it.

Context overflow. A GPT's learned positions stop at block_size, so its window cannot slide one
token at a time without recomputing everything. When the next token would not fit, the engine
keeps the most recent `overflow_keep` tokens of the row (default: half a window), empties the row's
cache, prefills them again and carries on; a prompt longer than the window is cut to its last
block_size tokens. One overflow costs one prefill of half a window, so long generations stay fast,
and the model always sees between block_size/2 and block_size tokens. (The naive path slides by
one token instead: both agree until the window is first full. overflow_keep=block_size gives
exactly the naive path's sliding window, at the naive path's cost.) An LSTM has no window: its
state carries the whole history and never overflows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from shoshin.errors import ShoshinError
from shoshin.generation.sampling import (
    context_window,
    ends_with_stop,
    make_generator,
    naive_generate,
    sample_next,
)
from shoshin.models.gpt import KVCache
from shoshin.models.lstm import LSTMState

Cache = KVCache | LSTMState  # what model.new_cache returns


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 means greedy (argmax)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: Sequence[
        int
    ] = ()  # a reply ends after any of these tokens (it is kept in the output)
    stop_sequences: Sequence[Sequence[int]] = ()  # ... or after any of these runs of tokens

    def validate(self) -> SamplingParams:
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
        return self


class _Row:
    """One sequence being generated: its whole history, its new tokens, how to sample it."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, device: torch.device):
        if len(prompt) == 0:
            raise ValueError("every prompt must hold at least one token")
        self.ids = list(prompt)  # prompt + generated: the history the overflow window is cut from
        self.new: list[int] = []
        self.params = params
        self.stop_ids = set(params.stop_ids)
        self.generator = make_generator(params.seed, device)
        self.done = params.max_new_tokens == 0

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        token = int(sample_next(logits, p.temperature, p.top_k, p.top_p, self.generator)[0])
        self.ids.append(token)
        self.new.append(token)
        self.done = len(self.new) >= p.max_new_tokens or ends_with_stop(
            self.new, self.stop_ids, p.stop_sequences
        )
        return token


class Engine:
    """Generates token ids from a GPT or LSTM: prefill once, then one token per row per step."""

    def __init__(self, model: nn.Module, overflow_keep: int | None = None):
        self.model = model
        self.window = context_window(model)  # None: no position limit (LSTM)
        if self.window is not None:
            keep = overflow_keep if overflow_keep is not None else max(1, self.window // 2)
            if not 1 <= keep <= self.window:
                raise ValueError(f"overflow_keep must be in [1, {self.window}], got {keep}")
            self.keep = keep
        self.device = next(model.parameters()).device

    def new_cache(self, batch_size: int = 1) -> Cache:
        """An empty cache for `batch_size` rows, as large as the model's window."""
        return self.model.new_cache(batch_size)

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        cache: Cache | None = None,
    ) -> list[int]:
        """The new token ids continuing prompt_ids (stop tokens included)."""
        return list(self.stream(prompt_ids, params, cache))

    def stream(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        cache: Cache | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one by one as they are produced.

        `cache` (batch 1) may already hold the first cache.lengths[0] tokens of prompt_ids, e.g. a
        conversation so far: only the rest is prefilled. Tokens are fed to the model lazily, so
        the last token yielded is never in the cache; a caller that stops early loses nothing.
        """
        for tokens in self.stream_batch([prompt_ids], [params or SamplingParams()], cache):
            yield tokens[0]

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[list[int]]:
        """New token ids for several prompts (of any lengths) at once; one list per prompt."""
        news: list[list[int]] = [[] for _ in prompts]
        for tokens in self.stream_batch(prompts, params):
            for b, t in enumerate(tokens):
                if t is not None:
                    news[b].append(t)
        return news

    @torch.no_grad()
    def stream_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        cache: Cache | None = None,
    ) -> Iterator[list[int | None]]:
        """Yield, at every step, the new token of each row (None for rows already finished).

        Each row has its own sampling parameters and generator, so a row's output does not depend
        on the other rows of the batch.
        """
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
        rows = [_Row(p, sp.validate(), self.device) for p, sp in zip(prompts, params, strict=True)]
        model = self.model
        was_training = model.training
        model.eval()
        try:
            if cache is None:  # as long as this generation needs (zeroing a whole window costs)
                need = max(len(r.ids) + r.params.max_new_tokens for r in rows)
                cache = model.new_cache(len(rows), need)
            logits = [self._prefill(cache, b, row.ids) for b, row in enumerate(rows)]
            while True:
                step: list[int | None] = [None] * len(rows)
                for b, row in enumerate(rows):
                    if not row.done:
                        step[b] = row.sample(logits[b])
                yield step
                if all(row.done for row in rows):
                    return
                tokens = torch.zeros(len(rows), 1, dtype=torch.long, device=self.device)
                for b, row in enumerate(rows):
                    if row.done:  # it costs one padding token a step, and never grows
                        cache.reset(b)
                    else:
                        tokens[b, 0] = row.ids[-1]
                        if self.window is not None and int(cache.lengths[b]) >= cache.max_len:
                            self._refill(cache, b, row.ids)
                out = model(tokens, cache=cache)[:, -1, :]  # (B, vocab): one step for every row
                logits = [out[b : b + 1] for b in range(len(rows))]
        finally:
            model.train(was_training)

    def _prefill(self, cache: Cache, b: int, ids: list[int]) -> torch.Tensor:
        """Run row b's prompt (past what its cache already holds); its next-token logits (1, vocab)."""
        row = cache.row(b)
        cached = int(row.lengths[0])
        if self.window is not None and len(ids) > cache.max_len:
            ids, cached = ids[-cache.max_len :], 0  # the window moved: positions no longer match
            cache.reset(b)
        if cached >= len(ids):
            if self.window is None:
                raise ValueError("the LSTM state already holds the whole prompt; reset it first")
            cached = len(ids) - 1  # rewind one token to get its logits again
            row.lengths[0] = cached
        x = torch.tensor([ids[cached:]], dtype=torch.long, device=self.device)
        return self.model(x, cache=row)[:, -1, :]

    def _refill(self, cache: Cache, b: int, ids: list[int]) -> None:
        """Row b's window is full: keep its last `keep` tokens (the newest is fed by the next step)."""
        cache.reset(b)
        kept = ids[-min(self.keep, cache.max_len) : -1]
        if kept:
            self.model(
                torch.tensor([kept], dtype=torch.long, device=self.device), cache=cache.row(b)
            )


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
    stop_sequences: Sequence[Sequence[int]] = (),
) -> list[int]:
    """New token ids continuing `prompt_ids` (stop tokens included).

    use_cache=True runs the Engine (KV cache / carried state); use_cache=False runs the naive
    reference, which re-runs the whole prefix at every step.
    """
    if not use_cache:
        return naive_generate(
            model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_ids,
            stop_sequences,
        )  # fmt: skip
    params = SamplingParams(
        max_new_tokens, temperature, top_k, top_p, seed, stop_ids, stop_sequences
    )
    return Engine(model).generate(prompt_ids, params)
