"""Every run records the code (both git repos, patches, untracked files), data and environment."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from gitrepo import REPO, TINY, make_repo, shoshin_copy

from shoshin.runs.provenance import code_fingerprint, git_state, source_files


def _manifest(runs: Path) -> tuple[Path, dict]:
    (run,) = list(runs.iterdir())
    return run, json.loads((run / "manifest.json").read_text())


@pytest.mark.slow
def test_edits_in_both_repos_and_untracked_files_are_recorded(
    tmp_path, monkeypatch, shakespeare_like
):
    # The user's project: a committed script, then edited; a new file never added to git.
    work = tmp_path / "project"
    work.mkdir()
    (work / "prepare.py").write_text("CUTOFF = 10\n")
    make_repo(work)
    (work / "prepare.py").write_text("CUTOFF = 20  # an uncommitted edit in the project\n")
    (work / "notes.py").write_text("print('untracked helper')\n")
    # shoshin's own source, in its own repository, edited in place as a practitioner would.
    src, env = shoshin_copy(tmp_path / "src")
    optim = src / "shoshin" / "training" / "optim.py"
    optim.write_text(optim.read_text() + "\n# an uncommitted edit in shoshin\n")

    monkeypatch.chdir(work)
    env["SHOSHIN_RUNS_DIR"] = str(work / "runs")  # inside the repo, untracked: left out of the list
    result = run_cli("train", "tiny", f"data.source={shakespeare_like}", *TINY, env=env)
    assert result.returncode == 0, result.stderr
    run, m = _manifest(work / "runs")

    assert m["code"]["shoshin_dir"] == str((src / "shoshin").resolve())
    assert m["git"]["root"] == str(work.resolve()) and m["git"]["dirty"] is True
    assert m["git"]["branch"] == "main" and len(m["git"]["commit"]) == 40
    workdir_patch = (run / m["git"]["patch"]).read_text()
    assert "+CUTOFF = 20  # an uncommitted edit in the project" in workdir_patch
    assert "-CUTOFF = 10" in workdir_patch
    (untracked,) = m["git"]["untracked"]  # the runs folder is not listed
    assert untracked["path"] == "notes.py"
    expected = hashlib.sha256(b"print('untracked helper')\n").hexdigest()
    assert untracked["sha256"] == expected and untracked["saved"]
    assert (run / "code" / "workdir-untracked" / "notes.py").read_text().startswith("print")

    source = m["code"]["shoshin_git"]
    assert source["root"] == str(src.resolve()) and source["dirty"] is True
    shoshin_patch = (run / source["patch"]).read_text()
    assert "+# an uncommitted edit in shoshin" in shoshin_patch
    assert "shoshin/training/optim.py" in shoshin_patch
    files = m["code"]["fingerprint"]["files"]
    assert files["training/optim.py"] == hashlib.sha256(optim.read_bytes()).hexdigest()
    assert m["code"]["fingerprint"]["config_file"]["path"].endswith("presets/tiny.yaml")

    assert m["command"][:3] == ["shoshin", "train", "tiny"]
    assert m["seeds"] == {"train": 1337, "split": 1337}
    assert m["hostname"] and m["start_time"] and m["end_time"]
    env_record = m["environment"]
    assert env_record["packages"]["torch"] and env_record["python"] and env_record["cpu"]
    assert env_record["torch_threads"] == 1 and env_record["gpu_count"] >= 0
    data = m["data"]
    assert len(data["source_sha256"]) == 64 and len(data["tokenizer_sha256"]) == 64
    assert data["split"]["method"] == "contiguous" and len(data["split"]["sha256"]) == 64
    assert data["tokens"]["train"] > data["tokens"]["val"] > 0
    assert data["overlap"]["exact_duplicates"] == 0
    # The synthetic corpus repeats its lines, so its halves share long passages: warned about.
    assert data["overlap"]["shared_shingle_fraction"] > 0.5
    assert f"warning: {data['overlap']['warning']}" in result.stdout


def test_code_fingerprint_without_git(tmp_path):
    copy = tmp_path / "plain" / "shoshin"
    shutil.copytree(REPO / "shoshin", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert git_state(tmp_path / "plain") is None
    hashes = source_files(copy)
    assert "training/trainer.py" in hashes and "presets/tiny.yaml" in hashes
    (copy / "models" / "gpt.py").write_text("# changed\n")
    assert source_files(copy)["models/gpt.py"] != hashes["models/gpt.py"]

    config = tmp_path / "exp.yaml"
    config.write_text("train: {lr: 0.01}\n")
    first = code_fingerprint(config)
    config.write_text("train: {lr: 0.02}\n")
    assert code_fingerprint(config).config_file.sha256 != first.config_file.sha256


@pytest.mark.slow
def test_failed_runs_are_marked_failed_with_their_error(tmp_path, shakespeare_like):
    missing = run_cli("train", "tiny", "data.source=missing.txt", *TINY)
    assert missing.returncode == 2 and "missing.txt does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "runs").exists()  # data that cannot be read makes no run folder
    # An absurd learning rate blows the weights up within a few steps; the NaN guard stops it.
    nan = run_cli(
        "train", "tiny", f"data.source={shakespeare_like}", *TINY, "train.lr=1.0e+30",
        "train.grad_clip=0", "train.warmup_steps=0", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert nan.returncode == 2, nan.stdout + nan.stderr

    (run,) = (tmp_path / "runs").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "training loss became nan" in manifest["error"]
    assert "Traceback" in (run / manifest["traceback"]).read_text()

    listed = run_cli("runs")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith(run.name))
    assert "failed" in line and "training loss became nan" in line


def test_untracked_files_are_listed_but_only_small_source_files_saved(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "train_extra.py").write_text("x = 1\n")
    (repo / "secrets.yaml").write_text("password: hunter2\n")
    (repo / "big.py").write_text("#" * 300_000)
    (repo / "data.bin").write_bytes(b"\0" * 10)
    (repo / "runs").mkdir()
    (repo / "runs" / "ignored.py").write_text("")
    (repo / "pkg" / "runs").mkdir(parents=True)  # a source folder that happens to be named runs
    (repo / "pkg" / "runs" / "store.py").write_text("y = 2\n")
    state = git_state(repo, tmp_path / "run" / "code", "workdir", skip=(repo / "runs",))
    listed = {e.path: e for e in state.untracked}
    assert set(listed) == {
        "train_extra.py",
        "secrets.yaml",
        "big.py",
        "data.bin",
        "pkg/runs/store.py",
    }
    assert all(len(e.sha256) == 64 for e in listed.values())
    saved_dir = tmp_path / "run" / "code" / "workdir-untracked"
    saved = sorted(p.relative_to(saved_dir).as_posix() for p in saved_dir.rglob("*.py"))
    assert saved == ["pkg/runs/store.py", "train_extra.py"] and listed["train_extra.py"].saved
    assert not (saved_dir / "secrets.yaml").exists() and not listed["big.py"].saved
    assert state.dirty is True and state.patch is None  # nothing tracked was changed
