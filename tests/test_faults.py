"""Fault injection: what happens to a run when its process is killed, doubled, starved of disk or
stopped by a signal. Every test uses the real CLI in a subprocess and asserts the guarantees: a
one-line error (never a traceback), nothing lost or damaged, and a resume that continues exactly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from shoshin.config import load_config
from shoshin.data.tokenizers import load_tokenizer
from shoshin.runs.lock import is_locked
from shoshin.runs.store import effective_status
from shoshin.storage.manifest import read_manifest
from shoshin.training.runner import train

QUICK = [
    "train.sample_tokens=0",
    "train.calibrate=false",
    "train.log_interval=5",
    "train.eval_interval=50",
    "train.eval_iters=2",
]


def _env(runs: Path, **extra: str) -> dict:
    return {**os.environ, "SHOSHIN_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1", **extra}


def _start(args: list[str], runs: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shoshin", *args],
        env=_env(runs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1]


def _listed_status(runs: Path) -> dict:
    out = run_cli("runs", "--json", env={"SHOSHIN_RUNS_DIR": str(runs)})
    assert out.returncode == 0, out.stderr
    return {r["id"]: r for r in json.loads(out.stdout)}


def _short_run(runs: Path, steps: int, max_steps: int, *overrides: str) -> Path:
    """A run trained in this process to `steps` of `max_steps` (the rest left to a resume)."""
    config = load_config("tiny", [f"train.max_steps={max_steps}", *QUICK, *overrides])
    return train(config, runs, log=lambda msg: None, stop_after=steps).path


def test_two_resumes_of_one_run_one_writes_the_other_names_it(tmp_path):
    runs = tmp_path / "runs"
    run = _short_run(runs, 10, 100_000)  # far more steps than the test waits for
    assert _listed_status(runs)[run.name]["status"] == "completed"  # stopped at 10 on purpose
    procs = [_start(["train", "--resume", run.name], runs) for _ in range(2)]
    try:
        # The one that did not get the lock says so and stops; the other keeps training.
        _wait_for(lambda: any(p.poll() is not None for p in procs), what="the refused resume")
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert loser.returncode == 2
        error = _one_line_error(loser.communicate()[1])
        assert f"PID {winner.pid} on host {socket.gethostname()}" in error
        assert winner.poll() is None
        # The resume recorded its own process, so `runs` and `show` see it live, not "died".
        _wait_for(lambda: _manifest(run)["pid"] == winner.pid, what="the resume's record")
        manifest = _manifest(run)
        assert manifest["status"] == "running" and manifest["end_time"] is None
        assert manifest["hostname"] == socket.gethostname() and manifest["heartbeat"]
        assert _listed_status(runs)[run.name]["status"] == "running"
        shown = run_cli("show", run.name, env={"SHOSHIN_RUNS_DIR": str(runs)})
        assert "status    running" in shown.stdout
        assert is_locked(run)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.communicate()
    steps = [r["step"] for r in _metrics(run) if r["step"] > 10]
    assert steps == sorted(set(steps)), steps  # strictly increasing: one writer
    assert [r["step"] for r in _manifest(run)["resumed"]] == [10]
    assert is_locked(run) is False  # kill -9 leaves no stale lock
    assert _listed_status(runs)[run.name]["status"] == "died"


def test_resume_removes_what_a_kill_during_a_checkpoint_write_left(tmp_path):
    from shoshin.runs.store import Run
    from shoshin.training.runner import resume

    run = _short_run(tmp_path / "runs", 5, 10)
    ckpts = run / "checkpoints"
    unfinished = ckpts / ".step-0000006.k1ll3d"  # as save_checkpoint names its temporary folder
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"\0" * 1000)
    (ckpts / ".index.json.x1.tmp").write_text("{")
    (run / ".manifest.json.x2.tmp").write_text("{")
    logs: list[str] = []
    resume(Run(run), log=logs.append)
    assert not list(run.glob(".*.tmp")) and not list(ckpts.glob(".*"))
    assert any("removed 3 unfinished file(s)" in line for line in logs), logs
    assert _manifest(run)["status"] == "completed" and _manifest(run)["steps"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_moment_then_resume_continues_exactly(tmp_path, seed):
    """Checkpoints at every step, so a random kill often lands inside a checkpoint write."""
    import random

    args = ["train", "tiny", "train.max_steps=40", "train.checkpoint_interval=1"]
    args += [*QUICK, "train.log_interval=1", "train.eval_interval=10", "model.dropout=0.1"]
    straight = _start(args, tmp_path / "a")
    assert straight.wait(timeout=300) == 0, straight.communicate()[1]
    reference = _metrics(next((tmp_path / "a").iterdir()))

    proc = _start(args, tmp_path / "b")
    runs = tmp_path / "b"
    _wait_for(lambda: list(runs.glob("*/checkpoints/step-*")), what="a first checkpoint")
    time.sleep(random.Random(seed).uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    run = next(runs.iterdir())
    resumed = _start(["train", "--resume", run.name], runs)  # the same thread count
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    keys = ("step", "train_loss", "val_loss", "lr")
    assert [{k: r.get(k) for k in keys} for r in _metrics(run)] == [
        {k: r.get(k) for k in keys} for r in reference
    ]
    assert _manifest(run)["status"] == "completed"
    assert not list(run.glob("**/.*.tmp")) and not list(run.glob("checkpoints/.step-*"))


# -- SIGTERM: what `kill`, `timeout` and job schedulers send -----------------------------------


def _terminated(proc: subprocess.Popen) -> str:
    """SIGTERM `proc`; its output, once it exited like Ctrl-C does but with 128 + 15."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in (out or "") + (err or ""), (out, err)
    return (out or "") + (err or "")


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    runs = tmp_path / "runs"
    args = ["train", "tiny", "train.max_steps=100000", "train.checkpoint_interval=0", *QUICK]
    proc = _start([*args, "train.log_interval=1"], runs)
    _wait_for(lambda: len(list(runs.glob("*/metrics.jsonl"))) == 1, what="the run")
    run = next(runs.iterdir())
    _wait_for(lambda: len(_metrics(run)) >= 5, what="five steps")
    output = _terminated(proc)
    assert f"resume with: shoshin train --resume {run.name}" in output
    manifest = _manifest(run)
    assert manifest["status"] == "interrupted"
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{manifest['steps']:07d}"
    assert is_locked(run) is False


