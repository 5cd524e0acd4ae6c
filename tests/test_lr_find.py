"""`shoshin lr-find`: the range-test mechanics, and a real range test recorded as a run."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from shoshin.experiments.lr_find import lr_range, smooth, smoothing_for, suggest


def test_lr_range_is_geometric_between_the_ends():
    lrs = lr_range(1e-7, 1.0, 8)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0)
    ratios = {round(b / a, 9) for a, b in zip(lrs, lrs[1:], strict=False)}
    assert len(ratios) == 1  # the same factor every step


def test_smoothing_is_bias_corrected():
    assert smooth([2.0] * 5, 0.98) == pytest.approx([2.0] * 5)  # no pull towards 0 at the start
    noisy = smooth([3.0, 1.0] * 50, smoothing_for(100))
    assert max(noisy[-10:]) - min(noisy[-10:]) < 0.2  # from a swing of 2.0


def test_suggestion_is_a_tenth_of_the_minimum():
    lrs = lr_range(1e-6, 1.0, 61)
    # A bowl in log(lr) with its bottom at 1e-2.
    curve = [2 + (math.log10(lr) + 2) ** 2 for lr in lrs]
    lr, rule, steepest = suggest(lrs, curve)
    assert lr == pytest.approx(1e-3, rel=0.05)
    assert "divided by 10" in rule
    assert steepest < 1e-2


@pytest.mark.slow
def test_lr_find_cli_records_a_run_with_plot(tmp_path, shakespeare_like):
    result = run_cli(
        "lr-find", "tiny", f"data.source={shakespeare_like}", "model.block_size=32",
        "--steps", "40", "--start-lr", "1e-5", "--end-lr", "30",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "suggested learning rate:" in result.stdout and "divided by 10" in result.stdout
    (run,) = (tmp_path / "runs").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "lr-find" and manifest["status"] == "completed"
    found = manifest["lr_find"]
    assert 1e-5 <= found["suggested_lr"] <= 3.0
    # An lr of 30 blows a small model up: the test stopped early, on divergence.
    assert found["diverged_at_lr"] is not None and manifest["steps"] < 40
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == manifest["steps"] and all("smoothed_loss" in r for r in rows)
    assert (run / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = json.loads(run_cli("runs", "--json").stdout)
    assert listed[0]["id"] == run.name  # a run like any other


def test_lr_find_bad_range_is_one_line_error(shakespeare_like):
    result = run_cli("lr-find", "tiny", "--start-lr", "1", "--end-lr", "0.1")
    assert result.returncode == 2 and "--start-lr" in result.stderr
    assert "Traceback" not in result.stderr
