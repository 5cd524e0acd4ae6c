"""Checkpoints: tensors as safetensors, everything else as JSON; nothing is ever unpickled.

    checkpoints/step-000500/model.safetensors    model weights (tied weights stored once), or a
                                                 LoRA run's adapters alone (its state.json then
                                                 names the base model and its sha256)
    checkpoints/step-000500/trainer.safetensors  optimizer moments and RNG states (resume only)
    checkpoints/step-000500/state.json           step, optimizer hyper-parameters, counters
    checkpoints/index.json                       {"latest": "step-000500", "best": "step-000400"}

A checkpoint folder is written under a temporary name and renamed into place; index.json is then
replaced atomically, so a crash at any moment leaves the previous checkpoint intact and findable.

Reading treats every file as untrusted (a shared run folder, a downloaded checkpoint): index.json,
state.json and the tensors are checked before they are used; whether a config describes the
weights, and fits in memory, is `shoshin.models.fit`'s question (the format knows no model).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shoshin.errors import ShoshinError
from shoshin.storage.files import add_path, atomic_write_json
from shoshin.storage.text import read_text_file

INDEX = "index.json"
STEP_NAME = re.compile(r"step-(\d+)")


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
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ShoshinError(
                f"checkpoint {where} does not match the model: tensor {name} has shape "
                f"{tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}"
            )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise ShoshinError(
            f"checkpoint {where} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, from its header (no data is read)."""
    if not path.is_file():
        raise ShoshinError(f"checkpoint file {path} is missing")
    try:
        with safe_open(path, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ShoshinError(f"checkpoint file {path} is corrupt ({exc})") from None


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {}
    for idx, slots in state["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{idx}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_join(tensors: dict[str, torch.Tensor], groups: list, where: Path) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = (key.split(".", 2) + ["", ""])[:3]
            if not idx.isdigit() or not slot:
                raise ShoshinError(f"checkpoint file {where} is corrupt (tensor name {key!r})")
            state.setdefault(int(idx), {})[slot] = value
    return {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, where: str) -> None:
    """Restore an optimizer from read_checkpoint's `optimizer`, after checking that it fits.

    torch accepts hyper-parameters of any type and moment tensors of any shape, and fails only at
    the next step; a checkpoint that does not fit this optimizer is refused here instead.
    """
    live = optimizer.param_groups
    groups = saved["param_groups"]
    if len(groups) != len(live) or any(
        len(g["params"]) != len(ref["params"]) for g, ref in zip(groups, live, strict=True)
    ):
        raise ShoshinError(f"checkpoint {where}: the optimizer state does not match the model")
    for group, ref in zip(groups, live, strict=True):
        for key, value in ref.items():
            if key != "params" and not _same_kind(group.get(key, value), value):
                raise ShoshinError(
                    f"checkpoint {where}: optimizer setting {key}={group[key]!r} is not "
                    f"{type(value).__name__}"
                )
    params = [p for ref in live for p in ref["params"]]
    for idx, slots in saved["state"].items():
        if idx >= len(params):
            raise ShoshinError(f"checkpoint {where}: optimizer state for a parameter it lacks")
        for slot, tensor in slots.items():
            if tensor.dim() and tensor.shape != params[idx].shape:
                raise ShoshinError(
                    f"checkpoint {where}: optimizer {slot} of parameter {idx} has shape "
                    f"{tuple(tensor.shape)}, the parameter {tuple(params[idx].shape)}"
                )
    optimizer.load_state_dict(saved)


def _same_kind(value: Any, ref: Any) -> bool:
    """Whether a saved optimizer setting can stand where `ref` (the live value) stands."""
    if isinstance(ref, bool) or ref is None:
        return isinstance(value, bool) or value is None
    if isinstance(ref, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(ref, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(ref)
            and all(_same_kind(v, r) for v, r in zip(value, ref, strict=True))
        )
    return type(value) is type(ref)


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    best: bool = False,
) -> Path:
    """Write checkpoint `step` and point `latest` (and `best` if asked) at it; prune older ones.

    `weights`: what model.safetensors holds, model_tensors(model) or a LoRA run's adapters.
    """
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
    current = tmp
    try:
        current = tmp / "model.safetensors"
        current.write_bytes(save_safetensors(weights))
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
    """index.json: {"latest": "step-N", "best": "step-M"} ({} before the first checkpoint)."""
    path = Path(ckpt_root) / INDEX
    if not path.exists():
        return {}
    try:
        index = json.loads(read_text_file(path))
    except (OSError, ValueError, ShoshinError):
        index = None
    if not isinstance(index, dict) or not all(
        key in ("latest", "best") and isinstance(name, str) and STEP_NAME.fullmatch(name)
        for key, name in index.items()
    ):
        raise ShoshinError(f"{path} is corrupt; delete it to start the checkpoints afresh")
    return index


def checkpoint_path(ckpt_root: Path, which: str = "latest") -> Path:
    """The folder of the `latest` or `best` checkpoint, or of `step-N`."""
    index = read_index(ckpt_root)
    if which in ("latest", "best"):
        if which not in index:
            raise ShoshinError(f"no {which} checkpoint in {ckpt_root}")
        if not (Path(ckpt_root) / index[which]).is_dir():
            raise ShoshinError(
                f"{Path(ckpt_root) / INDEX} names {which} checkpoint {index[which]}, "
                "which is missing"
            )
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


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json, checked: step (matching the folder's step-N name), counters.

    Returns the state with the optional counters filled in (best_val_loss None, elapsed 0.0,
    tokens_seen 0). A value of the wrong type or range is a one-line error naming the file: a step
    of -5 would otherwise retrain from scratch over the run's metrics, 1e18 "complete" at once.
    """
    file = Path(path) / "state.json"
    try:
        state = json.loads(read_text_file(file))
    except (OSError, ValueError, ShoshinError):
        raise ShoshinError(f"checkpoint {path} has no readable state.json") from None
    if not isinstance(state, dict):
        raise ShoshinError(f"{file} must hold a JSON object, not {type(state).__name__}")

    def bad(key: str, what: str) -> ShoshinError:
        got = f"got {state[key]!r}" if key in state else "it is missing"
        return ShoshinError(f"{file}: {key} must be {what}; {got}")

    step = state.get("step")
    if not _is_int(step) or step < 0:
        raise bad("step", "a whole number of steps, 0 or more")
    named = STEP_NAME.fullmatch(Path(path).name)
    if named and int(named.group(1)) != step:
        raise bad("step", f"{int(named.group(1))}, the step of its folder {Path(path).name}")
    best = state.setdefault("best_val_loss", None)
    if best is not None and not _is_number(best):
        raise bad("best_val_loss", "a finite number or null")
    if not _is_number(state.setdefault("elapsed", 0.0)) or state["elapsed"] < 0:
        raise bad("elapsed", "a number of seconds, 0 or more")
    if not _is_int(state.setdefault("tokens_seen", 0)) or state["tokens_seen"] < 0:
        raise bad("tokens_seen", "a whole number, 0 or more")
    groups = state.get("param_groups")
    if groups is not None and not (
        isinstance(groups, list)
        and all(
            isinstance(g, dict)
            and isinstance(g.get("params"), list)
            and all(_is_int(i) and i >= 0 for i in g["params"])
            for g in groups
        )
    ):
        raise bad("param_groups", 'a list of {"params": [indices], ...} (optimizer groups)')
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_checkpoint(path: Path, with_trainer: bool = False) -> dict[str, Any]:
    """A checkpoint folder: {'model': tensors, 'state': dict; with_trainer: 'rng', 'optimizer'}.

    Everything is checked before it is returned: state.json by read_state, the RNG states against
    the shapes torch expects (model tensors are checked by load_model_tensors).
    """
    path = Path(path)
    state = read_state(path)
    out: dict[str, Any] = {"model": _read_safetensors(path / "model.safetensors"), "state": state}
    if with_trainer:
        trainer_file = path / "trainer.safetensors"
        tensors = _read_safetensors(trainer_file)
        out["rng"] = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
        expected = {"torch": torch.get_rng_state(), "batches": torch.Generator().get_state()}
        for name, ref in expected.items():
            got = out["rng"].get(name)
            if got is None or got.dtype != ref.dtype or got.shape != ref.shape:
                raise ShoshinError(f"checkpoint file {trainer_file} has no valid {name} RNG state")
        groups = state.get("param_groups")
        out["optimizer"] = (
            _optimizer_join(tensors, groups, trainer_file) if groups is not None else None
        )
    return out
