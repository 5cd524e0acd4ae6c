"""What every training loop sets up the same way: its data, its seeded model and its batch draws.

`Trainer` and the learning-rate range test (`shoshin/experiments/lr_find.py`) both start here, so a
change to how the data is checked or the model seeded reaches both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from shoshin.config import Config
from shoshin.data.dataset import PreparedData, check_fits, prepare_data
from shoshin.data.tokenizers import Tokenizer
from shoshin.models import build_model
from shoshin.training.distributed import DistContext


def training_data(
    config: Config,
    dist: DistContext,
    log: Callable[[str], None] = print,
    tokenizer: Tokenizer | None = None,
) -> PreparedData:
    """The run's prepared data (rank 0 tokenizes and caches, the others then read the cache),
    checked to hold a window of `block_size`; sets `config.model.vocab_size` from its tokenizer."""
    with dist.main_first():
        data = prepare_data(config.data, log=log, tokenizer=tokenizer)
    check_fits(data, config.model.block_size, config.data.source)
    config.model.vocab_size = data.tokenizer.vocab_size
    return data


def seeded_model(config: Config) -> nn.Module:
    """A new model for `config`, initialised from `train.seed` (the same weights on every rank)."""
    torch.manual_seed(config.train.seed)
    return build_model(config.model)


def batch_generator(config: Config) -> torch.Generator:
    """The generator batches are drawn with, seeded from `train.seed` (checkpoints save its state)."""
    return torch.Generator().manual_seed(config.train.seed)
