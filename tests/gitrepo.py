"""Helpers for provenance tests: real git repositories in temp dirs and a copy of shoshin to edit.

The copy lets a test change shoshin's own code (as a practitioner would) without touching the real
checkout, and keeps the code fingerprint stable while other files of the checkout are edited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}

# A few seconds per run on a busy 2-core machine; one thread so a re-run matches bitwise.
TINY = [
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
    "model.block_size=32",
    "train.batch_size=4",
    "train.max_steps=12",
    "train.warmup_steps=2",
    "train.log_interval=1",
    "train.eval_interval=6",
    "train.eval_iters=2",
    "train.checkpoint_interval=0",
    "train.sample_tokens=0",
    "train.calibrate=false",
    "data.tokenizer=char",
]
THREADS = {"OMP_NUM_THREADS": "1"}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout


def make_repo(path: Path) -> Path:
    """A git repository at `path` with everything in it committed."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "initial")
    return path


def shoshin_copy(root: Path, with_git: bool = True) -> tuple[Path, dict[str, str]]:
    """Copy the shoshin package to root/shoshin (committed in a new repo when with_git).

    Returns the copy's root and the environment that makes `python -m shoshin` import it.
    """
    shutil.copytree(
        REPO / "shoshin", root / "shoshin", ignore=shutil.ignore_patterns("__pycache__")
    )
    if with_git:
        make_repo(root)
    return root, {"PYTHONPATH": str(root), **THREADS}
