"""`shoshin compare`: what differs between runs (config, code, data, environment) and by how much.

Only differences are shown (shoshin.runs.report formats them). The code of two runs is compared by fingerprint (per source file) and,
where git allows, by the actual diff between the two code states: each state is rebuilt as a git
tree from its commit + saved patch + saved untracked files, in a scratch repository that borrows
the original repository's objects, so the user's repository is never written to.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from shoshin.errors import ShoshinError
from shoshin.runs.groups import Group
from shoshin.runs.mlflow_sink import flatten
from shoshin.runs.store import Run, effective_status
from shoshin.storage.manifest import GitState, Manifest

ENV_KEYS = ("python", "torch", "cuda", "gpus", "cpu", "cpu_count", "torch_threads", "os")
DATA_KEYS = (
    "source",
    "fingerprint",
    "source_sha256",
    "tokenizer",
    "tokenizer_sha256",
    "vocab_size",
    "split.sha256",
    "split.val_fraction",
    "split.seed",
    "split.dedupe",
    "tokens.train",
    "tokens.val",
    "documents.train",
    "documents.val",
    "overlap.exact_duplicates",
    "overlap.shared_shingle_fraction",
)


def _differing(values: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: v for k, v in values.items() if any(x != v[0] for x in v[1:])}


def _by_key(dicts: list[dict[str, Any]], keys: tuple[str, ...] | None = None) -> dict[str, list]:
    flat = [flatten(d or {}) for d in dicts]
    names = keys or tuple(sorted(set().union(*flat)))
    return {k: [f.get(k) for f in flat] for k in names}


# -- code ------------------------------------------------------------------------------------


def code_states(manifest: Manifest) -> dict[str, GitState]:
    """A run's git states by label: `workdir` and, when it is another repository, `shoshin`."""
    states = {}
    if manifest.git is not None:
        states["workdir"] = manifest.git
    source = manifest.code.shoshin_git if manifest.code else None
    if source is not None and not source.same_as_workdir:
        states["shoshin"] = source
    return states


def _git(args: list[str], git_dir: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *args],
        capture_output=True,
        env={**os.environ, "GIT_DIR": str(git_dir), **(env or {})},
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode("utf-8", "replace").strip() or f"git {args[0]} failed")
    return out.stdout.decode("utf-8", "replace")


def _build_tree(scratch: Path, run: Run, label: str, state: GitState, n: int) -> str:
    """The git tree of one recorded code state: commit + patch + saved untracked files."""
    env = {"GIT_INDEX_FILE": str(scratch / f"index-{n}")}
    if state.commit:
        _git(["read-tree", state.commit], scratch, env)
    else:
        _git(["read-tree", "--empty"], scratch, env)
    if state.patch:
        _git(["apply", "--cached", "--binary", str(run.path / state.patch)], scratch, env)
    saved = run.path / "code" / f"{label}-untracked"
    for entry in state.untracked:
        if entry.saved:
            blob = _git(["hash-object", "-w", str(saved / entry.path)], scratch).strip()
            info = f"100644,{blob},{entry.path}"
            _git(["update-index", "--add", "--cacheinfo", info], scratch, env)
    return _git(["write-tree"], scratch, env).strip()


def _objects_dir(root: Path) -> Path | None:
    """The object database of the git repository at `root`, if it is still there."""
    if not root.is_dir():
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:  # no git on this machine
        return None
    return Path(out.stdout.strip()) / "objects" if out.returncode == 0 else None


def code_diff(a: Run, b: Run, label: str) -> dict[str, Any]:
    """{"diff": text} between the code states `label` of runs a and b, or {"note": why not}."""
    sa, sb = code_states(a.manifest).get(label), code_states(b.manifest).get(label)
    if not sa or not sb:
        return {"note": f"no git state for {label} in " + (a.id if not sa else b.id)}
    roots = sorted({sa.root or "", sb.root or ""})
    objects = [_objects_dir(Path(root)) for root in roots]
    if None in objects:
        missing = ", ".join(r for r, o in zip(roots, objects, strict=True) if o is None)
        return {"note": f"repository {missing} is not available to rebuild the code states"}
    with tempfile.TemporaryDirectory(prefix="shoshin-compare-") as tmp:
        scratch = Path(tmp) / "repo.git"
        subprocess.run(["git", "init", "-q", "--bare", str(scratch)], check=True)
        # Borrow the recorded repositories' objects; new objects land in the scratch repo only.
        (scratch / "objects" / "info" / "alternates").write_text("".join(f"{o}\n" for o in objects))
        try:
            tree_a = _build_tree(scratch, a, label, sa, 0)
            tree_b = _build_tree(scratch, b, label, sb, 1)
            diff = _git(["diff", "--no-color", "--stat", "-p", tree_a, tree_b], scratch)
        except RuntimeError as exc:
            return {"note": f"cannot rebuild the {label} code states ({str(exc).splitlines()[0]})"}
    return {"diff": diff}


