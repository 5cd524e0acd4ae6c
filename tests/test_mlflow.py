"""The MLflow mirror: four runs started at once on a fresh SQLite store all land, with their metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
from gitrepo import THREADS, TINY

from shoshin.runs.mlflow_sink import flatten, lock_path, provenance_tags
from shoshin.storage.manifest import manifest_from_dict


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside MLflow's SQLAlchemy store
def test_parallel_runs_on_a_fresh_store_all_land(tmp_path, shakespeare_like):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "shoshin", "train", "tiny", f"data.source={shakespeare_like}", *TINY,
        "tracking.mlflow=true", f"tracking.mlflow_uri={uri}",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, f"train.seed={seed}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **THREADS},
        )
        for seed in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "warning: MLflow" not in out and "cannot open MLflow" not in out, out

    manifests = [
        json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "runs").iterdir()
    ]
    assert len(manifests) == 4
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["shoshin"], output_format="list")
    by_id = {r.info.run_id: r for r in found}
    assert sorted(by_id) == sorted(m["mlflow"]["run_id"] for m in manifests)
    client = mlflow.MlflowClient(uri)
    for m in manifests:
        run = by_id[m["mlflow"]["run_id"]]
        assert run.info.status == "FINISHED" and run.info.run_name == m["id"]
        assert run.data.params["train.seed"] == str(m["seed"])
        assert run.data.params["model.n_embd"] == "16"
        assert run.data.metrics["val_loss"] == pytest.approx(m["final_val_loss"])
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [h.step for h in sorted(history, key=lambda h: h.step)] == list(range(1, 13))
        tags = run.data.tags
        assert tags["shoshin.code_fingerprint"] == m["code"]["fingerprint"]["shoshin_source"]
        assert tags["shoshin.data.fingerprint"] == m["data"]["fingerprint"]
        assert tags["shoshin.status"] == "completed"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"manifest.json", "config.yaml"} <= artifacts


def test_flatten_tags_and_lock_path(tmp_path):
    assert flatten({"model": {"n_layer": 2, "x": {"y": 1}}, "name": "a"}) == {
        "model.n_layer": 2,
        "model.x.y": 1,
        "name": "a",
    }
    manifest = {
        "id": "r1",
        "git": {"commit": "c" * 40, "branch": "main", "dirty": True},
        "code": {"fingerprint": {"shoshin_source": "f" * 64, "config_file": None}},
        "data": {"fingerprint": "d" * 64, "split": {"sha256": "s" * 64}},
    }
    tags = provenance_tags(manifest_from_dict(manifest))
    assert tags["mlflow.source.git.commit"] == "c" * 40 and tags["shoshin.git.dirty"] == "True"
    assert tags["shoshin.code_fingerprint"] == "f" * 64
    assert tags["shoshin.data.split_sha256"] == "s" * 64
    assert lock_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db.lock"
    assert lock_path("http://127.0.0.1:5000").name.startswith("mlflow-")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside MLflow's SQLAlchemy store
def test_a_seed_group_is_a_parent_run_with_nested_children_and_its_statistics(
    tmp_path, shakespeare_like
):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "shoshin", "train", "tiny", f"data.source={shakespeare_like}",
         *TINY, "tracking.mlflow=true", f"tracking.mlflow_uri={uri}", "--seeds", "2"],
        capture_output=True, text=True, env={**os.environ, **THREADS}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "MLflow" not in result.stdout, result.stdout  # no warning
    group = result.stdout.split()[1]
    manifests = [
        json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "runs").iterdir()
    ]
    client = mlflow.MlflowClient(uri)
    (parent_id,) = {m["group"]["mlflow_run_id"] for m in manifests}
    parent = client.get_run(parent_id)
    assert parent.info.run_name == group and parent.info.status == "FINISHED"
    assert parent.data.tags["shoshin.group_id"] == group
    assert parent.data.params["model.n_embd"] == "16" and "train.seed" not in parent.data.params
    children = [client.get_run(m["mlflow"]["run_id"]) for m in manifests]
    assert all(c.data.tags["mlflow.parentRunId"] == parent_id for c in children)
    finals = [m["final_val_loss"] for m in manifests]
    metrics = parent.data.metrics
    assert metrics["final_val_loss.mean"] == pytest.approx(sum(finals) / 2)
    assert metrics["final_val_loss.sd"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    assert metrics["final_val_loss.n"] == 2 and metrics["runs_completed"] == 2
