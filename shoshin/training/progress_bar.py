"""Training progress on the terminal: a bar with the loss on a terminal, one line per logged step
elsewhere, with the time left to the end or to the time budget."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """A progress bar on a terminal; elsewhere, one log line per logged step."""

    def __init__(self, max_steps: int, step: int, log, show_bar: bool):
        self.max_steps = max_steps
        self.log = log
        self.interactive = show_bar and sys.stderr.isatty()
        self.bar = tqdm(
            total=max_steps, initial=step, disable=not self.interactive, dynamic_ncols=True
        )
        self.deadline: float | None = None  # time.monotonic() when the time budget runs out

    def advance(self, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def report(self, step: int, row: dict[str, float], elapsed: float) -> None:
        """`step 50/1000 | loss ... | val ... | lr ... | tok/s | eta` (only evaluations on a bar)."""
        parts = [f"step {step}/{self.max_steps}"]
        if "train_loss" in row:
            parts.append(f"loss {row['train_loss']:.4f}")
        if "val_loss" in row:
            parts.append(f"val {row['val_loss']:.4f}")
        if "lr" in row:
            parts.append(f"lr {row['lr']:.2e}")
        if "tokens_per_sec" in row:
            parts.append(f"{row['tokens_per_sec']:,.0f} tok/s")
            parts.append(self._eta((self.max_steps - step) * elapsed / max(step, 1)))
        line = " | ".join(parts)
        if not self.interactive:
            self.log(line)
        elif "val_loss" in row:
            self.bar.write(line)

    def _eta(self, remaining: float) -> str:
        """The time to the end: to max_steps, or to the time budget when that comes first."""
        budget = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
        if budget is not None and budget < remaining:
            return f"eta {budget / 60:.1f} min (time budget; all steps need {remaining / 60:.1f})"
        return f"eta {remaining / 60:.1f} min"

    def say(self, line: str) -> None:
        """Log `line` above the bar (which is cleared, then drawn again below it)."""
        with tqdm.external_write_mode(file=sys.stderr):
            self.log(line)

    def close(self) -> None:
        """Draw the bar a last time and end its line; later output starts on a line of its own."""
        self.bar.close()
