"""Run directories: where each training run keeps its config, manifest, metrics, tokenizer and checkpoints.

runs/<id>/config.yaml      the resolved config
runs/<id>/manifest.json    command, times, status, seed, code/data/environment facts
runs/<id>/metrics.jsonl    one JSON object per logged step
runs/<id>/char_tokenizer.json or tokenizer.json
runs/<id>/checkpoints/     see shoshin.storage.checkpoint
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shoshin.config import Config, preset_names, preset_path, read_config, save_config
from shoshin.errors import ShoshinError
from shoshin.runs.lock import RunLock, is_locked
from shoshin.runs.provenance import code_record, environment
from shoshin.storage.manifest import (
    MANIFEST,
    DamagedRecord,
    Manifest,
    MetricsRow,
    append_metrics,
    read_manifest,
    read_metrics,
    updated,
    write_manifest,
    write_metrics,
)

CONFIG = "config.yaml"
CHECKPOINT_INDEX = "checkpoints/index.json"  # written with the first checkpoint
TRACEBACK = "traceback.txt"


def runs_root(explicit: str | Path | None = None) -> Path:
    """The runs folder: --runs-dir, else $SHOSHIN_RUNS_DIR, else ./runs."""
    return Path(explicit or os.environ.get("SHOSHIN_RUNS_DIR") or "runs")


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir` (with --runs-dir where it is needed)."""
    run_dir = Path(run_dir)
    where = (
        "" if run_dir.parent.resolve() == runs_root().resolve() else f" --runs-dir {run_dir.parent}"
    )
    return f"shoshin train --resume {run_dir.name}{where}"


def now_iso() -> str:
    """UTC now, to the millisecond: two runs started in the same second (a parallel seed group, a
    run made right after another) still have an order."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _started_at(manifest: Manifest) -> datetime:
    """When a run started, for ordering (a manifest without a readable start time sorts first)."""
    try:
        started = datetime.fromisoformat(manifest.start_time or "")
    except (TypeError, ValueError):
        started = datetime.min
    return started if started.tzinfo else started.replace(tzinfo=timezone.utc)


class Run:
    """One run directory and the files in it (read and written through shoshin.storage.manifest).

    `mirror` (set while training with tracking.mlflow=true) receives every metrics row too;
    `lock` is set while this process is the run's writer (see shoshin.runs.lock).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.mirror: Any = None
        self.lock: RunLock | None = None

    def take_lock(self) -> None:
        """Become the run's one writer (RunLocked, naming the holder, if another process is)."""
        if self.lock is None:
            self.lock = RunLock.acquire(self.path)

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __getstate__(self) -> dict[str, Any]:
        # Rank 0 hands its Run to the other ranks (pickled); the lock stays with rank 0.
        return {**self.__dict__, "lock": None}

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> Manifest:
        """The manifest as it is on disk now; a one-line error if it is damaged."""
        try:
            return read_manifest(self.path)
        except DamagedRecord as exc:
            raise DamagedRecord(f"run {self.id} is broken: {exc}") from None

    @property
    def config(self) -> Config:
        if not (self.path / CONFIG).exists():
            raise ShoshinError(f"run {self.path} has no {CONFIG}")
        return read_config(self.path / CONFIG)

    def update_manifest(self, **fields: Any) -> Manifest:
        """Set manifest fields (e.g. status=..., end_time=...) in one atomic rewrite."""
        manifest = updated(self.manifest, **fields)
        write_manifest(self.path, manifest)
        return manifest

    def finish(
        self, status: str, exc: BaseException | None = None, **results: Any
    ) -> Manifest | None:
        """Record how the run ended, in one rewrite: its status, the end time, `results` (steps,
        losses ...) and, when an exception ended it, the error in one line and the traceback
        (saved as traceback.txt).

        When the disk itself fails (full, read-only), what can be recorded is (the manifest is
        rewritten atomically or not at all) and None is returned: the caller goes on to report
        the error that ended the run, not this one.
        """
        if exc is not None:
            results.update(error=f"{type(exc).__name__}: {exc}")
            try:
                (self.path / TRACEBACK).write_text("".join(traceback.format_exception(exc)))
                results.update(traceback=TRACEBACK)
            except OSError:
                pass
        try:
            return self.update_manifest(status=status, end_time=now_iso(), **results)
        except OSError:
            return None

    def metrics(self) -> list[MetricsRow]:
        return read_metrics(self.path)

    def append_metrics(self, row: MetricsRow) -> None:
        append_metrics(self.path, row)
        if self.mirror is not None:
            self.mirror.log_metrics(row)

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only rows up to `last_step` (used when resuming from a checkpoint)."""
        write_metrics(self.path, [r for r in self.metrics() if r["step"] <= last_step])


def create_run(
    config: Config,
    root: Path,
    command: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Make a new run directory with its config and an initial manifest (plus `extra` fields).

    The manifest records the code (git state of the working directory and of shoshin's source
    tree, with patches saved under code/), the code fingerprint and the environment. The returned
    run holds its lock: this process is its writer.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ShoshinError(
            f"runs dir {root} is a file, not a folder; "
            "choose another with --runs-dir DIR or SHOSHIN_RUNS_DIR"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.name or config.model.arch
    run_id = f"{stamp}-{name}-{secrets.token_hex(2)}"
    path = root / run_id
    path.mkdir(parents=True, exist_ok=False)
    try:
        run = Run(path)
        run.take_lock()
        save_config(config, path / CONFIG)
        command = command if command is not None else sys.argv
        workdir_git, code = code_record(path, config_file_in(command), skip=(root,))
        manifest = Manifest(
            id=run_id,
            name=name,
            command=list(command),
            cwd=os.getcwd(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            heartbeat=now_iso(),
            seed=config.train.seed,
            seeds={"train": config.train.seed, "split": config.data.split_seed},
            status="running",
            start_time=now_iso(),
            git=workdir_git,
            code=code,
            environment=environment(),
        )
        write_manifest(path, updated(manifest, **(extra or {})))
    except BaseException:
        # A run folder without a manifest is no run: leave nothing half-made (a full disk).
        shutil.rmtree(path, ignore_errors=True)
        raise
    return run


def config_file_in(command: list[str]) -> Path | None:
    """The YAML config file or preset a command line names (its first such argument), if any."""
    presets = preset_names()
    for arg in command[1:]:
        if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
            return Path(arg)
        if arg in presets:
            return preset_path(arg)
    return None


def all_runs(root: Path) -> list[Run]:
    """Runs under `root` (folders with a manifest, readable or not), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((Run(p) for p in root.iterdir() if (p / MANIFEST).is_file()), key=lambda r: r.id)


