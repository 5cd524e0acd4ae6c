"""The optimizer and learning-rate schedule.

train.optimizer=adamw: AdamW for every weight, matrices with weight decay, vectors without.
train.optimizer=muon: Muon (torch.optim.Muon: Nesterov momentum, then the update orthogonalised by
Newton-Schulz iterations) for the 2-D weight matrices inside the model, and AdamW for what Muon is
not meant for: embeddings, the output head (an embedding too when tied), norms and biases. Each
part has its own peak learning rate (train.muon_lr, train.lr); the schedule scales both alike.
This follows the recipe of Keller Jordan's modded-nanogpt (Muon lr ~0.02-0.05, momentum 0.95,
Nesterov, the update scaled by sqrt(max(1, rows/cols)) so rectangular matrices move alike).

Schedules (train.schedule): both warm up linearly to the peak over train.warmup_steps; cosine then
decays to min_lr at lr_decay_steps (max_steps when 0); wsd (warmup-stable-decay) holds the peak and
decays linearly to min_lr over the last train.warmdown_fraction of those steps. Past the end of the
decay the rate stays at min_lr.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from shoshin.config import TrainConfig


class Optimizers:
    """Several optimizers stepping as one, over disjoint parameters (Muon's and AdamW's).

    What the training step and the checkpoint use of an optimizer: `param_groups` (the live groups
    of all of them, in order), `step`, `zero_grad`, and a `state_dict` numbered as one optimizer's
    would be (parameters counted across all groups), so a checkpoint holds it like any other.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for opt in self.optimizers:
            saved = opt.state_dict()
            groups += [
                {**g, "params": [i + offset for i in g["params"]]} for g in saved["param_groups"]
            ]
            state.update({i + offset: slots for i, slots in saved["state"].items()})
            offset += sum(len(g["params"]) for g in saved["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        groups = list(saved["param_groups"])
        offset = 0
        for opt in self.optimizers:
            mine, groups = groups[: len(opt.param_groups)], groups[len(opt.param_groups) :]
            count = sum(len(g["params"]) for g in mine)
            opt.load_state_dict(
                {
                    "param_groups": [
                        {**g, "params": [i - offset for i in g["params"]]} for g in mine
                    ],
                    "state": {
                        i - offset: slots
                        for i, slots in saved["state"].items()
                        if offset <= i < offset + count
                    },
                }
            )
            offset += count


def _adamw(params: list[nn.Parameter], cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW where matrices (dim >= 2) decay and biases, norms and LSTM bias vectors do not."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (CPU and CUDA) updates every tensor in one pass: on a GPT-2-shaped model on a
    # CPU its step took a quarter of the time of the per-parameter loop (transformers' Trainer uses it too).
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device_type in ("cpu", "cuda")
    )


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the model that Muon trains: every trainable matrix except the
    embeddings' (nn.Embedding modules) and the output head's (`model.lm_head`, every shoshin
    model's head), which are lookups and a classifier rather than hidden transformations."""
    outside = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        outside.add(id(head.weight))
    return [
        p for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in outside
    ]


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, device_type: str
) -> torch.optim.Optimizer | Optimizers:
    """The optimizer train.optimizer names (see the module docstring); each group's "lr" is its
    peak learning rate until the schedule sets it."""
    params = [p for p in model.parameters() if p.requires_grad]
    muon_params = hidden_matrices(model) if cfg.optimizer == "muon" else []
    if not muon_params:
        return _adamw(params, cfg, device_type)
    muon = torch.optim.Muon(
        muon_params,
        lr=cfg.muon_lr,
        weight_decay=cfg.muon_weight_decay,
        momentum=cfg.muon_momentum,
        nesterov=True,
        adjust_lr_fn="original",  # Keller Jordan's sqrt(max(1, rows / cols))
    )
    chosen = {id(p) for p in muon_params}
    # Embeddings, the head, norms and biases: AdamW.
    return Optimizers([muon, _adamw([p for p in params if id(p) not in chosen], cfg, device_type)])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of train.lr at `step` (see the module docstring for the schedules);
    nanoGPT's cosine with lr_decay_iters when train.schedule=cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    decay_end = cfg.lr_decay_steps or cfg.max_steps
    if step >= decay_end:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        start = warmdown_start(cfg)
        if step < start:
            return cfg.lr
        progress = (step - start) / max(1, decay_end - start)
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    progress = (step - cfg.warmup_steps) / max(1, decay_end - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def warmdown_start(cfg: TrainConfig) -> int:
    """The step where wsd's linear decay begins (never inside the warmup)."""
    decay_end = cfg.lr_decay_steps or cfg.max_steps
    return max(cfg.warmup_steps, decay_end - round(cfg.warmdown_fraction * decay_end))
