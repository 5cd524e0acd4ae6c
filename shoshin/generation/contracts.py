"""What the decode core needs from a model and its cache, declared as types.

A model shoshin generates from is any `nn.Module` with these members (GPT and LSTM in
`shoshin.models` are the two); the engine, chat sessions, streaming and the server's batching are
annotated with these protocols, so a new model family knows exactly what to provide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch


class Cache(Protocol):
    """A model's inference state for B rows: a KV cache (GPT) or carried (h, c) state (LSTM).

    Rows are independent: each has its own length, and `row`/`rows` are views that share storage
    with the whole, so the engine can prefill some rows and decode others in one cache.
    """

    lengths: torch.Tensor  # (B,) long, on the CPU: tokens each row holds
    max_len: int | None  # the most tokens a row can hold (None: no limit, a recurrent model)

    def row(self, b: int) -> Cache:
        """A view of row b alone (batch 1)."""
        ...

    def rows(self, start: int, stop: int) -> Cache:
        """A view of rows start..stop-1."""
        ...

    def reset(self, b: int | None = None) -> None:
        """Empty row b (every row with None)."""
        ...


class LanguageModel(Protocol):
    """A model the engine generates from: next-token logits for token ids, with a cache."""

    config: Any  # a shoshin.config.ModelConfig; the engine reads its vocab_size
    training: bool

    @property
    def context_window(self) -> int | None:
        """The most tokens the model sees at once (learned positions), or None for no limit."""
        ...

    @property
    def right_padding_safe(self) -> bool:
        """True when rows of different lengths may be prefilled together, padded on the right
        (the padding's cache entries are then forgotten by resetting the row's length)."""
        ...

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """An empty cache for `batch_size` rows of up to `max_len` tokens (default: the window)."""
        ...

    def __call__(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: Cache | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for ids (B, T), appending to `cache` when given; with `logits_at`
        (B,) only the logits at that position of each row, (B, 1, vocab)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...
