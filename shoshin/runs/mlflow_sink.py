"""An optional MLflow mirror of a run (`tracking.mlflow=true`, `pip install 'shoshin[mlflow]'`).

The run directory stays the record; MLflow gets a copy for teams that browse experiments there:
the flattened config as params, every metrics row as metrics at its step, the code and data
fingerprints and git state as tags, and the manifest, config and patches as artifacts.

MLflow creates its tables the first time a database is used, and several processes doing that at
once on a fresh SQLite file fail with "table already exists". The first contact with a store is
therefore made under a file lock, and so is the experiment lookup-or-create, which races the same
way; after that the schema exists and concurrent runs only write rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoshin.config import Config
from shoshin.errors import ShoshinError
from shoshin.storage.evaluations import EVAL_DIR, EvalRecord
from shoshin.storage.files import cache_dir, read_json
from shoshin.storage.manifest import Manifest, MlflowLink, read_manifest

STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
RETRIES = 6  # SQLite allows one writer at a time; a busy database is retried, not fatal


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 2}} -> {"model.n_layer": 2}."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def lock_path(uri: str) -> Path:
    """The lock file guarding a store's initialisation: beside a SQLite file, else in the cache."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :] + ".lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return cache_dir() / f"mlflow-{digest}.lock"


def open_store(uri: str, experiment: str) -> tuple[Any, str]:
    """(MlflowClient, experiment id) for `uri`, creating tables and experiment safely under a lock."""
    from filelock import FileLock
    from mlflow import MlflowClient

    lock = lock_path(uri)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock), timeout=300):
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id if found is not None else client.create_experiment(experiment)
        )
    return client, experiment_id


