"""The run lock: one process writes a run at a time.

The writer of a run (`train`, `finetune`, `train --resume`, `lr-find`; under torchrun, rank 0)
holds an exclusive `flock` on `<run>/lock` for as long as it lives. The operating system drops the
lock when the process ends, however it ends (kill -9 included), so a lock is never stale: a lock
that can be taken belongs to nobody. The file itself keeps the holder's PID and host, to name them
in the error a second writer gets; `shoshin runs` asks the lock whether a run is live.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from shoshin.errors import ShoshinError

LOCK = "lock"


class RunLocked(ShoshinError):
    """Another live process is writing this run."""


class RunLock:
    """The held lock of one run directory; `release()` (or the end of the process) frees it."""

    def __init__(self, handle: IO[str]):
        self._handle = handle

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Take the lock of `run_dir`, or raise RunLocked naming the process that holds it."""
        path = Path(run_dir) / LOCK
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise RunLocked(
                f"run {Path(run_dir).name} is being written by {holder}; "
                "wait for it to finish, or stop it first"
            ) from None
        except BaseException:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(f"PID {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        self._handle.truncate(0)  # the next writer's error must not name this process
        self._handle.close()


def _holder(handle: IO[str]) -> str:
    """Who holds the lock, as its file says. The holder writes it right after taking the lock
    (and a holder that exited cleanly left the file empty): give it a moment to."""
    for _ in range(40):
        handle.seek(0)
        text = handle.read().strip()
        if text:
            return text
        time.sleep(0.025)
    return "another process"


def is_locked(run_dir: Path) -> bool | None:
    """Whether a live process holds the lock of `run_dir`; None if the run has no lock file
    (a run written before locks existed, or one whose lock file cannot be opened)."""
    try:
        handle = open(Path(run_dir) / LOCK, "rb")  # noqa: SIM115
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
