"""Run directories: where each training run keeps its config, manifest, metrics, tokenizer and checkpoints.

runs/<id>/config.yaml      the resolved config
runs/<id>/manifest.json    command, times, status, seed, code/data/environment facts
runs/<id>/metrics.jsonl    one JSON object per logged step
runs/<id>/char_tokenizer.json or tokenizer.json
runs/<id>/checkpoints/     see shoshin.training.checkpoint
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from shoshin.config import Config, preset_names, read_config, save_config
from shoshin.errors import ShoshinError
from shoshin.runs.files import atomic_write_json, atomic_write_text, read_json
from shoshin.runs.provenance import code_record, environment

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


def runs_root(explicit: str | Path | None = None) -> Path:
    """The runs folder: --runs-dir, else $SHOSHIN_RUNS_DIR, else ./runs."""
    return Path(explicit or os.environ.get("SHOSHIN_RUNS_DIR") or "runs")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run directory and the files in it.

    `mirror` (set while training with tracking.mlflow=true) receives every metrics row too.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.mirror: Any = None

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return read_json(self.path / MANIFEST)
        except (OSError, ValueError):
            raise ShoshinError(f"run {self.path} has no readable {MANIFEST}") from None

    @property
    def config(self) -> Config:
        if not (self.path / CONFIG).exists():
            raise ShoshinError(f"run {self.path} has no {CONFIG}")
        return read_config(self.path / CONFIG)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.manifest
        manifest.update(fields)
        atomic_write_json(self.path / MANIFEST, manifest)
        return manifest

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a killed process
                break
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.mirror is not None:
            self.mirror.log_metrics(row)

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only rows up to `last_step` (used when resuming from a checkpoint)."""
        rows = [r for r in self.metrics() if r["step"] <= last_step]
        atomic_write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def create_run(
    config: Config,
    root: Path,
    command: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Make a new run directory with its config and an initial manifest (plus `extra` fields).

    The manifest records the code (git state of the working directory and of shoshin's source
    tree, with patches saved under code/), the code fingerprint and the environment.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = config.name or config.model.arch
    run_id = f"{stamp}-{name}-{secrets.token_hex(2)}"
    path = Path(root) / run_id
    path.mkdir(parents=True, exist_ok=False)
    save_config(config, path / CONFIG)
    command = command if command is not None else sys.argv
    workdir_git, code = code_record(path, config_file_in(command), skip=(Path(root),))
    atomic_write_json(
        path / MANIFEST,
        {
            "id": run_id,
            "name": name,
            "command": command,
            "cwd": os.getcwd(),
            "status": "running",
            "start_time": now_iso(),
            "end_time": None,
            "seed": config.train.seed,
            "seeds": {"train": config.train.seed, "split": config.data.split_seed},
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "git": workdir_git,
            "code": code,
            "environment": environment(),
            **(extra or {}),
        },
    )
    return Run(path)


def config_file_in(command: list[str]) -> Path | None:
    """The YAML config file or preset a command line names (its first such argument), if any."""
    presets = preset_names()
    for arg in command[1:]:
        if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
            return Path(arg)
        if arg in presets:
            return Path(str(resources.files("shoshin") / "presets" / f"{arg}.yaml"))
    return None


def all_runs(root: Path) -> list[Run]:
    """Runs under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((Run(p) for p in root.iterdir() if (p / MANIFEST).is_file()), key=lambda r: r.id)


TRAINING_KINDS = ("train", "finetune")  # the runs `latest` can name


def run_kind(manifest: dict[str, Any]) -> str:
    """What made a run: "train", "finetune", "reproduction" (shoshin reproduce) or "lr-find"."""
    if manifest.get("kind") == "lr-find":
        return "lr-find"
    if manifest.get("reproduction_of"):
        return "reproduction"
    return "finetune" if manifest.get("base_model") else "train"


def latest_run(root: Path) -> Run:
    """The training run (`train` or `finetune`) started last: what `latest` names.

    Reproductions and lr-find runs are checks of other runs, not models to use, so a
    `shoshin reproduce` or `lr-find` never moves `latest`; runs whose manifest cannot be read are
    passed over.
    """
    started = []
    for run in all_runs(root):
        try:
            manifest = run.manifest
        except ShoshinError:
            continue
        if run_kind(manifest) in TRAINING_KINDS:
            started.append((manifest.get("start_time") or "", run.id, run))
    if not started:
        raise ShoshinError(f"no training runs in {root} yet; train one with: shoshin train tiny")
    return max(started, key=lambda item: item[:2])[2]


def resolve_run(ref: str, root: Path) -> Run:
    """A run from an id, a unique id prefix, `latest` (see latest_run), or a run directory path."""
    path = Path(ref)
    if (path / MANIFEST).is_file():
        return Run(path)
    if ref == "latest":
        return latest_run(root)
    runs = all_runs(root)
    exact = [r for r in runs if r.id == ref]
    if exact:
        return exact[0]
    matches = [r for r in runs if r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(r.id for r in matches[:5])
        raise ShoshinError(f"run prefix {ref!r} is ambiguous: {names}")
    raise ShoshinError(f"no run {ref!r} in {root} (see: shoshin runs)")


def effective_status(manifest: dict[str, Any]) -> str:
    """The recorded status, except that a 'running' run whose process is gone on this host is 'died'."""
    status = manifest.get("status", "unknown")
    if status == "running" and manifest.get("hostname") == socket.gethostname():
        pid = manifest.get("pid")
        try:
            os.kill(int(pid), 0)
        except (OSError, TypeError, ValueError):
            return "died"
    return status
