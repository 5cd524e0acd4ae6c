"""Generation: token ids in, token ids out (engine, sampling), and text at the edges (streaming, chat).

The names below are imported on first use (PEP 562), so that `shoshin.generation.params`, which the
CLI's parser reads, can be imported without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Engine": "shoshin.generation.engine",
    "Generation": "shoshin.generation.engine",
    "TokenLogprob": "shoshin.generation.engine",
    "generate": "shoshin.generation.engine",
    "prepare_for_inference": "shoshin.generation.precision",
    "SamplingParams": "shoshin.generation.params",
    "naive_generate": "shoshin.generation.sampling",
    "sample_next": "shoshin.generation.sampling",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'shoshin.generation' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
