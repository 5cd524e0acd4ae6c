"""`shoshin reproduce`: an unchanged run reproduces bitwise; changed data refuses; changed code diverges."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from gitrepo import THREADS, TINY, shoshin_copy

from shoshin.errors import ShoshinError
from shoshin.experiments.reproduce import compare_histories


def _only_run(tmp_path) -> str:
    (run,) = [p.name for p in (tmp_path / "runs").iterdir()]
    return run


@pytest.mark.slow
def test_unchanged_run_reproduces_and_changed_data_refuses(tmp_path, shakespeare_like):
    _, env = shoshin_copy(tmp_path / "src", with_git=False)
    result = run_cli("train", "tiny", f"data.source={shakespeare_like}", *TINY, env=env)
    assert result.returncode == 0, result.stderr
    original = _only_run(tmp_path)

    result = run_cli("reproduce", original, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REPRODUCED: 12 steps, max |Δ loss| = 0\n" in result.stdout
    (rerun,) = [p for p in (tmp_path / "runs").iterdir() if p.name != original]
    manifest = json.loads((rerun / "manifest.json").read_text())
    assert manifest["reproduction_of"] == original
    assert manifest["reproduction"]["reproduced"] is True
    recorded = json.loads((tmp_path / "runs" / original / "manifest.json").read_text())
    assert recorded["reproductions"][0]["run"] == rerun.name

    with open(shakespeare_like, "a") as f:
        f.write("a line added after the run\n")
    result = run_cli("reproduce", original, "--steps", "3", env=env)
    assert result.returncode == 2
    assert "differs: data fingerprint" in result.stdout and "--force" in result.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 2  # refused before creating a run


@pytest.mark.slow
def test_changed_learning_rate_in_code_diverges(tmp_path, shakespeare_like):
    src, env = shoshin_copy(tmp_path / "src", with_git=False)
    result = run_cli("train", "tiny", f"data.source={shakespeare_like}", *TINY, env=env)
    assert result.returncode == 0, result.stderr
    original = _only_run(tmp_path)
    optim = src / "shoshin" / "training" / "optim.py"
    optim.write_text(
        optim.read_text()
        + "\n\n_recorded_lr_at = lr_at\n\n\ndef lr_at(step, cfg):  # a code change: twice the LR\n"
        "    return 2 * _recorded_lr_at(step, cfg)\n"
    )

    # Without --force this refuses (as the data case above shows); the listing is the same.
    forced = run_cli("reproduce", original, "--steps", "4", "--force", env=env)
    assert "differs: code fingerprint: shoshin source files differ: training/optim.py" in (
        forced.stdout
    )
    # Step 1's loss comes from the initial weights; the first update with the new LR shows at step 2.
    assert forced.returncode == 1, forced.stdout + forced.stderr
    assert "DIVERGED at step 2: recorded " in forced.stdout


@pytest.mark.slow
def test_probe_reports_determinism(tmp_path):
    result = run_cli("reproduce", "--probe", "tiny", *TINY, "--steps", "4", env=THREADS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DETERMINISTIC: two runs of 4 steps" in result.stdout
    assert not (tmp_path / "runs").exists()  # probe runs are scratch


def test_compare_histories():
    recorded = [
        {"step": 1, "train_loss": 4.0},
        {"step": 2, "train_loss": 3.5, "val_loss": 3.6},
        {"step": 3, "train_loss": 3.0},
    ]
    same = compare_histories(recorded, [dict(r) for r in recorded], 3, 0.0)
    assert same.ok and same.max_delta == 0 and same.compared == 4
    assert same.line() == "REPRODUCED: 3 steps, max |Δ loss| = 0"
    changed = [dict(r) for r in recorded]
    changed[1]["val_loss"] = 3.7
    verdict = compare_histories(recorded, changed, 3, 1e-6)
    assert not verdict.ok and (verdict.diverged_at, verdict.key) == (2, "val_loss")
    assert verdict.line() == "DIVERGED at step 2: recorded 3.600000, now 3.700000 (val_loss)"
    changed[1]["val_loss"] = float("nan")
    assert compare_histories(recorded, changed, 3, 1.0).diverged_at == 2
    assert compare_histories(recorded, changed, 1, 0.0).ok  # only step 1 compared
    with pytest.raises(ShoshinError):
        compare_histories(recorded, [{"step": 7, "train_loss": 1.0}], 3, 0.0)
