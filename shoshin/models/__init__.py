"""Models: a GPT (GPT-1 and GPT-2 layouts), a Llama (Llama/Qwen3 layout) and an LSTM, all plain
nn.Modules, built by name.

`ARCHITECTURES` (`shoshin/architectures.py`, re-exported here) is the one list of what
`model.arch` may name: config validation, `build_model`, the cost estimate and the error for an
unknown name all read it. Adding a model: write its module (an nn.Module taking a ModelConfig, with
`forward(idx, targets=None, cache=None, logits_at=None)`, `new_cache` (whose `lengths` is a CPU
tensor), and the two generation declarations `context_window` and `right_padding_safe`: the
`shoshin.generation.contracts.LanguageModel` protocol), then add an entry to the registry.
"""

from __future__ import annotations

import torch.nn as nn

from shoshin.architectures import ARCHITECTURES, Architecture, architecture
from shoshin.config import ModelConfig
from shoshin.models.gpt import GPT
from shoshin.models.llama import Llama
from shoshin.models.lstm import LSTM

__all__ = [
    "ARCHITECTURES",
    "GPT",
    "LSTM",
    "Architecture",
    "Llama",
    "architecture",
    "build_model",
    "count_parameters",
    "count_trainable",
]


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for `config` (vocab_size must be set)."""
    return architecture(config.arch).model_class()(config)


def count_parameters(model: nn.Module) -> int:
    """Parameters, counting tied weights once (frozen ones too: a LoRA run's base weights)."""
    return sum(p.numel() for p in model.parameters())


def count_trainable(model: nn.Module) -> int:
    """Parameters the optimizer updates: all of them, or a LoRA run's adapters only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
