"""The time budget (train.max_minutes): a run it stops says so, and `train --resume RUN` with a new
budget continues it exactly, on the learning-rate schedule it started with."""

from __future__ import annotations

import json
import time

import pytest
from conftest import run_cli

from shoshin.cli import main
from shoshin.config import load_config
from shoshin.training.optim import lr_at
from shoshin.training.progress_bar import Progress

QUICK = ["train.sample_tokens=0", "train.calibrate=false", "train.eval_iters=2"]
QUICK += ["train.log_interval=1", "train.eval_interval=0", "train.checkpoint_interval=0"]


def _rows(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [
        {k: r.get(k) for k in ("step", "train_loss", "lr")}
        for r in map(json.loads, lines)
        if "train_loss" in r
    ]


def _stopped_on_budget(runs) -> tuple[object, int, list[str]]:
    """A run that its 0.6 s budget stops long before its 5000 steps: its folder, step, output."""
    stopped = run_cli(
        "train",
        "tiny",
        "train.max_steps=5000",
        "train.max_minutes=0.01",
        *QUICK,
        env={"SHOSHIN_RUNS_DIR": str(runs)},
    )
    assert stopped.returncode == 0, stopped.stderr
    run = next(runs.iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stopped_on_budget"] and 0 < manifest["steps"] < 5000
    return run, manifest["steps"], stopped.stdout.strip().splitlines()


def test_a_budget_stop_says_so_and_resume_takes_only_a_new_budget(tmp_path, capsys):
    run, step, output = _stopped_on_budget(tmp_path / "runs")
    last = output[-2:]
    assert last[0].startswith(
        f"stopped on the time budget (train.max_minutes=0.01) after {step} of 5000 planned steps"
    )
    assert last[1].startswith(f"continue it with: shoshin train --resume {run.name}")
    capsys.readouterr()
    assert main(["show", run.name]) == 0
    shown = capsys.readouterr().out
    assert f"budget    {last[0]}" in shown and f"budget    {last[1]}" in shown
    assert main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)[0]
    assert listed["stopped_on_budget"] and listed["planned_steps"] == 5000
    assert main(["runs"]) == 0
    assert f"{step}/5000 (budget)" in capsys.readouterr().out

    # Every other key is still refused on resume; a max_steps behind the run too.
    before = (run / "manifest.json").read_bytes()
    assert main(["train", "--resume", run.name, "train.max_steps=90", "model.n_layer=3"]) == 2
    assert "only train.max_steps and train.max_minutes may change" in capsys.readouterr().err
    if step > 1:  # a very busy machine may have done only one step in the budget
        assert main(["train", "--resume", run.name, f"train.max_steps={step - 1}"]) == 2
        assert f"before the run's step {step}" in capsys.readouterr().err
    assert (run / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_a_new_budget_continues_exactly_on_the_schedule_the_run_started_on(tmp_path):
    run, step, _ = _stopped_on_budget(tmp_path / "runs")
    end = step + 10
    resumed = run_cli(
        "train",
        "--resume",
        run.name,
        f"train.max_steps={end}",
        "train.max_minutes=0",
        env={"SHOSHIN_RUNS_DIR": str(tmp_path / "runs")},
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "stopped on the time budget" not in resumed.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"] == end and not manifest["stopped_on_budget"]
    assert manifest["resumed"][-1]["changes"] == {
        "train.max_steps": [5000, end],
        "train.max_minutes": [0.01, 0.0],
        "train.lr_decay_steps": [0, 5000],  # the schedule the run started on, kept
    }
    # The same steps as a run that went straight to `end` on the 5000-step schedule (in a
    # process like the others: the same thread count).
    args = ["train", "tiny", f"train.max_steps={end}", "train.lr_decay_steps=5000", *QUICK]
    straight = run_cli(*args, env={"SHOSHIN_RUNS_DIR": str(tmp_path / "straight")})
    assert straight.returncode == 0, straight.stderr
    assert _rows(run) == _rows(next((tmp_path / "straight").iterdir()))


def test_the_schedule_holds_min_lr_past_its_decay_end():
    config = load_config("tiny", ["train.max_steps=200", "train.lr_decay_steps=100"])
    tc = config.train
    assert lr_at(99, tc) > tc.min_lr
    assert lr_at(100, tc) == lr_at(150, tc) == tc.min_lr
    unchanged = load_config("tiny", ["train.max_steps=100"]).train
    assert [lr_at(s, unchanged) for s in range(100)] == [lr_at(s, tc) for s in range(100)]


def test_the_eta_says_when_the_time_budget_comes_first():
    progress = Progress(max_steps=1000, step=0, log=lambda msg: None, show_bar=False)
    # 100 of 1000 steps in 60 s: 15 more minutes to go
    assert progress._eta(900.0) == "eta 15.0 min"
    progress.deadline = time.monotonic() + 120
    assert progress._eta(900.0).startswith("eta 2.0 min (time budget; all steps need 15.0)")
    progress.deadline = time.monotonic() + 3600
    assert progress._eta(900.0) == "eta 15.0 min"
    progress.close()
