"""Models: a GPT (GPT-1 and GPT-2 layouts) and an LSTM, both plain nn.Modules."""

from __future__ import annotations

import torch.nn as nn

from shoshin.config import ModelConfig
from shoshin.models.gpt import GPT
from shoshin.models.lstm import LSTM

__all__ = ["GPT", "LSTM", "build_model", "count_parameters"]


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for `config` (vocab_size must be set)."""
    return GPT(config) if config.arch == "gpt" else LSTM(config)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting tied weights once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
