"""Does a config describe these weights, and would its model fit in memory? Asked before a model
is built from an untrusted config (a shared run folder, a downloaded checkpoint): a hostile config
(n_layer: 100000) must not cost minutes and gigabytes to be found out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from shoshin.config import ModelConfig
from shoshin.errors import ShoshinError
from shoshin.models import build_model, count_parameters
from shoshin.storage.checkpoint import read_state, weight_shapes


def parameter_count(config: ModelConfig) -> int:
    """Parameters of the model `config` describes (tied weights once), without building it.

    Every architecture stacks n_layer identical layers on a fixed embedding and head, so the count
    is linear in n_layer: a one- and a two-layer model built on the meta device (which allocates
    nothing) give it for any depth, in milliseconds even where the real model would need terabytes.
    """

    def count(n_layer: int) -> int:
        with torch.device("meta"):
            return count_parameters(build_model(dataclasses.replace(config, n_layer=n_layer)))

    try:
        one, two = count(1), count(2)
    except (RuntimeError, OverflowError, TypeError, ValueError):  # beyond what torch can index
        raise ShoshinError(f"model sizes {_sizes(config)} are beyond any machine") from None
    return one + (config.n_layer - 1) * (two - one)


def check_weights_fit(
    config: ModelConfig, shapes: Mapping[str, Sequence[int]], weights: Path, described_by: str
) -> None:
    """Refuse a config that does not describe these weights, or whose model would not fit in memory.

    `shapes`: the weights' tensor shapes (a safetensors header has them without reading the data);
    `described_by` names the file `config` came from, for the message. Runs before the model is
    built: a hostile config (n_layer: 100000) must not cost minutes and gigabytes to be found out.
    """
    if config.vocab_size < 1:
        raise ShoshinError(f"{described_by}: model.vocab_size is not set")
    expected = parameter_count(config)
    held = sum(math.prod(shape) for shape in shapes.values())
    if expected > 2 * held:
        raise ShoshinError(
            f"{described_by} does not match the weights in {weights}: it describes a model of "
            f"{expected:,} parameters ({_sizes(config)}), the weights hold {held:,}"
        )
    # Now the model is no bigger than twice the weights, and laying it out on the meta device
    # costs about what building it will: compare every tensor's name and shape.
    difference = _first_difference(config, shapes, described_by)
    if difference:
        raise ShoshinError(f"checkpoint {weights} {difference}")
    # float32 parameters, plus the file read next to them.
    needed = expected * 4 + (weights.stat().st_size if weights.is_file() else 0)
    available = available_memory()
    if available is not None and needed > available:
        raise ShoshinError(
            f"loading {weights} needs about {_bytes(needed)} of memory ({expected:,} "
            f"parameters); only {_bytes(available)} is available"
        )


def _first_difference(
    config: ModelConfig, shapes: Mapping[str, Sequence[int]], described_by: str
) -> str | None:
    """How the weights differ from the model `config` describes: a missing, extra or misshapen
    tensor (None if they do not)."""
    with torch.device("meta"):
        model = build_model(config)
    layout = {name: tuple(p.shape) for name, p in model.named_parameters()}  # tied ones once
    missing = [name for name in layout if name not in shapes]
    extra = [name for name in shapes if name not in layout]
    if missing:
        return (
            f"is incomplete: missing tensor {_first_of(missing)} of the model "
            f"{described_by} describes"
        )
    if extra:
        return f"has tensor {_first_of(extra)}, which the model {described_by} describes lacks"
    for name, shape in layout.items():
        if tuple(shapes[name]) != shape:
            return (
                f"has tensor {name} of shape {tuple(shapes[name])}, "
                f"but {described_by} implies {shape}"
            )
    return None


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _first_of(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _sizes(config: ModelConfig) -> str:
    return ", ".join(
        f"{k}={getattr(config, k)}" for k in ("n_layer", "n_embd", "vocab_size", "block_size")
    )


def available_memory() -> int | None:
    """Bytes of memory this process may still allocate, as far as Linux says; None elsewhere.

    The smaller of the system's MemAvailable and the room left under this container's cgroup limit.
    """
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        return None
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to respect
    return min(limits) if limits else None


def verify_checkpoint(path: Path, config: ModelConfig, described_by: str) -> None:
    """Check a checkpoint folder's state.json, and that `config` describes its weights, cheaply:
    before a trainer builds a model and an optimizer from `config` to resume into."""
    read_state(path)
    weights = Path(path) / "model.safetensors"
    check_weights_fit(config, weight_shapes(weights), weights, described_by)
