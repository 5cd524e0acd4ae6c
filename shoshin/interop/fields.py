"""Reading fields of a checkpoint's config.json, untrusted input: each value is checked, and a
bad one is a one-line error naming the file and the field."""

from __future__ import annotations

import math

from shoshin.errors import ShoshinError


def positive_int(hf: dict, key: str, where: str, default: int | None = None) -> int:
    """hf[key], a whole number of at least 1 (`default` when absent or null; else required)."""
    value = hf.get(key)
    if value is None:
        if default is None:
            raise ShoshinError(f"{where} is missing the field {key!r}")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON writes 1e9 as a float
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShoshinError(f"{where}: {key} must be a whole number of at least 1, got {value!r}")
    return value


def positive_float(hf: dict, key: str, where: str, default: float) -> float:
    """hf[key], a finite positive number (`default` when absent or null)."""
    value = hf.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ShoshinError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)
