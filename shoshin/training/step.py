"""The training step, written once: every command that trains takes its optimizer steps here.

One step is: set the learning rate from the schedule; for each of train.grad_accum micro-batches,
a forward pass (under bf16 autocast when train.dtype=bfloat16) and a backward pass of loss /
grad_accum (under DDP, gradients are all-reduced on the last micro-batch only); clip the gradient
norm; optimizer step (AdamW, or Muon and AdamW: shoshin.training.optim). `shoshin train` and `finetune` (the Trainer), the estimate's calibration and
`lr-find` all use it, so a change here changes all of them alike.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from shoshin.config import TrainConfig
from shoshin.data.dataset import Split, get_batch
from shoshin.training.distributed import DistContext
from shoshin.training.optim import make_optimizer


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """The autocast context of train.dtype: bfloat16 autocast, or nothing for float32."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def draw_batch(
    split: Split, batch_size: int, block_size: int, generator: torch.Generator, dist: DistContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of a global batch, on its device.

    Every rank draws the same global batch of batch_size * world_size rows from the same generator
    and keeps its own slice, so N processes see exactly the rows of one process with N times the
    batch.
    """
    x, y = get_batch(split, batch_size * dist.world_size, block_size, generator)
    return dist.shard(x).to(dist.device), dist.shard(y).to(dist.device)


class TrainStep:
    """Forward, backward (with accumulation), clipping and the optimizer step of one model.

    `schedule(step)` gives the learning rate of each step. Under torchrun the model is wrapped in
    DistributedDataParallel here; `forward` is what computes the loss (DDP-wrapped and compiled
    as configured), `loss(x, y)` evaluates it under the configured autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        tc: TrainConfig,
        block_size: int,
        split: Split,
        generator: torch.Generator,
        schedule: Callable[[int], float],
        dist: DistContext,
        compile: bool = False,
    ):
        self.model = model
        self.tc = tc
        self.block_size = block_size
        self.split = split
        self.generator = generator
        self.schedule = schedule
        self.dist = dist
        self.optimizer = make_optimizer(model, tc, dist.device.type)
        # Each group's peak rate relative to train.lr: the schedule moves Muon's and AdamW's alike.
        self.lr_scales = [group["lr"] / tc.lr for group in self.optimizer.param_groups]
        # DDP averages the gradients across ranks during backward; one process trains the bare model.
        self.ddp = (
            DistributedDataParallel(
                model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
            )
            if dist.enabled
            else None
        )
        trained = self.ddp or model
        self.forward: Callable[..., torch.Tensor] = torch.compile(trained) if compile else trained
        self.autocast = autocast(dist.device, tc.dtype)
        # Optimizer steps begun. It is counted before the weights change, so a caller comparing it
        # with an earlier value knows whether an interrupted step may have touched them.
        self.updates = 0

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's mean loss on one batch."""
        with self.autocast:
            return self.forward(x, y)

    def __call__(self, step: int) -> tuple[float, float]:
        """Take optimizer step number `step`; returns (mean training loss, learning rate).

        The loss is averaged over micro-batches and ranks, so every rank returns the same value. A
        non-finite loss is returned without touching the weights: the caller decides what to do.
        """
        tc = self.tc
        lr = self.schedule(step)
        for group, scale in zip(self.optimizer.param_groups, self.lr_scales, strict=True):
            group["lr"] = lr * scale
        loss_sum = 0.0
        for micro in range(tc.grad_accum):
            x, y = draw_batch(self.split, tc.batch_size, self.block_size, self.generator, self.dist)
            # Gradients are all-reduced on the last micro-batch only; earlier ones accumulate.
            skip_sync = self.ddp is not None and micro < tc.grad_accum - 1
            with self.ddp.no_sync() if skip_sync else contextlib.nullcontext():
                loss = self.loss(x, y) / tc.grad_accum
                loss.backward()
            loss_sum += loss.item()
        loss_sum = self.dist.mean(loss_sum)
        if math.isfinite(loss_sum):
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.updates += 1
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, lr
