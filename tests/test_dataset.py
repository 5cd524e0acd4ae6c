"""Training and evaluation batches drawn from a tokenized split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoshin.data.dataset import Split, eval_batch_count, eval_batches, get_batch
from shoshin.models.loss import IGNORE_INDEX


def counting_split(n: int, masked: tuple[int, ...] = ()) -> Split:
    """Token i has id i, so a target's id says which position of the split it is."""
    mask = np.ones(n, dtype=np.uint8)
    mask[list(masked)] = 0
    return Split(np.arange(n, dtype=np.uint32), mask)


def scored_targets(batches) -> list[int]:
    return sorted(int(t) for _, y in batches for t in y.flatten() if t != IGNORE_INDEX)


@pytest.mark.parametrize("n", [66, 97, 130])  # a whole number of windows, a short tail, a long one
def test_whole_split_evaluation_scores_every_target_once(n):
    batches = list(eval_batches(counting_split(n), batch_size=3, block_size=8))
    assert scored_targets(batches) == list(range(1, n))
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1].where(y[:, :-1] != IGNORE_INDEX, x[:, 1:]))
    assert len(batches) == eval_batch_count(n, 3, 8)


def test_limited_evaluation_spreads_fixed_windows_over_the_split():
    split = counting_split(10_001)
    batches = list(eval_batches(split, batch_size=4, block_size=10, max_batches=5))
    assert len(batches) == 5 == eval_batch_count(10_001, 4, 10, max_batches=5)
    starts = [int(s) for x, _ in batches for s in x[:, 0]]
    assert starts == sorted(set(starts))  # 20 distinct windows, in order
    assert all(b - a >= 10 for a, b in zip(starts, starts[1:], strict=False))  # no overlaps
    assert starts[0] == 0 and starts[-1] >= 10_000 - 2 * 10  # from one end to the other
    again = [int(s) for x, _ in eval_batches(split, 4, 10, max_batches=5) for s in x[:, 0]]
    assert again == starts


def test_evaluation_and_training_batches_skip_masked_targets():
    split = counting_split(50, masked=(5, 6, 20))
    assert scored_targets(eval_batches(split, 2, 8)) == [
        t for t in range(1, 50) if t not in (5, 6, 20)
    ]
    _, y = get_batch(split, 64, 8, torch.Generator().manual_seed(0))
    assert not set(y[y != IGNORE_INDEX].tolist()) & {5, 6, 20}
