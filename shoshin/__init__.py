"""shoshin: a language-model lab, from a chat corpus to a chatbot you understand end to end."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["generate", "load", "__version__"]


def __getattr__(name: str) -> Any:
    # `shoshin.load` and `shoshin.generate` import PyTorch on first use, not on `import shoshin`:
    # commands that never touch a model (runs, show, config, a mistyped key) start in a fraction
    # of the time.
    if name == "generate":
        from shoshin.generation import generate

        return generate
    if name == "load":
        from shoshin.loading import load

        return load
    raise AttributeError(f"module 'shoshin' has no attribute {name!r}")
