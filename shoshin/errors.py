"""Errors a user can cause: the CLI prints them as one line and exits with status 2; and the
one line the CLI prints for a disk that is full, read-only or not a folder (status 1)."""

from __future__ import annotations

import errno


class ShoshinError(Exception):
    """A problem with the user's input (path, corpus, config, run, request), not a bug."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (from `kill`, `timeout`, a job scheduler): handled like Ctrl-C, so a training run
    saves a checkpoint and records `interrupted`; the CLI then exits with 128 + 15."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C already reported to the user, with what to do next (a training run's resume
    command): the CLI exits with status 130 without a second word."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)


def disk_error_line(exc: OSError, runs_dir: str) -> str | None:
    """One line for a full disk, a read-only or forbidden path, or a file where a folder should
    be: the path and what to do. None for any other OSError (a bug: its traceback is wanted)."""
    where = exc.filename or "a file"
    if exc.errno in NO_SPACE:
        what = "no space left" if exc.errno != errno.EFBIG else "file size limit reached"
        do = "free space there"
    elif exc.errno in NOT_WRITABLE:
        what = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        do = "make it writable"
    elif exc.errno in NOT_A_FOLDER:
        what, do = "a file is in the way of a folder", "move that file"
    else:
        return None
    return (
        f"cannot write {where} ({what}); {do}, or choose another runs dir with "
        f"--runs-dir DIR or SHOSHIN_RUNS_DIR (now {runs_dir})"
    )
