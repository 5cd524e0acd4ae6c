"""`shoshin bench matrix`: a 2 x 2 grid at a tiny budget, and an interrupted matrix resuming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CTRL_C_IN_SECOND_RUN, run_cli

pytestmark = pytest.mark.slow

LSTM_YAML = "model: {arch: lstm, n_layer: 1, n_embd: 32}\ndata: {tokenizer: char}\n"


def grid(tmp_path: Path, corpus: Path, steps: int, chat_too: bool = True) -> list[str]:
    """A 2 x 2 matrix command: tiny GPT and a small LSTM, on a text file and a chat file."""
    (tmp_path / "lstm.yaml").write_text(LSTM_YAML)
    chat = tmp_path / "chat.jsonl"
    lines = corpus.read_text().splitlines()
    chat.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": lines[i]},
                                     {"role": "assistant", "content": lines[i + 1]}]}) + "\n"
            for i in range(0, 400, 2)
        )
    )  # fmt: skip
    return [
        "bench", "matrix", "--arch", "tiny", "--arch", str(tmp_path / "lstm.yaml"),
        "--data", f"{corpus},{chat}" if chat_too else str(corpus), "--steps", str(steps), "--out", str(tmp_path / "matrix"),
        "model.block_size=32", "train.batch_size=4", "train.eval_iters=2",
        "train.log_interval=1", "train.checkpoint_interval=2", "train.calibrate=false",
    ]  # fmt: skip


def runs_by_cell(root: Path) -> dict[str, list[dict]]:
    cells: dict[str, list[dict]] = {}
    for path in root.iterdir():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:  # a run being created right now
            continue
        cells.setdefault(manifest["matrix"]["cell"], []).append(manifest)
    return cells


def test_two_by_two_matrix_writes_leaderboard_json_and_heatmap(tmp_path, shakespeare_like):
    result = run_cli(*grid(tmp_path, shakespeare_like, steps=3))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "matrix"
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board["cells"]) == 4 and board["budget"] == "3 steps"
    for cell in board["cells"]:
        assert cell["status"] == "completed" and cell["steps"] == 3
        assert cell["val_loss"] > 0 and cell["bits_per_unit"] > 0 and cell["unit"] == "char"
        assert cell["tokens_per_sec"] > 0 and cell["params"] > 0
    markdown = (out / "leaderboard.md").read_text()
    assert markdown.count("| 1 | ") == 2  # one ranking per dataset
    assert "lstm.yaml" in markdown and "tiny" in markdown
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each cell is an ordinary run: compare-able, listed, and with the command to re-run it.
    cells = runs_by_cell(tmp_path / "runs")
    assert len(cells) == 4 and all(len(runs) == 1 for runs in cells.values())
    assert all(runs[0]["command"][:2] == ["shoshin", "train"] for runs in cells.values())

    again = run_cli(*grid(tmp_path, shakespeare_like, steps=3))  # nothing left to do
    assert again.returncode == 0 and again.stdout.count("done already") == 4
    assert len(list((tmp_path / "runs").iterdir())) == 4


def test_interrupted_matrix_resumes_without_redoing_finished_cells(tmp_path, shakespeare_like):
    args = grid(tmp_path, shakespeare_like, steps=12, chat_too=False)  # 2 x 1 is enough here
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_IN_SECOND_RUN)
    interrupted = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert interrupted.returncode == 130, interrupted.stderr
    runs = tmp_path / "runs"
    before = [m for ms in runs_by_cell(runs).values() for m in ms]
    (done,) = [m for m in before if m["status"] == "completed"]
    (cut,) = [m for m in before if m["status"] == "interrupted"]
    assert len(before) == 2 and cut["steps"] == 5
    first, second = done["matrix"]["cell"], cut["matrix"]["cell"]

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "done already" in resumed.stdout and f"resuming run {cut['id']}" in resumed.stdout
    after = runs_by_cell(runs)
    (again,) = after[first]  # the finished cell was not trained a second time
    assert again["id"] == done["id"] and again["end_time"] == done["end_time"]
    (finished,) = after[second]  # the interrupted cell continued in its own run
    assert finished["id"] == cut["id"] and finished["status"] == "completed"
    board = json.loads((tmp_path / "matrix" / "leaderboard.json").read_text())
    assert [c["run"] for c in board["cells"]] == [done["id"], cut["id"]]
    assert all(c["status"] == "completed" and c["steps"] == 12 for c in board["cells"])


def test_seeded_matrix_shows_spread_and_ties_with_the_leader(tmp_path, shakespeare_like):
    """Two architectures with the same config and seeds train the same runs (p = 1: tied); one
    whose learning rate is 1e-6 cannot learn in 30 steps and is not tied."""
    same = run_cli("config", "tiny")
    (tmp_path / "same.yaml").write_text(same.stdout)
    (tmp_path / "broken.yaml").write_text(same.stdout.replace("lr: 0.003", "lr: 1.0e-06"))
    assert "lr: 1.0e-06" in (tmp_path / "broken.yaml").read_text()
    result = run_cli(
        "bench", "matrix", "--arch", f"tiny,{tmp_path / 'same.yaml'},{tmp_path / 'broken.yaml'}",
        "--data", str(shakespeare_like), "--steps", "30", "--seeds", "3",
        "--out", str(tmp_path / "matrix"), "model.block_size=32", "train.batch_size=4",
        "train.eval_iters=2", "train.checkpoint_interval=0", "train.calibrate=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    board = json.loads((tmp_path / "matrix" / "leaderboard.json").read_text())
    cells = {Path(c["arch"]).stem: c for c in board["cells"]}
    assert all(c["seeds"] == 3 and len(c["val_losses"]) == 3 for c in cells.values())
    assert cells["tiny"]["val_losses"] == cells["same"]["val_losses"]
    leader = min(cells.values(), key=lambda c: c["val_loss"])
    other = cells["same"] if leader is cells["tiny"] else cells["tiny"]
    assert other["tied_with_leader"] and other["p_vs_leader"] == 1.0
    assert not cells["broken"]["tied_with_leader"] and cells["broken"]["p_vs_leader"] < 0.01
    markdown = (tmp_path / "matrix" / "leaderboard.md").read_text()
    assert "| 2 (tied, p = 1.00) |" in markdown and " ± " in markdown
    assert "| 3 | " in markdown and "g-matrix-" in markdown  # each cell's runs are a group
