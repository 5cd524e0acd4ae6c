"""Small file helpers: every write that matters goes to a temp file first, then is renamed into place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """shoshin's cache folder (tokenized data, measured speeds, locks): $SHOSHIN_CACHE_DIR or
    ~/.cache/shoshin."""
    return Path(os.environ.get("SHOSHIN_CACHE_DIR") or Path.home() / ".cache" / "shoshin")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        add_path(exc, path)
        raise


def add_path(exc: BaseException, path: Path) -> None:
    """Make `exc` name `path` if it is an OSError that names no file (a failed write() does not),
    so the one-line error says which file the disk refused."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


def remove_temporaries(folder: Path) -> list[str]:
    """Delete the temp files of atomic writes in `folder` that a killed process left behind.

    Call it only while no other process can be writing there (the run's writer holds the run
    lock). Returns the names removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
