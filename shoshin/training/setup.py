"""What every training loop sets up the same way: its data (a fine-tuning run's tokenizer), its
seeded model, its batch draws, and the random state a checkpoint saves of them.

`Trainer` and the learning-rate range test (`shoshin/experiments/lr_find.py`) both start here, so a
change to how the data is checked or the model seeded reaches both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from shoshin.config import Config
from shoshin.data.dataset import PreparedData, check_fits, prepare_data
from shoshin.data.tokenizers import BPE_FILE, BpeTokenizer, Tokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.interop.hf import Pretrained
from shoshin.models import build_model
from shoshin.runs.store import Run
from shoshin.training.distributed import DistContext


def training_data(
    config: Config,
    dist: DistContext,
    log: Callable[[str], None] = print,
    tokenizer: Tokenizer | None = None,
) -> PreparedData:
    """The run's prepared data (rank 0 tokenizes and caches, the others then read the cache),
    checked to hold a window of `block_size`; sets `config.model.vocab_size` from its tokenizer
    (fine-tuning a padded embedding keeps its unused rows: never fewer than the checkpoint's)."""
    with dist.main_first():
        data = prepare_data(config.data, log=log, tokenizer=tokenizer)
    check_fits(data, config.model.block_size, config.data.source)
    rows = config.model.vocab_size  # fine-tuning: the checkpoint's embedding rows
    config.model.vocab_size = data.tokenizer.vocab_size
    if config.data.tokenizer == "pretrained":
        config.model.vocab_size = max(config.model.vocab_size, rows)
    return data


def seeded_model(config: Config) -> nn.Module:
    """A new model for `config`, initialised from `train.seed` (the same weights on every rank)."""
    torch.manual_seed(config.train.seed)
    return build_model(config.model)


def batch_generator(config: Config) -> torch.Generator:
    """The generator batches are drawn with, seeded from `train.seed` (checkpoints save its state)."""
    return torch.Generator().manual_seed(config.train.seed)


def capture_rng(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random state a checkpoint saves: torch's, the batch generator's, each GPU's."""
    rng = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = state
    return rng


def restore_rng(rng: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Put back the random state `capture_rng` took (on the GPUs this machine has)."""
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["batches"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def pretrained_tokenizer(config: Config, run: Run, init: Pretrained | None) -> BpeTokenizer | None:
    """The checkpoint's tokenizer for fine-tuning runs (from the run directory when resuming)."""
    if config.data.tokenizer != "pretrained":
        return None
    saved = run.path / BPE_FILE
    if init is not None and not saved.exists():
        return init.tokenizer
    tokenizer = load_tokenizer(run.path) if saved.exists() else None
    if not isinstance(tokenizer, BpeTokenizer):
        raise ShoshinError(
            "data.tokenizer=pretrained takes the tokenizer of a checkpoint; "
            "fine-tune one with: shoshin finetune --from SRC"
        )
    return tokenizer
