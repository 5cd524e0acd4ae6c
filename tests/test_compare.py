"""`shoshin compare` shows exactly what differs: a config key, or a code edit with its diff."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from gitrepo import TINY, shoshin_copy

from shoshin.errors import ShoshinError
from shoshin.runs.compare import compare_runs
from shoshin.runs.compare_view import format_compare
from shoshin.runs.store import Run


def _runs(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_config_difference_is_exactly_that_key(tmp_path, shakespeare_like):
    _, env = shoshin_copy(tmp_path / "src", with_git=False)  # code that nobody edits meanwhile
    data = f"data.source={shakespeare_like}"
    for lr in ("3.0e-3", "1.0e-3"):
        result = run_cli("train", "tiny", data, *TINY, f"train.lr={lr}", env=env)
        assert result.returncode == 0, result.stderr
    a, b = _runs(tmp_path)

    result = run_cli("compare", a, b, "--json", "--plot", "curves.png")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"] == {"train.lr": [0.003, 0.001]}
    assert report["data"] == {} and report["environment"] == {} and report["packages"] == {}
    assert report["code"]["fingerprint_differs"] is False and report["code"]["diffs"] == []
    first, second = report["metrics"]
    assert first["steps"] == second["steps"] == 12
    assert second["delta_final_val_loss"] == pytest.approx(
        second["final_val_loss"] - first["final_val_loss"]
    )
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = format_compare(compare_runs([Run(tmp_path / "runs" / a), Run(tmp_path / "runs" / b)]))
    config_block = text.split("config (keys that differ):\n")[1].split("\n\n")[0]
    assert [line.split()[0] for line in config_block.splitlines()] == ["key", "train.lr"]
    assert "code (fingerprints identical)" in text and "data: identical" in text


@pytest.mark.slow
def test_code_edit_is_reported_with_its_diff(tmp_path, shakespeare_like):
    src, env = shoshin_copy(tmp_path / "src")
    args = ["train", "tiny", f"data.source={shakespeare_like}", *TINY]
    assert run_cli(*args, env=env).returncode == 0
    optim = src / "shoshin" / "training" / "optim.py"
    optim.write_text(optim.read_text() + "\nEXPERIMENT = 'warmup tweak'  # the edit under test\n")
    assert run_cli(*args, env=env).returncode == 0
    a, b = _runs(tmp_path)

    report = json.loads(run_cli("compare", a, b, "--json", env=env).stdout)
    assert report["config"] == {}
    code = report["code"]
    assert code["fingerprint_differs"] is True
    assert code["changed_source_files"] == {b: ["training/optim.py"]}
    (diff,) = code["diffs"]
    assert diff["repo"] == "shoshin" and (diff["from"], diff["to"]) == (a, b)
    added = [
        line for line in diff["diff"].splitlines() if line.startswith("+") and "+++" not in line
    ]
    assert added == ["+", "+EXPERIMENT = 'warmup tweak'  # the edit under test"]
    assert "shoshin/training/optim.py" in diff["diff"]
    states = [r["shoshin_git"] for r in code["runs"]]
    assert states[0]["dirty"] is False and states[1]["dirty"] is True
    assert states[0]["commit"] == states[1]["commit"]

    text = format_compare(compare_runs([Run(tmp_path / "runs" / a), Run(tmp_path / "runs" / b)]))
    assert "code (fingerprints differ)" in text
    assert "+EXPERIMENT = 'warmup tweak'  # the edit under test" in text
    assert "(dirty)" in text


def test_compare_needs_two_different_runs(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"id": "r1"}')
    with pytest.raises(ShoshinError, match="at least two runs"):
        compare_runs([Run(run)])
    with pytest.raises(ShoshinError, match="named twice"):
        compare_runs([Run(run), Run(run)])
