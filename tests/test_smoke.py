"""`shoshin train tiny` writes a complete run directory; runs, show and sample work on it."""

import json

from conftest import run_cli


def test_train_tiny_then_runs_show_sample(tmp_path):
    result = run_cli("train", "tiny", "train.calibrate=false")
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    for name in (
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "char_tokenizer.json",
        "checkpoints/index.json",
    ):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["steps"] == 50

    listed = json.loads(run_cli("runs", "--json").stdout)
    assert [r["id"] for r in listed] == [run.name]
    assert listed[0]["best_val_loss"] < 4.6  # below the uniform baseline ln(97)

    shown = run_cli("show", run.name[:10])
    assert shown.returncode == 0 and run.name in shown.stdout

    sample = run_cli("sample", run.name, "--prompt", "hi", "--max-new-tokens", "20", "--seed", "3")
    again = run_cli("sample", run.name, "--prompt", "hi", "--max-new-tokens", "20", "--seed", "3")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout == again.stdout
