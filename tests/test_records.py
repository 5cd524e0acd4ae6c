"""The typed run record: damaged manifests among good runs, older manifests, damaged metrics."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from shoshin.cli import main
from shoshin.runs.store import Run
from shoshin.storage.manifest import (
    DamagedRecord,
    Manifest,
    manifest_to_dict,
    read_manifest,
    read_metrics,
)

# What a damaged manifest.json can hold, and the reason `shoshin runs` gives for each.
DAMAGED = {
    "not-json": ("{status: running", "is not valid JSON"),
    "list": ("[]", "holds a list, not a JSON object"),
    "string": ('"a string"', "holds a string, not a JSON object"),
    "null": ("null", "holds null, not a JSON object"),
    "wrong-types": ('{"status": 5, "start_time": 7}', "status should be a valid string, got 5"),
}


@pytest.fixture
def runs_with_damage(tmp_path, trained_runs):
    """The two good session runs plus one run per kind of damage, each newer than the good ones."""
    root = tmp_path / "runs"
    shutil.copytree(trained_runs, root)
    good = sorted(p.name for p in root.iterdir())
    for i, (name, (content, _)) in enumerate(DAMAGED.items()):
        broken = root / f"29990101-00000{i}-{name}-0000"
        shutil.copytree(root / good[0], broken)  # config and checkpoints fine; manifest damaged
        (broken / "manifest.json").write_text(content)
    return root, good


def test_runs_show_sample_compare_work_on_the_good_runs_among_damaged_ones(runs_with_damage):
    root, good = runs_with_damage
    listed = run_cli("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    by_id = {r["id"]: r for r in json.loads(listed.stdout)}
    assert [by_id[g]["status"] for g in good] == ["completed", "completed"]
    for i, (name, (_, reason)) in enumerate(DAMAGED.items()):
        row = by_id[f"29990101-00000{i}-{name}-0000"]
        assert row["status"] == "broken" and reason in row["error"], row
    table = run_cli("runs").stdout
    assert table.count(" broken ") == len(DAMAGED) and "holds a list" in table

    # `latest` is the newest run that can be read: the damaged ones are newer, and skipped.
    shown = run_cli("show", "latest")
    assert shown.returncode == 0 and f"run       {good[1]}" in shown.stdout, shown.stderr
    sample = run_cli("sample", "latest", "--prompt", "thou", "--max-new-tokens", "3")
    assert sample.returncode == 0, sample.stderr
    compared = run_cli("compare", *good, "--json")
    assert compared.returncode == 0 and json.loads(compared.stdout)["runs"] == good


@pytest.mark.parametrize("damage", DAMAGED)
@pytest.mark.parametrize(
    "command",
    [
        ["show", "{run}"],
        ["sample", "{run}", "--prompt", "hi"],
        ["compare", "{good}", "{run}"],
        ["train", "--resume", "{run}"],
        ["reproduce", "{run}"],
        ["export", "{run}", "--out", "exported"],
    ],
    ids=lambda c: c[0],
)
def test_a_command_naming_a_damaged_run_says_why_in_one_line(
    runs_with_damage, damage, command, capsys
):
    root, good = runs_with_damage
    run = next(p.name for p in root.iterdir() if f"-{damage}-" in p.name)
    status = main([arg.format(run=run, good=good[0]) for arg in command])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = err.splitlines()
    assert (
        line.startswith(f"error: run {run} is broken: manifest.json") and DAMAGED[damage][1] in line
    )


def test_an_older_manifest_reads_with_defaults_and_keeps_keys_it_does_not_know(tmp_path):
    run = tmp_path / "runs" / "20240101-000000-old-0000"
    run.mkdir(parents=True)
    old = {"id": run.name, "status": "completed", "steps": 7, "from_the_future": {"x": 1}}
    (run / "manifest.json").write_text(json.dumps(old))
    manifest = read_manifest(run)
    assert (manifest.steps, manifest.kind, manifest.estimate, manifest.resumed) == (
        7,
        "train",
        None,
        [],
    )
    Run(run).update_manifest(best_val_loss=1.5)
    on_disk = json.loads((run / "manifest.json").read_text())
    assert on_disk["from_the_future"] == {"x": 1} and on_disk["best_val_loss"] == 1.5


def test_a_manifest_shoshin_writes_reads_back_whole(trained_runs):
    """Every key training writes has its typed field: reading and writing loses nothing."""
    for run in trained_runs.iterdir():
        raw = json.loads((run / "manifest.json").read_text())
        manifest = read_manifest(run)
        assert manifest.extra == {}, f"keys without a field in Manifest: {sorted(manifest.extra)}"
        assert manifest_to_dict(manifest) == raw
        assert manifest.estimate is not None and manifest.data is not None


def test_a_writer_cannot_store_a_wrong_type(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(manifest_to_dict(Manifest(id="r"))))
    with pytest.raises(TypeError, match="steps"):
        Run(run).update_manifest(steps="many")
    with pytest.raises(TypeError, match="not manifest fields: stepz"):
        Run(run).update_manifest(stepz=3)
    assert read_manifest(run).steps == 0  # nothing written


def test_a_missing_or_unreadable_manifest_is_damage(tmp_path):
    with pytest.raises(DamagedRecord, match="manifest.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(DamagedRecord, match="is not valid JSON"):
        read_manifest(tmp_path)


def test_metrics_history_ends_at_the_first_damaged_row(tmp_path):
    rows = [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5, "val_loss": 1.7}]
    lines = [json.dumps(r) for r in rows]
    for damage in (
        '{"step": 3, "train_loss": 1.4',
        "[3, 1.4]",
        '{"step": "3"}',
        '{"step": 3, "lr": "x"}',
    ):
        (tmp_path / "metrics.jsonl").write_text("\n".join([*lines, damage, lines[0]]) + "\n")
        assert read_metrics(tmp_path) == rows, damage
