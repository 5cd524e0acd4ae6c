"""Prefix reuse: keys and values of token sequences seen before, kept to skip recomputing them.

A stateless chat client sends the whole conversation again every turn, and many requests start
with the same system prompt. Attention is causal: the keys and values at position i depend only on
tokens 0..i, so a new prompt sharing its first m tokens with a sequence seen before can start from
that sequence's first m cached positions and prefill only the rest. `PrefixCache` keeps such
sequences (token ids and a copy of their keys/values) in a bounded store evicted least recently
used; the server's scheduler restores the longest shared prefix into a cache row before a prompt
is prefilled, and stores what a row holds when its request ends.

The outputs are those of a full prefill up to float rounding (the same positions computed in a
pass of another length; tests hold the logprobs to 1e-4 and greedy tokens to equality).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

DEFAULT_MAX_BYTES = 256 * 2**20  # GPT-2-124M in fp32: about 3,600 cached tokens
MIN_REUSE = 16  # shorter shared prefixes are cheaper to recompute than to look up and copy


class PrefixCache:
    """Token sequences and their keys/values (all layers), at most `max_bytes` in all.

    Works on caches holding `k` and `v` of shape (n_layer, B, heads, max_len, head_dim) and a
    host `lengths` (B,), as KVCache does.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, min_reuse: int = MIN_REUSE):
        self.max_bytes, self.min_reuse = max_bytes, min_reuse
        self.entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self.bytes = 0
        self.hits = 0  # prompts that started from a stored prefix, and the tokens they skipped
        self.reused_tokens = 0

    @staticmethod
    def supports(cache) -> bool:
        """Whether `cache` holds per-position keys and values (a recurrent state does not)."""
        return hasattr(cache, "k") and hasattr(cache, "v")

    def restore(self, cache, row: int, prompt: Sequence[int]) -> int:
        """Write the keys/values of the longest stored prefix of `prompt` (leaving out its last
        token, which a prefill must run for its logits) into `row` of `cache`, set the row's
        length to it and return it (0: nothing reused, the row left empty)."""
        best, best_key = 0, None
        for key in self.entries:
            m = common_prefix(key, prompt)
            if m > best:
                best, best_key = m, key
        best = min(best, len(prompt) - 1, cache.max_len)
        cache.lengths[row] = 0
        if best < self.min_reuse:
            return 0
        self.entries.move_to_end(best_key)
        k, v = self.entries[best_key]
        cache.k[:, row, :, :best] = k[:, :, :best].to(cache.k.device)
        cache.v[:, row, :, :best] = v[:, :, :best].to(cache.v.device)
        cache.lengths[row] = best
        self.hits += 1
        self.reused_tokens += best
        return best

    def store(self, cache, row: int, tokens: Sequence[int]) -> None:
        """Keep the keys/values of `tokens`, which the first len(tokens) positions of `row` of
        `cache` hold (the caller's word: the row's length may already be reset); stored sequences
        that are prefixes of it are dropped (it covers them)."""
        n = len(tokens)
        if n < self.min_reuse or n > cache.max_len:
            return
        key = tuple(tokens)
        size = 2 * cache.k[:, row, :, :n].numel() * cache.k.element_size()
        if size > self.max_bytes:
            return
        for other in [o for o in self.entries if len(o) <= n and key[: len(o)] == o]:
            self._drop(other)
        k = cache.k[:, row, :, :n].clone()  # (n_layer, heads, n, head_dim)
        v = cache.v[:, row, :, :n].clone()
        self.entries[key] = (k, v)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))  # the least recently used

    def _drop(self, key: tuple[int, ...]) -> None:
        k, v = self.entries.pop(key)
        self.bytes -= k.numel() * k.element_size() + v.numel() * v.element_size()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many first tokens two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
