"""A word about work that turns out slow: what is happening and roughly how long it still takes.

Preparing data or calibrating an estimate takes a blink on a small corpus or model and minutes on
a large one; the user should not stare at a silent terminal. SlowWork stays quiet while the work is
quick and, once it has run longer than a moment, logs one line with the time left, extrapolated
from the rate so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
    """1.5 -> '1.5s', 95 -> '1m35s', 4000 -> '1h06m'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
    return f"{int(seconds) // 3600}h{int(seconds) % 3600 // 60:02d}m"


def format_bytes(size: float) -> str:
    """`820 bytes`, `29 KB`, `12.0 MB`, `3.1 GB`: a size for people."""
    if size < 1e3:
        return f"{int(size)} bytes"
    if size < 1e6:
        return f"{round(size / 1e3)} KB"
    if size < 1e9:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e9:.1f} GB"


class SlowWork:
    """Counts progress through `total` units and says once, after `after` seconds, what is left."""

    def __init__(
        self, what: str, total: float, log: Callable[[str], object], after: float = 2.0
    ) -> None:
        self.what, self.total, self.log, self.after = what, total, log, after
        self.start = time.monotonic()
        self.done = 0.0
        self.said = False

    def advance(self, amount: float = 1.0) -> None:
        """Count `amount` more units done; the first call past `after` seconds says what is left."""
        self.done += amount
        if self.said or self.done <= 0 or self.done >= self.total:
            return
        elapsed = time.monotonic() - self.start
        if elapsed >= self.after:
            left = elapsed * (self.total - self.done) / self.done
            self.log(f"{self.what}: about {format_seconds(left)} to go")
            self.said = True
