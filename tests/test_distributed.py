"""DDP through a real torchrun (gloo on loopback): equivalence with one process, failure, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow

# Tiny and quick; log every step so the loss curves can be compared step by step.
OVERRIDES = [
    "train.max_steps=8",
    "train.grad_accum=2",  # exercises no_sync: gradients all-reduced on the last micro-step only
    "train.log_interval=1",
    "train.eval_interval=4",
    "train.eval_iters=2",
    "train.checkpoint_interval=4",
    "train.sample_tokens=0",
    "train.calibrate=false",
]


def torchrun(*args: str, script: list[str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m shoshin ARGS` (or a script instead of -m shoshin)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += script if script else ["-m", "shoshin"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


def only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if (p / "manifest.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def curves(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    return train, val


def assert_same_curves(a: Path, b: Path) -> None:
    (train_a, val_a), (train_b, val_b) = curves(a), curves(b)
    assert sorted(train_a) == sorted(train_b) == list(range(1, 9))
    assert sorted(val_a) == sorted(val_b) == [4, 8]
    for step in train_a:
        assert train_a[step] == pytest.approx(train_b[step], abs=1e-5), step
    for step in val_a:
        assert val_a[step] == pytest.approx(val_b[step], abs=1e-5), step


def reference_run(tmp_path: Path, corpus: Path) -> Path:
    """One process with batch 8: what two processes with batch 4 must reproduce."""
    root = tmp_path / "runs-single"
    result = run_cli(
        "train", "tiny", f"data.source={corpus}", "train.batch_size=8", *OVERRIDES,
        "--runs-dir", str(root),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return only_run(root)


def test_two_processes_match_one_process_with_double_batch(tmp_path, shakespeare_like):
    single = reference_run(tmp_path, shakespeare_like)

    root = tmp_path / "runs-ddp"
    args = ["train", "tiny", f"data.source={shakespeare_like}", "train.batch_size=4", *OVERRIDES]
    result = torchrun(*args, "--runs-dir", str(root))
    assert result.returncode == 0, result.stderr
    ddp = only_run(root)  # rank 0 alone created the run directory
    manifest = json.loads((ddp / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["world_size"] == 2
    assert manifest["tokens_seen"] == 8 * 2 * 8 * 64  # 2 ranks x 4 rows x 2 micro-steps x 8 steps
    assert result.stdout.count("step 8/8") == 1  # only rank 0 logs
    assert_same_curves(single, ddp)


FAIL_ON_RANK_1 = textwrap.dedent(
    """
    # Runs `shoshin ARGS` but makes rank 1 crash when it starts step 6.
    import os
    import sys

    import shoshin.training.trainer as trainer
    from shoshin.cli import main

    real_lr_at = trainer.lr_at

    def lr_at(step, cfg):
        if step == 5 and os.environ["RANK"] == "1":
            raise RuntimeError("injected failure on rank 1")
        return real_lr_at(step, cfg)

    trainer.lr_at = lr_at
    sys.exit(main(sys.argv[1:]))
    """
)


def test_failure_on_one_rank_marks_run_failed_then_resume_matches(tmp_path, shakespeare_like):
    single = reference_run(tmp_path, shakespeare_like)

    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    root = tmp_path / "runs-ddp"
    args = ["train", "tiny", f"data.source={shakespeare_like}", "train.batch_size=4", *OVERRIDES]
    failed = torchrun(*args, "--runs-dir", str(root), script=[str(script)])
    assert failed.returncode != 0
    assert "injected failure on rank 1" in failed.stderr
    run = only_run(root)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed"  # rank 0 recorded it: not left "running"
    assert manifest["steps"] == 5
    assert json.loads((run / "checkpoints" / "index.json").read_text())["latest"] == "step-0000004"

    resumed = run_cli("train", "--nproc", "2", "--resume", run.name, "--runs-dir", str(root))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run" in resumed.stdout and "at step 4" in resumed.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps"] == 8
    assert_same_curves(single, run)


THREADS_LEFT = textwrap.dedent(
    """
    # Runs `shoshin ARGS`, then fails if a gloo thread outlived the process group.
    import os
    import sys

    from shoshin.cli import main

    status = main(sys.argv[1:])
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    gloo = [n for n in names if "gloo" in n]
    if gloo:
        print(f"rank {os.environ['RANK']}: gloo threads still running: {gloo}", file=sys.stderr)
    sys.exit(status or (3 if gloo else 0))
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_process_group_is_freed_when_training_ends(tmp_path, shakespeare_like):
    """No gloo thread may outlive the job: left to interpreter teardown, they now and then abort
    the process (SIGABRT), and torchrun fails a job that trained correctly."""
    script = tmp_path / "threads_left.py"
    script.write_text(THREADS_LEFT)
    args = ["train", "tiny", f"data.source={shakespeare_like}", "train.batch_size=4", *OVERRIDES]
    result = torchrun(
        *args, "train.max_steps=2", "--runs-dir", str(tmp_path / "runs"), script=[str(script)]
    )
    assert result.returncode == 0, result.stderr


def test_nproc_refused_under_torchrun(tmp_path):
    result = run_cli("train", "--nproc", "2", "tiny", env={"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert result.returncode == 2
    assert "leave --nproc out" in result.stderr
