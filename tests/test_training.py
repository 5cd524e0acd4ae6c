"""Training: every architecture learns, resume is exact after SIGKILL, Ctrl-C and NaN are handled."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from shoshin.config import load_config
from shoshin.runs.store import Run
from shoshin.training.trainer import train


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _only_run(tmp_path) -> Path:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize(
    "arch, shape",
    [
        ("gpt", []),
        ("lstm", []),
        # grouped-query attention and QK-norm
        ("llama", ["model.bias=false", "model.n_kv_head=1", "model.qk_norm=true"]),
    ],
)
def test_every_architecture_learns(arch, shape, shakespeare_like, tmp_path):
    config = load_config(
        "tiny",
        [
            f"model.arch={arch}",
            *shape,
            f"data.source={shakespeare_like}",
            "train.max_steps=120",
            "train.eval_interval=120",
            "train.lr=1e-2",
            "train.sample_tokens=0",
            "train.calibrate=false",
        ],
    )
    run = train(config, tmp_path / "runs", log=lambda _: None)
    vocab = config.model.vocab_size
    final = run.manifest.final_val_loss
    assert final < 0.75 * math.log(vocab), (final, math.log(vocab))  # uniform guessing: ln(vocab)


def test_chat_assistant_only_loss_masks_user_tokens(tmp_path):
    from shoshin.data.chat import render_chat
    from shoshin.data.tokenizers import CHAT_TOKENS, EOT, CharTokenizer

    tok = CharTokenizer(sorted(set("hi there")), [EOT, *CHAT_TOKENS])
    ids, mask = render_chat(
        tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    )
    assert tok.decode(ids) == "<|user|>hi<|end|><|assistant|>there<|end|>"
    assert mask == [0, 0, 0, 0] + [0] + [1] * 5 + [1]


TRAIN_ARGS = [
    "train",
    "tiny",
    "train.max_steps=60",
    "train.checkpoint_interval=20",
    "train.eval_interval=30",
    "train.log_interval=1",
    "train.sample_tokens=0",
    "train.calibrate=false",
    "model.dropout=0.1",  # resume must restore the dropout RNG too
]


def _env(runs: Path) -> dict:
    return {**os.environ, "SHOSHIN_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_resume_after_sigkill_logs_the_same_losses(tmp_path):
    straight = subprocess.run(
        [sys.executable, "-m", "shoshin", *TRAIN_ARGS],
        env=_env(tmp_path / "a"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr
    reference = _metrics(next((tmp_path / "a").iterdir()))

    proc = subprocess.Popen(
        [sys.executable, "-m", "shoshin", *TRAIN_ARGS, "train.max_minutes=0"],
        env=_env(tmp_path / "b"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill it hard once it is past the checkpoint at step 20 but before it finishes.
    deadline = time.monotonic() + 120
    run = None
    while time.monotonic() < deadline:
        runs = list((tmp_path / "b").glob("*/metrics.jsonl")) if (tmp_path / "b").exists() else []
        if runs:
            run = runs[0].parent
            steps = [r["step"] for r in _metrics(run)] if runs[0].stat().st_size else []
            if steps and steps[-1] >= 25:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run is not None
    assert _metrics(run)[-1]["step"] < 60, "the run finished before it could be killed"
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    listed = json.loads(
        run_cli("runs", "--json", env={"SHOSHIN_RUNS_DIR": str(tmp_path / "b")}).stdout
    )
    assert listed[0]["status"] == "died"

    resumed = subprocess.run(
        [sys.executable, "-m", "shoshin", "train", "--resume", run.name],
        env=_env(tmp_path / "b"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    again = _metrics(run)
    keys = ("step", "train_loss", "val_loss", "lr")
    assert [{k: r.get(k) for k in keys} for r in again] == [
        {k: r.get(k) for k in keys} for r in reference
    ]
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_marks_interrupted(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoshin",
            *TRAIN_ARGS,
            "train.max_steps=100000",
            "train.checkpoint_interval=0",
        ],
        env=_env(tmp_path / "runs"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if metrics and metrics[0].stat().st_size > 0 and len(_metrics(metrics[0].parent)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = _only_run(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{manifest['steps']:07d}"


def test_ctrl_c_mid_step_before_the_first_checkpoint_resumes_from_the_start(
    tmp_path, shakespeare_like
):
    """An interrupt after the optimizer step keeps the previous checkpoint; before the first
    periodic one, that is the starting state every new run saves (step 0)."""
    from shoshin.runs.store import create_run
    from shoshin.training.trainer import Trainer, resume

    overrides = ["train.max_steps=8", "train.checkpoint_interval=0", "train.eval_interval=4"]
    overrides += ["train.eval_iters=1", "train.log_interval=1", "train.sample_tokens=0"]
    overrides += ["train.calibrate=false", "model.dropout=0.1", f"data.source={shakespeare_like}"]
    config = load_config("tiny", overrides)
    straight = train(config, tmp_path / "a", log=lambda _: None).metrics()

    run = create_run(config, tmp_path / "b")
    trainer = Trainer(config, run, log=lambda _: None)
    append = run.append_metrics

    def interrupted_at_step_3(row):  # Ctrl-C after step 3's optimizer step, as it is recorded
        if row["step"] == 3:
            raise KeyboardInterrupt
        append(row)

    run.append_metrics = interrupted_at_step_3
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert run.manifest.status == "interrupted" and run.manifest.steps == 0
    index = json.loads((run.path / "checkpoints" / "index.json").read_text())
    assert index["latest"] == "step-0000000"

    run.release_lock()  # as the interrupted process's end would
    resume(Run(run.path), log=lambda _: None)
    keys = ("step", "train_loss", "val_loss", "lr")
    again = Run(run.path).metrics()
    assert [{k: r.get(k) for k in keys} for r in again] == [
        {k: r.get(k) for k in keys} for r in straight
    ]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from shoshin.errors import ShoshinError
    from shoshin.runs.store import create_run
    from shoshin.training.trainer import Trainer

    config = load_config(
        "tiny",
        [
            "train.max_steps=30",
            "train.checkpoint_interval=10",
            "train.eval_interval=0",
            "train.calibrate=false",
        ],
    )
    run = create_run(config, tmp_path / "runs")
    trainer = Trainer(config, run, log=lambda _: None)
    healthy = trainer.train_step.forward

    def diverging(idx, targets=None):  # a model whose loss blows up from step 16 on
        loss = healthy(idx, targets)
        return loss * float("inf") if trainer.step >= 15 else loss

    trainer.train_step.forward = diverging
    with pytest.raises(ShoshinError, match="training loss became inf at step 16"):
        trainer.fit()
    manifest = run.manifest
    assert manifest.status == "failed" and "training loss became inf" in manifest.error
    index = json.loads((run.path / "checkpoints" / "index.json").read_text())
    assert index["latest"] == "step-0000010"
    listed = run_cli("runs")
    assert "failed" in listed.stdout


def test_time_budget_stops_and_checkpoints(tmp_path):
    config = load_config(
        "tiny",
        [
            "train.max_steps=100000",
            "train.max_minutes=0.05",
            "train.sample_tokens=0",
            "train.calibrate=false",
        ],
    )
    run = train(config, tmp_path / "runs", log=lambda _: None)
    manifest = run.manifest
    assert manifest.status == "completed"
    assert 0 < manifest.steps < 100000
    rows = run.metrics()
    assert rows[-1]["step"] == manifest.steps and "val_loss" in rows[-1]
    index = json.loads((run.path / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{manifest.steps:07d}"


def test_tokenized_data_is_cached(tmp_path, shakespeare_like, monkeypatch):
    from shoshin.config import DataConfig
    from shoshin.data.dataset import prepare_data

    monkeypatch.setenv("SHOSHIN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = DataConfig(source=str(shakespeare_like), tokenizer="bpe", vocab_size=300)
    messages = []
    first = prepare_data(cfg, log=messages.append)
    second = prepare_data(cfg, log=messages.append)
    assert len(messages) == 1  # tokenized once
    assert first.fingerprint == second.fingerprint
    assert (first.train.tokens == second.train.tokens).all()
    text = shakespeare_like.read_text()
    assert first.tokenizer.decode(first.tokenizer.encode(text[:500])) == text[:500]
    cfg.val_fraction = 0.2
    assert prepare_data(cfg, log=messages.append).fingerprint != first.fingerprint
