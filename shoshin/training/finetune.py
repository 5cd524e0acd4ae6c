"""Fine-tuning a pretrained GPT-2, GPT-1, Llama or Qwen3: the recipe is the ordinary training loop, started from a
checkpoint's architecture, weights and tokenizer instead of random ones.

    base = load_checkpoint("gpt2")          # shoshin's GPT with GPT-2's weights, and its tokenizer
                                            # (Llama, Qwen3: shoshin's Llama)
    config.model <- the checkpoint's shape   # only the context length and dropout stay yours
    train(config, init=base)                # chat tokens added, embedding grown, loss on the assistant

A fine-tuning run is an ordinary run afterwards: sample, chat, resume, export all work on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from shoshin.config import Config
from shoshin.errors import ShoshinError
from shoshin.interop.hf import FAMILIES, Pretrained, load_checkpoint, load_recorded_base
from shoshin.runs.record import Manifest
from shoshin.runs.store import Run
from shoshin.training.trainer import train

# Everything else about the model is fixed by the checkpoint's weights.
MODEL_KEYS_YOU_CAN_SET = ("model.block_size", "model.dropout")


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse `model.*` overrides that the checkpoint decides (before loading a large checkpoint)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith("model.") and key not in MODEL_KEYS_YOU_CAN_SET:
            raise ShoshinError(
                f"{key} comes from the checkpoint when fine-tuning; "
                f"only {' and '.join(MODEL_KEYS_YOU_CAN_SET)} can be set"
            )


def finetune_config(base: Pretrained, config: Config) -> Config:
    """`config` with its model section taken from the checkpoint and its tokenizer set to `pretrained`.

    model.block_size may only shorten the checkpoint's context (cheaper steps on long-context
    models); model.dropout is applied during fine-tuning.
    """
    config.model = dataclasses.replace(
        base.model.config,
        block_size=min(config.model.block_size, base.model.config.block_size),
        dropout=config.model.dropout,
    )
    config.data.tokenizer = "pretrained"
    return config.validate()


def finetune(
    src: str,
    config: Config,
    runs_dir: Path,
    command: list[str] | None = None,
    overrides: Sequence[str] = (),
    log=print,
) -> Run:
    """Fine-tune the Hugging Face checkpoint `src` (folder or hub id) with `config`; returns the run."""
    check_overrides(overrides)
    log(f"loading {src} ...")
    base = load_checkpoint(src)
    requested = config.model.block_size
    config = finetune_config(base, config)
    params = sum(p.numel() for p in base.model.parameters()) / 1e6
    note = ""
    if requested > config.model.block_size:
        note = f" (model.block_size={requested} is longer than the checkpoint's)"
    log(
        f"{FAMILIES[base.model_type]} ({base.model_type}) from {base.path}: {params:.1f}M "
        f"parameters, context {config.model.block_size} tokens{note}"
    )
    return train(config, runs_dir, command, log=log, init=base)


def recorded_base(manifest: Manifest) -> Pretrained | None:
    """The checkpoint a fine-tuning run started from (to re-run it), or None for a from-scratch run.

    Refuses a checkpoint whose weights changed since the run: it would not be the same experiment.
    """
    recorded = manifest.base_model
    if recorded is None:
        return None
    return load_recorded_base(
        recorded.source, recorded.path, recorded.weights_sha256, f"run {manifest.id}"
    )
