"""Checkpoints: tensors as safetensors, everything else as JSON; nothing is ever unpickled.

    checkpoints/step-000500/model.safetensors    model weights (tied weights stored once)
    checkpoints/step-000500/trainer.safetensors  optimizer moments and RNG states (resume only)
    checkpoints/step-000500/state.json           step, optimizer hyper-parameters, counters
    checkpoints/index.json                       {"latest": "step-000500", "best": "step-000400"}

A checkpoint folder is written under a temporary name and renamed into place; index.json is then
replaced atomically, so a crash at any moment leaves the previous checkpoint intact and findable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shoshin.errors import ShoshinError
from shoshin.runs.files import add_path, atomic_write_json

INDEX = "index.json"


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared (tied) tensor kept once, under its first name."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().cpu().contiguous()
    return tensors


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load weights saved by model_tensors; names missing because they are tied aliases are fine."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise ShoshinError(
            f"checkpoint {where} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {}
    for idx, slots in state["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{idx}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_join(tensors: dict[str, torch.Tensor], groups: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            state.setdefault(int(idx), {})[slot] = value
    return {"state": state, "param_groups": groups["param_groups"]}


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    best: bool = False,
) -> Path:
    """Write checkpoint `step` and point `latest` (and `best` if asked) at it; prune older ones."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
    current = tmp
    try:
        current = tmp / "model.safetensors"
        current.write_bytes(save_safetensors(model_tensors(model)))
        extra: dict[str, Any] = {}
        trainer_tensors = {f"rng.{k}": v.contiguous() for k, v in rng.items()}
        if optimizer is not None:
            optim_tensors, extra = _optimizer_split(optimizer)
            trainer_tensors.update(optim_tensors)
        current = tmp / "trainer.safetensors"
        current.write_bytes(save_safetensors(trainer_tensors))
        current = tmp / "state.json"
        current.write_text(json.dumps({"step": step, **state, **extra}, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk keeps the previous checkpoint only
        add_path(exc, current)
        raise
    index = read_index(ckpt_root)
    index["latest"] = name
    if best:
        index["best"] = name
    atomic_write_json(ckpt_root / INDEX, index)
    keep = set(index.values())
    for old in ckpt_root.glob("step-*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_unfinished(ckpt_root: Path) -> list[str]:
    """Delete what a process killed while writing a checkpoint left behind: `.step-N.XXXX` folders
    (save_checkpoint's temporary names) and `.NAME.XXXX.tmp` files (atomic writes of index.json).

    Only the run's writer calls this, holding the run lock, so no live process is writing them.
    Returns the names removed.
    """
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    removed = []
    for path in sorted(ckpt_root.glob(".step-*")) + sorted(ckpt_root.glob(".*.tmp")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def read_index(ckpt_root: Path) -> dict[str, str]:
    path = Path(ckpt_root) / INDEX
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ShoshinError(
            f"{path} is corrupt; delete it to start the checkpoints afresh"
        ) from None


def checkpoint_path(ckpt_root: Path, which: str = "latest") -> Path:
    """The folder of the `latest` or `best` checkpoint, or of `step-N`."""
    index = read_index(ckpt_root)
    if which in ("latest", "best"):
        if which not in index:
            raise ShoshinError(f"no {which} checkpoint in {ckpt_root}")
        return Path(ckpt_root) / index[which]
    name = (
        which
        if which.startswith("step-")
        else f"step-{int(which):07d}"
        if which.isdigit()
        else which
    )
    path = Path(ckpt_root) / name
    if not path.is_dir():
        raise ShoshinError(
            f"no checkpoint {which!r} in {ckpt_root} (have: {', '.join(sorted(index))})"
        )
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ShoshinError(f"checkpoint file {path} is missing")
    try:
        return load_safetensors(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ShoshinError(f"checkpoint file {path} is corrupt ({exc})") from None


def read_checkpoint(path: Path, with_trainer: bool = False) -> dict[str, Any]:
    """Read a checkpoint folder: {'model': tensors, 'state': dict, and with_trainer: 'rng', 'optimizer'}."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        raise ShoshinError(f"checkpoint {path} has no readable state.json") from None
    out: dict[str, Any] = {"model": _read_safetensors(path / "model.safetensors"), "state": state}
    if with_trainer:
        tensors = _read_safetensors(path / "trainer.safetensors")
        out["rng"] = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
        out["optimizer"] = _optimizer_join(tensors, state) if "param_groups" in state else None
    return out
