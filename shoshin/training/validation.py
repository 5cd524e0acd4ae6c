"""Validation loss: one definition, used by training, `shoshin eval` and the benchmarks.

The validation loss of a model is the mean negative log-likelihood (nats) per target over the
whole validation split, every target predicted once: the split is cut into consecutive,
non-overlapping windows of the model's context (model.block_size tokens), the first starting at
the split's first token; a last, partial stretch is scored by one window ending at the split's end
whose targets already scored are skipped. Targets the loss skips in training (a user's turns under
data.loss_on=assistant) are skipped here too. It is computed in float32, without autocast, in
batches of train.batch_size windows (the batching changes nothing but float rounding).

So a token's context is its position in its window: 0 to block_size - 1 tokens, block_size / 2 on
average, and a model with a longer context is rewarded for using it. Bits per character (char
tokenizer) or per UTF-8 byte (other tokenizers) divide the same total by the split's characters or
bytes, so models with different tokenizers compare.

What training logs every train.eval_interval steps is an estimate of it: train.eval_iters batches of
the same windows, spread evenly over the split (the same every time), under train.dtype's autocast.
At the end of training the whole split is scored: that figure is the run's final val loss, and
`shoshin eval RUN` prints the same number for the same checkpoint.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from shoshin.data import IGNORE_INDEX
from shoshin.data.dataset import Split, eval_batches


@torch.no_grad()
def loss_sums(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    mine: Callable[[int], bool] = lambda i: True,
) -> tuple[float, int]:
    """(summed loss in nats, number of targets) over the batches that `mine(i)` keeps.

    The model's forward returns the mean over its batch's targets; times their count it is the sum.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(batches):
        if not mine(i):
            continue
        n = int((y != IGNORE_INDEX).sum())
        if n == 0:
            continue
        with autocast or contextlib.nullcontext():
            total += model(x.to(device), y.to(device)).float().item() * n
        count += n
    model.train(was_training)
    return total, count


def validation_loss(
    model: nn.Module,
    split: Split,
    block_size: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> float:
    """The validation loss of the module docstring on the whole of `split`."""
    total, count = loss_sums(model, eval_batches(split, batch_size, block_size), device)
    return total / max(count, 1)


def per_unit(loss: float, meta: dict[str, Any], tokenizer: str) -> tuple[str, float] | None:
    """("char" or "byte", bits per character or UTF-8 byte of the validation split) for `loss`
    over the whole split of a prepared corpus (`meta`: PreparedData.meta), if its size is known."""
    unit = "char" if tokenizer == "char" else "byte"
    units = meta["characters"]["val"] if unit == "char" else meta.get("bytes", {}).get("val")
    if not units:
        return None
    return unit, loss * meta["tokens"]["val"] / units / math.log(2)
