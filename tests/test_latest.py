"""`latest` names the newest training run (train or finetune): reproductions and lr-find runs check
other runs and never move it; `shoshin runs` marks them, and `shoshin chat latest` names its run."""

from __future__ import annotations

import pytest
from conftest import run_cli
from gitrepo import TINY, shoshin_copy

from shoshin.config import load_config
from shoshin.errors import ShoshinError
from shoshin.runs.store import create_run, resolve_run, run_kind


def test_latest_skips_checks_and_unreadable_runs(tmp_path):
    root = tmp_path / "runs"
    config = load_config("tiny")
    with pytest.raises(ShoshinError, match="no training runs in .* yet"):
        resolve_run("latest", root)

    def started(minute: int, command: list[str], **fields):
        run = create_run(config, root, ["shoshin", *command], extra=fields)
        run.update_manifest(start_time=f"2026-01-01T10:{minute:02d}:00+00:00")
        return run

    first = started(1, ["train", "tiny"])
    tuned = started(2, ["finetune"], base_model={"source": "x"})
    assert resolve_run("latest", root).id == tuned.id and run_kind(tuned.manifest) == "finetune"

    check = started(3, ["reproduce"], reproduction_of=first.id)
    finder = started(4, ["lr-find"], kind="lr-find")
    damaged = started(5, ["train", "tiny"])
    (damaged.path / "manifest.json").write_text("{not json")
    assert [run_kind(r.manifest) for r in (check, finder)] == ["reproduction", "lr-find"]
    assert resolve_run("latest", root).id == tuned.id


@pytest.mark.slow
def test_reproduce_and_lr_find_leave_latest_on_the_trained_run(tmp_path, shakespeare_like):
    _, env = shoshin_copy(tmp_path / "src", with_git=False)  # a fixed code fingerprint
    data = f"data.source={shakespeare_like}"
    assert run_cli("train", "tiny", data, *TINY, env=env).returncode == 0
    (trained,) = [p.name for p in (tmp_path / "runs").iterdir()]
    result = run_cli("reproduce", "latest", "--steps", "2", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_cli("lr-find", "tiny", data, *TINY, "--steps", "10", env=env)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 3

    listing = run_cli("runs", env=env).stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line.strip()}
    kinds = sorted(line.split()[2] for run, line in rows.items() if run != "latest")
    assert kinds == ["lr-find", "reproduces", "train"]
    assert f"reproduces {trained}" in listing
    assert listing.rstrip().endswith(f"latest = {trained} (the newest train or finetune run)")

    chat = run_cli("chat", "latest", input="/quit\n", env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith(f"chatting with {trained} (gpt, context 32 tokens)")
