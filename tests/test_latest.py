"""`latest` names the newest training run (train or finetune) that has a checkpoint: reproductions
and lr-find runs check other runs and never move it, a run that failed before its first checkpoint
is skipped (and said so, on stderr, in one line); `shoshin runs` marks them, and
`shoshin chat latest` names its run. Data that cannot be read makes no run folder at all."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_cli
from gitrepo import TINY, shoshin_copy

from shoshin.config import load_config
from shoshin.errors import ShoshinError
from shoshin.runs.store import CHECKPOINT_INDEX, create_run, resolve_run, run_kind


def with_checkpoint(run):
    """Mark `run` as having a first checkpoint, as the trainer's index file does."""
    (run.path / CHECKPOINT_INDEX).parent.mkdir(exist_ok=True)
    (run.path / CHECKPOINT_INDEX).write_text('{"latest": "step-0000002"}')
    return run


def test_latest_skips_checks_and_unreadable_runs(tmp_path):
    root = tmp_path / "runs"
    config = load_config("tiny")
    with pytest.raises(ShoshinError, match="no training runs in .* yet"):
        resolve_run("latest", root)

    def started(minute: int, command: list[str], **fields):
        run = create_run(config, root, ["shoshin", *command], extra=fields)
        run.update_manifest(start_time=f"2026-01-01T10:{minute:02d}:00+00:00")
        return run

    first = with_checkpoint(started(1, ["train", "tiny"]))
    tuned = with_checkpoint(started(2, ["finetune"], base_model={"source": "x"}))
    assert resolve_run("latest", root).id == tuned.id and run_kind(tuned.manifest) == "finetune"

    check = started(3, ["reproduce"], reproduction_of=first.id)
    finder = started(4, ["lr-find"], kind="lr-find")
    damaged = started(5, ["train", "tiny"])
    (damaged.path / "manifest.json").write_text("{not json")
    assert [run_kind(r.manifest) for r in (check, finder)] == ["reproduction", "lr-find"]
    assert resolve_run("latest", root).id == tuned.id


def test_latest_skips_runs_without_a_checkpoint_and_says_so(tmp_path, capsys):
    root = tmp_path / "runs"
    config = load_config("tiny")

    def started(minute: int):
        run = create_run(config, root, ["shoshin", "train", "tiny"])
        run.update_manifest(start_time=f"2026-01-01T10:{minute:02d}:00+00:00")
        return run

    failed = started(1)
    failed.finish("failed", ShoshinError("corpus x.txt is empty"))
    failed.release_lock()
    with pytest.raises(ShoshinError, match="no run in .* has a checkpoint yet") as info:
        resolve_run("latest", root)
    assert f"{failed.id} (failed before its first checkpoint: corpus x.txt is empty)" in str(
        info.value
    )
    trained = with_checkpoint(started(2))
    trained.finish("completed")
    newer = started(3)
    newer.finish("failed", ShoshinError("corpus y.txt is empty"))
    running = started(4)  # still holds its lock: training, before its first checkpoint
    capsys.readouterr()
    assert resolve_run("latest", root).id == trained.id
    err = capsys.readouterr().err
    assert err == (
        f"latest is {trained.id}; skipped newer {running.id} (running, no checkpoint yet); "
        f"{newer.id} (failed before its first checkpoint: corpus y.txt is empty)\n"
    )
    assert resolve_run(trained.id, root).id == trained.id and not capsys.readouterr().err
    running.release_lock()


def test_a_failed_run_is_not_what_sample_latest_uses(trained_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained_runs, root)
    newest = sorted(p.name for p in root.iterdir())[-1]
    broken = create_run(load_config("tiny"), root, ["shoshin", "train", "tiny"])
    broken.finish("failed", ShoshinError("killed in a test"))
    broken.release_lock()
    result = run_cli("sample", "latest", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"latest is {newest}; skipped newer {broken.id} (failed before its first checkpoint: "
        "killed in a test)\n"
    )
    listing = run_cli("runs").stdout
    assert listing.rstrip().endswith(
        f"latest = {newest} (the newest train or finetune run with a checkpoint)"
    )


@pytest.mark.parametrize("source", ["missing.txt", "empty-folder"])
def test_data_that_cannot_be_read_makes_no_run_folder(tmp_path, source):
    (tmp_path / "empty-folder").mkdir()
    result = run_cli("train", "tiny", f"data.source={source}", *TINY)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert source in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


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
    assert listing.rstrip().endswith(
        f"latest = {trained} (the newest train or finetune run with a checkpoint)"
    )

    chat = run_cli("chat", "latest", input="/quit\n", env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith(f"chatting with {trained} (gpt, context 32 tokens)")