def _changed_files(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def compare_code(runs: list[Run], manifests: list[Manifest]) -> dict[str, Any]:
    fingerprints = [m.code.fingerprint if m.code else None for m in manifests]
    states = [code_states(m) for m in manifests]
    per_run = []
    for run, fp, run_states in zip(runs, fingerprints, states, strict=True):
        config_file = fp.config_file if fp else None
        per_run.append(
            {
                "run": run.id,
                "fingerprint": fp.shoshin_source if fp else None,
                "config_file_sha256": config_file.sha256 if config_file else None,
                **{
                    f"{label}_git": {
                        "commit": s.commit,
                        "branch": s.branch,
                        "dirty": s.dirty,
                        "untracked": len(s.untracked),
                    }
                    for label, s in run_states.items()
                },
            }
        )
    files = [fp.files if fp else {} for fp in fingerprints]
    changed = {
        run.id: _changed_files(files[0], other)
        for run, other in zip(runs[1:], files[1:], strict=True)
    }
    diffs = []
    for other, other_states in zip(runs[1:], states[1:], strict=True):
        for label in sorted(set(states[0]) | set(other_states)):
            a, b = states[0].get(label), other_states.get(label)
            same = (
                a is not None
                and b is not None
                and (a.commit, a.patch_sha256, a.untracked)
                == (b.commit, b.patch_sha256, b.untracked)
            )
            if not same:
                diffs.append(
                    {
                        "repo": label,
                        "from": runs[0].id,
                        "to": other.id,
                        **code_diff(runs[0], other, label),
                    }
                )
    return {
        "runs": per_run,
        "fingerprint_differs": len({p["fingerprint"] for p in per_run}) > 1,
        "config_file_differs": len({p["config_file_sha256"] for p in per_run}) > 1,
        "changed_source_files": changed,
        "diffs": diffs,
    }


# -- metrics ---------------------------------------------------------------------------------

# The headline numbers compared with statistics, in the order they are shown (then every eval).
STAT_KEYS = (
    "final_val_loss",
    "final_val_bits_per_byte",  # BPE runs
    "final_val_bits_per_char",  # char-tokenizer runs
    "tokens_per_sec",
    "duration_seconds",
)


def run_metrics(run: Run, m: Manifest) -> dict[str, Any]:
    """The headline numbers of a run: final and best val loss, final bits per char/byte, steps,
    tokens/s, duration, and every recorded evaluation (`eval`: `heldout.loss`, ...)."""
    from shoshin.storage.evaluations import eval_metrics

    rows = run.metrics()
    evals = [r for r in rows if "val_loss" in r]
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
    last = evals[-1] if evals else {}
    bits = {f"final_{k}": v for k, v in last.items() if k.startswith("val_bits_per_")}
    return {
        "run": run.id,
        "status": effective_status(m, run.path),
        "seed": m.seed,
        "final_val_loss": last.get("val_loss"),
        "best_val_loss": min(r["val_loss"] for r in evals) if evals else None,
        **bits,  # final_val_bits_per_char (char tokenizer) or final_val_bits_per_byte (BPE)
        "steps": m.steps or max((r["step"] for r in rows), default=0),
        "tokens_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "duration_seconds": m.elapsed_seconds,
        "eval": eval_metrics(run.path),
    }


def metric_values(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per metric, the values of `rows` (run_metrics) that have it: headline keys, then evals."""
    out: dict[str, list[float]] = {}
    for key in STAT_KEYS:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = values
    for name in sorted({k for r in rows for k in r["eval"]}):
        out[name] = [r["eval"][name] for r in rows if name in r["eval"]]
    return out


def group_values(pairs: list[tuple[Run, Manifest]]) -> dict[str, list[float]]:
    """Per metric, the values of these runs (a group's completed members)."""
    return metric_values([run_metrics(r, m) for r, m in pairs])


def _subject(subject: Run | Group) -> dict[str, Any]:
    if isinstance(subject, Run):
        m = subject.manifest
        status = effective_status(m, subject.path)
        return {"id": subject.id, "kind": "run", "runs": [subject.id], "seeds": [m.seed],
                "completed": int(status == "completed"), "left_out": []}  # fmt: skip
    return {
        "id": subject.id,
        "kind": "group",
        "runs": [r.id for r in subject.runs],
        "seeds": subject.seeds,
        "completed": len(subject.completed()),
        "left_out": subject.left_out(),
    }


def statistics(subjects: list[Run | Group], names: list[str]) -> list[dict[str, Any]]:
    """Each subject after the first against the first, metric by metric (shoshin.stats).

    A group contributes its completed members only; a single run contributes itself whatever its
    status (it is the user's one run: its status is shown beside it).
    """
    from shoshin.stats import compare

    def values(subject: Run | Group) -> dict[str, list[float]]:
        pairs = subject.completed() if isinstance(subject, Group) else [(subject, subject.manifest)]
        return group_values(pairs)

    base = values(subjects[0])
    out = []
    for subject, name in zip(subjects[1:], names[1:], strict=True):
        other = values(subject)
        keys = [k for k in base if k in other] + [k for k in other if k not in base]
        rows = [compare(k, base.get(k, []), other.get(k, []), (names[0], name)) for k in keys]
        out.append({"a": subjects[0].id, "b": subject.id, "metrics": [c.to_dict() for c in rows]})
    return out


def compare_runs(subjects: list[Run | Group]) -> dict[str, Any]:
    """Everything `shoshin compare` reports, as plain data (what --json prints).

    Subjects are runs or seed groups; a group is represented by its first member in the
    config, code, data and environment sections (its members share all of them but the seed).
    """
    if len(subjects) < 2:
        raise ShoshinError("compare needs at least two runs, e.g. shoshin compare RUN_A RUN_B")
    every = [r for s in subjects for r in (s.runs if isinstance(s, Group) else [s])]
    if len({r.path.resolve() for r in every}) < len(every):
        raise ShoshinError("the same run is named twice; give different runs to compare")
    runs = [s.runs[0] if isinstance(s, Group) else s for s in subjects]
    manifests = [r.manifest for r in runs]
    environments = [dataclasses.asdict(m.environment) if m.environment else {} for m in manifests]
    packages = _differing(_by_key([e.get("packages") or {} for e in environments]))
    data = [dataclasses.asdict(m.data) if m.data else {} for m in manifests]
    config = _differing(_by_key([r.config.to_dict() for r in runs]))
    if any(isinstance(s, Group) for s in subjects):
        config.pop("train.seed", None)  # seeds differ within groups by design
    metrics = [run_metrics(r, r.manifest) for r in every]
    if len(every) == len(subjects):  # single runs: each against the first, as deltas
        for row in metrics[1:]:
            for key in ("final_val_loss", "best_val_loss", "tokens_per_sec", "duration_seconds"):
                first = metrics[0][key]
                row[f"delta_{key}"] = (
                    None if row[key] is None or first is None else row[key] - first
                )
            base = metrics[0]["eval"]
            row["delta_eval"] = {k: v - base[k] for k, v in row["eval"].items() if k in base}
    names = short_names([s.id for s in subjects])
    return {
        "runs": [s.id for s in subjects],
        "subjects": [_subject(s) for s in subjects],
        "statistics": statistics(subjects, names),
        "config": config,
        "code": compare_code(runs, manifests),
        "data": _differing(_by_key(data, DATA_KEYS)),
        "environment": _differing(_by_key(environments, ENV_KEYS)),
        "packages": packages,
        "metrics": metrics,
    }


def short_names(ids: list[str]) -> list[str]:
    """A, B, C ... as the text calls the subjects (the ids are long)."""
    return [chr(ord("A") + i) if i < 26 else f"#{i + 1}" for i in range(len(ids))]
