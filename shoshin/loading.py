"""`shoshin.load`: a trained model and its tokenizer from a run (id, prefix, `latest` or path)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from shoshin.data.tokenizers import Tokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.models import build_model
from shoshin.runs.store import Run, resolve_run, runs_root
from shoshin.training.checkpoint import checkpoint_path, load_model_tensors, read_checkpoint


def load_run(run: Run, checkpoint: str = "latest") -> tuple[nn.Module, Tokenizer]:
    """The model (in eval mode, on CPU) and tokenizer of a run, from its `latest`/`best`/step-N checkpoint."""
    config = run.config
    if config.model.vocab_size < 1:
        raise ShoshinError(
            f"run {run.id} never got as far as building its model (see: shoshin show {run.id})"
        )
    path = checkpoint_path(run.path / "checkpoints", checkpoint)
    model = build_model(config.model)
    load_model_tensors(model, read_checkpoint(path)["model"], str(path))
    model.eval()
    return model, load_tokenizer(run.path)


def load(
    src: str | Path, checkpoint: str = "latest", runs_dir: str | Path | None = None
) -> tuple[nn.Module, Tokenizer]:
    """`model, tokenizer = shoshin.load(src)` where src is a run id, unique prefix, `latest` or run directory."""
    return load_run(resolve_run(str(src), runs_root(runs_dir)), checkpoint)