class MlflowMirror:
    """Copies one run into MLflow as it trains; an MLflow failure warns once and never stops training."""

    def __init__(self, client: Any, mlflow_run_id: str, run: Any, log: Callable[[str], None]):
        self.client = client
        self.run_id = mlflow_run_id
        self.run = run
        self.log = log
        self.broken = False

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            return None
        for attempt in range(RETRIES):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                busy = "locked" in str(exc).lower() or "busy" in str(exc).lower()
                if not busy or attempt == RETRIES - 1:
                    self.broken = True
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    self.log(
                        f"warning: MLflow mirror stopped ({first}); the run goes on without it"
                    )
                    return None
                time.sleep(0.1 * 2**attempt)
        return None

    def log_metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row: every numeric field at the row's step."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), stamp, int(row["step"]))
            for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if metrics:
            self._call(self.client.log_batch, self.run_id, metrics=metrics)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, str(path), folder)

    def log_params_and_tags(self, config: Config, manifest: Manifest) -> None:
        from mlflow.entities import Param, RunTag

        params = [Param(k, str(v)) for k, v in flatten(config.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._call(self.client.log_batch, self.run_id, params=params[start : start + 100])
        tags = [RunTag(k, str(v)) for k, v in provenance_tags(manifest).items()]
        self._call(self.client.log_batch, self.run_id, tags=tags)

    def finish(self, status: str) -> None:
        """End the MLflow run with the run's status; upload the manifest, config and patches."""
        path = self.run.path
        manifest = read_manifest(path)
        self._call(self.client.set_tag, self.run_id, "shoshin.status", status)
        if manifest.error:
            self._call(self.client.set_tag, self.run_id, "shoshin.error", manifest.error[:5000])
        for name in ("manifest.json", "config.yaml", "traceback.txt"):
            if (path / name).is_file():
                self.log_artifact(path / name)
        for patch in sorted((path / "code").glob("*.patch")):
            self.log_artifact(patch, "code")
        self._call(self.client.set_terminated, self.run_id, STATUS.get(status, "FAILED"))


def provenance_tags(manifest: Manifest) -> dict[str, str]:
    """The fingerprints and git state of a manifest as flat MLflow tags."""
    tags = {"shoshin.run_id": manifest.id}
    git = manifest.git
    if git is not None:
        if git.commit:
            tags["mlflow.source.git.commit"] = git.commit  # MLflow's own tag: its UI links it
            tags["shoshin.git.commit"] = git.commit
        tags["shoshin.git.branch"] = str(git.branch)
        tags["shoshin.git.dirty"] = str(git.dirty)
    code = manifest.code
    source_git = code.shoshin_git if code else None
    if source_git is not None and source_git.commit:
        tags["shoshin.source.git.commit"] = source_git.commit
        tags["shoshin.source.git.dirty"] = str(source_git.dirty)
    fingerprint = code.fingerprint if code else None
    if fingerprint is not None:
        if fingerprint.shoshin_source:
            tags["shoshin.code_fingerprint"] = fingerprint.shoshin_source
        if fingerprint.config_file is not None:
            tags["shoshin.config_file_sha256"] = fingerprint.config_file.sha256
    data = manifest.data
    if data is not None:
        for key in ("fingerprint", "source_sha256", "tokenizer_sha256"):
            if getattr(data, key):
                tags[f"shoshin.data.{key}"] = getattr(data, key)
        if data.split.get("sha256"):
            tags["shoshin.data.split_sha256"] = data.split["sha256"]
    return tags


def open_mirror(
    config: Config, run: Any, log: Callable[[str], None] = print
) -> MlflowMirror | None:
    """Start mirroring `run` to MLflow when tracking.mlflow is on (else None).

    Called once the manifest knows the data; a store that cannot be opened is a warning.
    """
    tracking = config.tracking
    if not tracking.mlflow:
        return None
    recorded = run.manifest.mlflow
    try:
        client, experiment_id = open_store(tracking.mlflow_uri, tracking.mlflow_experiment)
        if recorded is not None and recorded.run_id and recorded.uri == tracking.mlflow_uri:
            # A resumed run continues its MLflow run rather than starting a second one.
            client.update_run(recorded.run_id, status="RUNNING")
            return MlflowMirror(client, recorded.run_id, run, log)
        group = run.manifest.group  # a seed group's member nests under the group's run
        parent = (
            {"mlflow.parentRunId": group.mlflow_run_id} if group and group.mlflow_run_id else {}
        )
        created = client.create_run(experiment_id, run_name=run.id, tags=parent)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log(f"warning: cannot open MLflow store {tracking.mlflow_uri} ({first}); not mirroring")
        return None
    mirror = MlflowMirror(client, created.info.run_id, run, log)
    link = MlflowLink(tracking.mlflow_uri, created.info.run_id, experiment_id)
    manifest = run.update_manifest(mlflow=link)
    mirror.log_params_and_tags(config, manifest)
    mirror.log_artifact(run.path / "config.yaml")
    return mirror


def mirror_to_mlflow(run: Any, paths: list[Path], log: Callable[[str], None] = print) -> None:
    """Log the records at `paths` (and their files) to the run's MLflow run, when it has one.

    The metrics are logged as `eval.<record>.<metric>` at the evaluated checkpoint's step.
    """
    recorded = run.manifest.mlflow  # shoshin.storage.manifest.MlflowLink, or None
    try:
        tracking = run.config.tracking
    except ShoshinError:  # no readable config: nothing says where to mirror
        return
    if not tracking.mlflow or recorded is None or not recorded.run_id:
        return
    try:
        client, _ = open_store(recorded.uri or tracking.mlflow_uri, tracking.mlflow_experiment)
    except Exception as exc:
        log(f"warning: cannot open the MLflow store to mirror the evaluation ({exc})")
        return
    mirror = MlflowMirror(client, recorded.run_id, run, log)
    for path in paths:
        record = EvalRecord.from_dict(read_json(path))
        row = {f"eval.{record.name}.{k}": v for k, v in record.metrics.items()}
        mirror.log_metrics({"step": _step(record.checkpoint), **row})
        for file in sorted(path.parent.glob(f"{record.name}.*")):
            mirror.log_artifact(file, EVAL_DIR)


def _step(checkpoint: str | None) -> int:
    try:
        return int(str(checkpoint).rsplit("-", 1)[-1])
    except ValueError:
        return 0