def readable_runs(root: Path) -> list[tuple[Run, Manifest]]:
    """Each run under `root` whose manifest can be read, with that manifest; broken ones skipped."""
    out = []
    for run in all_runs(root):
        try:
            out.append((run, run.manifest))
        except DamagedRecord:
            continue
    return out


TRAINING_KINDS = ("train", "finetune")  # the runs `latest` can name


def run_kind(manifest: Manifest) -> str:
    """What made a run: "train", "finetune", "reproduction" (shoshin reproduce) or "lr-find"."""
    if manifest.kind == "lr-find":
        return "lr-find"
    if manifest.reproduction_of:
        return "reproduction"
    return "finetune" if manifest.base_model is not None else "train"


def latest_run(root: Path, say: Callable[[str], None] | None = None) -> Run:
    """The training run (`train` or `finetune`) started last that has a checkpoint: what `latest`
    names.

    Reproductions and lr-find runs are checks of other runs, not models to use, so a
    `shoshin reproduce` or `lr-find` never moves `latest`; broken runs (a manifest that cannot be
    read) are passed over, and so are training runs without a checkpoint (one that failed at its
    start, or is still before its first one): `say` gets one line naming those newer ones and why.
    """
    started = sorted(
        (
            (_started_at(m), run.id, run, m)
            for run, m in readable_runs(root)
            if run_kind(m) in TRAINING_KINDS
        ),
        key=lambda item: item[:2],
        reverse=True,
    )
    if not started:
        raise ShoshinError(f"no training runs in {root} yet; train one with: shoshin train tiny")
    skipped = []
    for _, _, run, manifest in started:
        if has_checkpoint(run.path):
            if skipped and say is not None:
                say(f"latest is {run.id}; skipped newer {'; '.join(skipped)}")
            return run
        skipped.append(f"{run.id} ({_why_no_checkpoint(manifest, run.path)})")
    raise ShoshinError(
        f"no run in {root} has a checkpoint yet ({'; '.join(skipped[:3])}); "
        "train one with: shoshin train tiny"
    )


