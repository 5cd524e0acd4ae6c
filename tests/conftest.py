"""Shared test fixtures: every test gets its own runs folder and data cache, and runs the real CLI;
a session-wide pair of tiny trained runs serves the tests that only read runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The tests train tiny models: one thread does it several times faster than two on a busy machine
# (the threads only wait for each other). Set OMP_NUM_THREADS to run the suite with more.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Runs go to tmp_path/runs; tokenized data to a cache shared by the session (it is keyed by content)."""
    monkeypatch.setenv("SHOSHIN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SHOSHIN_CACHE_DIR", str(_shared_cache()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _shared_cache() -> Path:
    path = Path(os.environ.get("PYTEST_SHOSHIN_CACHE", REPO / ".pytest_cache" / "shoshin-data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_cli(*args: str, timeout: float = 300, input: str | None = None, env: dict | None = None):
    """Run `python -m shoshin ARGS` as a user would; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "shoshin", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def shakespeare_like(tmp_path) -> Path:
    """A small text corpus made on the spot."""
    return write_corpus(tmp_path / "corpus.txt")


def write_corpus(path: Path, lines: int = 3000) -> Path:
    """A small made-up text corpus (tests never need ../shared)."""
    words = [
        "thou",
        "art",
        "the",
        "king",
        "of",
        "my",
        "heart",
        "and",
        "fair",
        "lady",
        "speak",
        "now",
    ]
    text = [
        " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6 + i % 5))
        for i in range(lines)
    ]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


# A few tiny steps, no calibration, no sample: a whole run in about a second.
QUICK = [
    "train.max_steps=4",
    "train.eval_interval=2",
    "train.eval_iters=1",
    "train.log_interval=1",
    "train.checkpoint_interval=2",
    "train.sample_tokens=0",
    "train.calibrate=false",
]


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> Path:
    """A runs folder with two completed tiny runs (lr 3e-3 and 1e-3), trained once per session.

    Tests copy it (shutil.copytree) before changing anything in it.
    """
    from shoshin.config import load_config
    from shoshin.training.runner import train

    root = tmp_path_factory.mktemp("trained")
    corpus = write_corpus(root / "corpus.txt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOSHIN_CACHE_DIR", str(_shared_cache()))
        mp.chdir(root)
        for lr in ("3e-3", "1e-3"):
            config = load_config("tiny", [f"data.source={corpus}", f"train.lr={lr}", *QUICK])
            train(config, root / "runs", log=lambda *a: None)
    return root / "runs"


@pytest.fixture(scope="session")
def tiny_bpe_run(tmp_path_factory) -> Path:
    """A finished 10-step run of the tiny chat GPT with a BPE tokenizer, trained once per session.

    Tests that damage it work on a copy (see copy_run).
    """
    root = tmp_path_factory.mktemp("bpe-runs")
    result = run_cli(
        "train",
        "tiny",
        "data.tokenizer=bpe",
        "data.vocab_size=300",
        "train.max_steps=10",
        "train.eval_iters=1",
        "train.sample_tokens=0",
        "train.calibrate=false",
        "--runs-dir",
        str(root),
        env={"SHOSHIN_CACHE_DIR": str(_shared_cache())},
    )
    assert result.returncode == 0, result.stderr
    (run,) = root.iterdir()
    return run


def copy_run(run: Path, runs_dir: Path) -> Path:
    """A copy of `run` under `runs_dir`, to damage without touching the original."""
    return Path(shutil.copytree(run, runs_dir / run.name))


CTRL_C_IN_SECOND_RUN = textwrap.dedent(
    """
    # Runs `shoshin ARGS`, pressing Ctrl-C (KeyboardInterrupt) as the second run trained in this
    # process starts step 6 (a matrix's second cell, a group's second member).
    import sys

    import shoshin.training.trainer as trainer
    from shoshin.cli import main

    real_lr_at = trainer.lr_at
    cells_at_step_5 = []

    def lr_at(step, cfg):
        if step == 5:
            cells_at_step_5.append(step)
            if len(cells_at_step_5) == 2:
                raise KeyboardInterrupt
        return real_lr_at(step, cfg)

    trainer.lr_at = lr_at
    sys.exit(main(sys.argv[1:]))
    """
)