@pytest.mark.slow
def test_sigterm_to_a_torchrun_job_reaches_its_workers_and_is_recorded(tmp_path):
    """`train --nproc 2` passes SIGTERM on to torchrun, which stops the workers with it; rank 0
    records the stop (as failed: a worker cannot tell a user's SIGTERM from a failed rank's) unless
    the signal finds it inside a collective its peer has left, where torchrun's SIGKILL ends it
    first: then the run, written by no one, is listed as died, never as running."""
    runs = tmp_path / "runs"
    args = ["train", "--nproc", "2", "tiny", "train.max_steps=100000", "train.batch_size=4"]
    proc = _start([*args, *QUICK, "train.log_interval=1"], runs)
    _wait_for(lambda: len(list(runs.glob("*/metrics.jsonl"))) == 1, 180, "the run")
    run = next(runs.iterdir())
    _wait_for(lambda: len(_metrics(run)) >= 3, 180, "three steps")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert is_locked(run) is False  # every worker is gone
    manifest = _manifest(run)
    status = effective_status(read_manifest(run), run)
    assert status in ("failed", "died"), status
    if status == "failed":
        assert "SIGTERM" in manifest["error"]


def test_sigterm_ends_serve_sample_and_chat_quietly(trained_runs, tmp_path):
    run = sorted(trained_runs.iterdir())[0].name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _start(["serve", run, "--port", str(port), "--threads", "1"], trained_runs)
    _wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health"), what="the server")
    assert "serving on" in _terminated(server)

    # every special token biased away: the sample cannot end on its own before the signal comes
    specials = load_tokenizer(trained_runs / run).special_tokens.values()
    never_stop = [arg for i in specials for arg in ("--logit-bias", f"{i}:-100")]
    sample = _start(["sample", run, "--max-new-tokens", "10000000", *never_stop], trained_runs)
    assert sample.stdout.read(1)  # it is generating
    _terminated(sample)

    chat = _start(["chat", run], trained_runs, stdin=subprocess.PIPE)
    assert chat.stdout.readline().startswith("chatting with")  # waiting for the user
    _terminated(chat)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


# -- a full, read-only or missing disk ----------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _limit_file_size(limit: int):
    """For a child process: files may not grow past `limit` bytes; a write beyond fails (EFBIG)."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the default would kill the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("limit", [1_000, 200_000])
def test_a_write_the_disk_refuses_is_one_line_and_damages_nothing(tmp_path, limit):
    """1 kB: even the new run's manifest cannot be written, so no run folder may be left behind.
    200 kB: the run starts, its first checkpoint (440 kB of weights) fails, and the run is
    recorded as failed."""
    runs = tmp_path / "runs"
    older = _short_run(runs, 5, 5, "model.n_embd=64")
    before = _files(older)
    args = ["train", "tiny", "model.n_embd=64", *QUICK]
    proc = _start(args, runs, preexec_fn=_limit_file_size(limit))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    line = _one_line_error(err)
    assert "file size limit reached" in line and "--runs-dir" in line, line
    assert _files(older) == before  # nothing older damaged
    new = [p for p in runs.iterdir() if p != older]
    if limit < 100_000:
        assert new == []
    else:
        (run,) = new
        manifest = _manifest(run)
        assert manifest["status"] == "failed" and "OSError" in manifest["error"]
        assert "model.safetensors" in line  # the file the disk refused, named
        assert not list(run.glob("checkpoints/.step-*"))  # its temporary folder is gone


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 400 kB tmpfs (needs root with CAP_SYS_ADMIN: skipped elsewhere, the test above holds)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_half_written_run(small_tmpfs):
    runs = small_tmpfs / "runs"
    proc = _start(["train", "tiny", *QUICK, "train.checkpoint_interval=5"], runs)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "no space left" in _one_line_error(err)
    for run in runs.iterdir():
        assert (run / "manifest.json").is_file()  # a run folder always has its manifest
        assert not list(run.glob("checkpoints/.step-*"))


def test_a_read_only_runs_dir_is_one_line(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    if os.geteuid() == 0:  # root writes through chmod; a read-only mount stops it
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(runs)])
        if made.returncode != 0:
            pytest.skip("running as root without the right to mount a read-only tmpfs")
    else:
        runs.chmod(0o555)
    try:
        proc = _start(["train", "tiny", *QUICK], runs)
        _, err = proc.communicate(timeout=300)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(runs)], check=True)
        runs.chmod(0o755)
    assert proc.returncode == 1, err
    line = _one_line_error(err)
    assert str(runs) in line and ("read-only" in line or "permission denied" in line), line


def test_a_file_as_runs_dir_is_one_line(tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    trained = run_cli("train", "tiny", *QUICK, env={"SHOSHIN_RUNS_DIR": str(runs)})
    assert trained.returncode == 2
    assert "is a file, not a folder" in _one_line_error(trained.stderr)
    below = run_cli("train", "tiny", *QUICK, env={"SHOSHIN_RUNS_DIR": str(runs / "sub")})
    assert below.returncode == 1
    assert "a file is in the way of a folder" in _one_line_error(below.stderr)
    assert runs.read_text() == "not a folder"