def has_checkpoint(run_dir: Path) -> bool:
    """True once training wrote a first checkpoint (its index names it; see
    shoshin.training.checkpoint)."""
    return (Path(run_dir) / CHECKPOINT_INDEX).is_file()


def _why_no_checkpoint(manifest: Manifest, run_dir: Path) -> str:
    status = effective_status(manifest, run_dir)
    if status == "running":
        return "running, no checkpoint yet"
    error = (manifest.error or "").removeprefix("ShoshinError: ")
    error = f": {error[:77]}..." if len(error) > 80 else f": {error}" if error else ""
    return f"{status} before its first checkpoint{error}"


def resolve_run(ref: str, root: Path) -> Run:
    """A run from an id, a unique id prefix, `latest` (see latest_run), or a run directory path.

    Naming a broken run is a one-line error saying why it is broken.
    """
    path = Path(ref)
    if (path / MANIFEST).is_file():
        return _readable(Run(path))
    if ref == "latest":
        return latest_run(root, say=_to_stderr)
    runs = all_runs(root)
    exact = [r for r in runs if r.id == ref]
    if exact:
        return _readable(exact[0])
    matches = [r for r in runs if r.id.startswith(ref)]
    if len(matches) == 1:
        return _readable(matches[0])
    if matches:
        names = ", ".join(r.id for r in matches[:5])
        raise ShoshinError(f"run prefix {ref!r} is ambiguous: {names}")
    raise ShoshinError(f"no run {ref!r} in {root} (see: shoshin runs)")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _readable(run: Run) -> Run:
    _ = run.manifest  # raises the one-line DamagedRecord of a broken run
    return run


# A run on another host is taken as live while its heartbeat is younger than this (its lock
# cannot be asked from here); the trainer beats at least every HEARTBEAT_SECONDS while it trains.
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0


def effective_status(manifest: Manifest, run_dir: Path | None = None) -> str:
    """The recorded status, except that a 'running' run nobody is writing is 'died'.

    On this host a run is live while a process holds its lock (shoshin.runs.lock), or, for a run
    without a lock file, while its recorded PID is alive; on another host, while its heartbeat is
    recent.
    """
    if manifest.status != "running":
        return manifest.status
    if manifest.hostname == socket.gethostname():
        locked = is_locked(run_dir) if run_dir is not None else None
        alive = _alive(manifest.pid) if locked is None else locked
        return "running" if alive else "died"
    beat = _age_seconds(manifest.heartbeat or manifest.start_time)
    return "died" if beat is not None and beat > STALE_AFTER_SECONDS else "running"


def _age_seconds(iso: str | None) -> float | None:
    try:
        then = datetime.fromisoformat(iso) if iso else None
    except ValueError:
        return None
    return None if then is None else (datetime.now(timezone.utc) - then).total_seconds()


def _alive(pid: int | None) -> bool:
    if not pid or pid < 1:  # 0 and negative numbers would address process groups
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists, as another user's process
        return True
    except OSError:
        return False
    return True


def budget_lines(run_dir: Path, m: Manifest, max_minutes: float) -> list[str]:
    """What a run that stopped on its time budget says (at its end and in `show`): steps done of
    planned, and the command that continues it; nothing for any other run."""
    if not m.stopped_on_budget:
        return []
    planned = m.planned_steps or m.steps
    pace = ""
    if m.elapsed_seconds and m.steps:
        minutes = m.elapsed_seconds / m.steps * (planned - m.steps) / 60
        pace = f"; the other {planned - m.steps} take about {minutes:.0f} min at its pace"
    return [
        f"stopped on the time budget (train.max_minutes={max_minutes:g}) after {m.steps} of "
        f"{planned} planned steps: training is not finished{pace}",
        f"continue it with: {resume_command(run_dir)} train.max_minutes=0  (0: no time budget)",
    ]
