"""`shoshin.load`: a trained model and its tokenizer from a run (id, prefix, `latest` or path)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from shoshin.data.tokenizers import Tokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.models import build_model
from shoshin.models.fit import verify_checkpoint
from shoshin.runs.store import CONFIG, Run, all_runs, resolve_run, runs_root
from shoshin.storage.checkpoint import (
    checkpoint_path,
    load_model_tensors,
    read_checkpoint,
)


def load_run(run: Run, checkpoint: str = "latest") -> tuple[nn.Module, Tokenizer]:
    """The model (in eval mode, on CPU) and tokenizer of a run, from its `latest`/`best`/step-N checkpoint."""
    config = run.config
    if config.model.vocab_size < 1:
        raise ShoshinError(
            f"run {run.id} never got as far as building its model (see: shoshin show {run.id})"
        )
    path = checkpoint_path(run.path / "checkpoints", checkpoint)
    if config.lora.rank:
        from shoshin.models import lora

        base, tensors = lora_parts(run, path)
        adapter = lora.attach(base, config.lora)
        lora.load_adapter(adapter, tensors, str(path))  # names and shapes checked
        model = lora.merge(adapter)  # one weight per layer again: inference as fast as the base
    else:
        verify_checkpoint(path, config.model, f"{run.path / CONFIG}")  # before building anything
        model = build_model(config.model)
        load_model_tensors(model, read_checkpoint(path)["model"], str(path))
    model.eval()
    return model, load_tokenizer(run.path)


def lora_parts(run: Run, path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A LoRA run's base model (as training started from it) and the adapters of checkpoint `path`.

    The base is the checkpoint's recorded one, loaded again and refused if its weights changed.
    """
    from shoshin.interop.hf import load_recorded_base

    ckpt = read_checkpoint(path)
    ref = ckpt["state"].get("base_model")
    if not isinstance(ref, dict):
        raise ShoshinError(f"checkpoint {path} holds LoRA adapters but does not name their base")
    base = load_recorded_base(
        str(ref.get("source", "")),
        str(ref.get("path", "")),
        str(ref.get("weights_sha256", "")),
        f"run {run.id}",
    )
    base.check_describes(run.config.model, str(run.path / CONFIG))  # before building anything
    model = build_model(run.config.model)
    # with the chat tokens' rows and the run's context, as in training
    base.copy_into(model, tokens=load_tokenizer(run.path).vocab_size)
    return model, ckpt["model"]


def load(
    src: str | Path, checkpoint: str = "latest", runs_dir: str | Path | None = None
) -> tuple[nn.Module, Tokenizer]:
    """`model, tokenizer = shoshin.load(src)`.

    src is a run (id, unique prefix, `latest` or run directory) or a Hugging Face GPT-2, GPT-1,
    Llama or Qwen3 checkpoint: a folder with config.json, or a hub id such as `gpt2` or
    `HuggingFaceTB/SmolLM2-135M`.
    """
    source = resolve_source(src, runs_dir)
    if isinstance(source, Run):
        return load_run(source, checkpoint)
    from shoshin.interop.hf import load_checkpoint

    pretrained = load_checkpoint(source)
    return pretrained.model, pretrained.tokenizer


def resolve_source(src: str | Path, runs_dir: str | Path | None = None) -> Run | str:
    """A run, or the name of a Hugging Face checkpoint (folder or hub id) when src is not a run."""
    from shoshin.interop.hf import is_checkpoint_dir
    from shoshin.interop.hub import close_hub_model, looks_like_hub_id

    src = str(src)
    if is_checkpoint_dir(src):
        return src
    root = runs_root(runs_dir)
    try:
        return resolve_run(src, root)
    except ShoshinError as exc:
        # Only a name shaped like a hub id (owner/name, or gpt2 and its kin) goes to the hub.
        if src == "latest" or _prefixes_a_run(src, root):
            raise
        if not looks_like_hub_id(src):
            typo = close_hub_model(src)
            hint = f"; did you mean the Hugging Face model {typo}?" if typo else ""
            raise ShoshinError(f"{exc}{hint}") from None
    return src


def _prefixes_a_run(src: str, root: Path) -> bool:
    return any(run.id.startswith(src) for run in all_runs(root))
