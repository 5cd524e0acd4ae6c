"""`shoshin compare`: what differs between runs (config, code, data, environment) and by how much.

Only differences are shown. The code of two runs is compared by fingerprint (per source file) and,
where git allows, by the actual diff between the two code states: each state is rebuilt as a git
tree from its commit + saved patch + saved untracked files, in a scratch repository that borrows
the original repository's objects, so the user's repository is never written to.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from shoshin.errors import ShoshinError
from shoshin.runs.mlflow_sink import flatten
from shoshin.runs.store import Run, effective_status

MAX_DIFF_LINES = 400  # of a code diff in the text view; --json has all of it
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


def code_states(run: Run) -> dict[str, dict[str, Any]]:
    """A run's git states by label: `workdir` and, when it is another repository, `shoshin`."""
    manifest = run.manifest
    states = {}
    if manifest.get("git"):
        states["workdir"] = manifest["git"]
    source = (manifest.get("code") or {}).get("shoshin_git")
    if source and not source.get("same_as_workdir"):
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


def _build_tree(scratch: Path, run: Run, label: str, state: dict[str, Any], n: int) -> str:
    """The git tree of one recorded code state: commit + patch + saved untracked files."""
    env = {"GIT_INDEX_FILE": str(scratch / f"index-{n}")}
    if state.get("commit"):
        _git(["read-tree", state["commit"]], scratch, env)
    else:
        _git(["read-tree", "--empty"], scratch, env)
    if state.get("patch"):
        _git(["apply", "--cached", "--binary", str(run.path / state["patch"])], scratch, env)
    saved = run.path / "code" / f"{label}-untracked"
    for entry in state.get("untracked", []):
        if entry.get("saved"):
            blob = _git(["hash-object", "-w", str(saved / entry["path"])], scratch).strip()
            info = f"100644,{blob},{entry['path']}"
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
    sa, sb = code_states(a).get(label), code_states(b).get(label)
    if not sa or not sb:
        return {"note": f"no git state for {label} in " + (a.id if not sa else b.id)}
    roots = sorted({sa["root"], sb["root"]})
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


def compare_code(runs: list[Run]) -> dict[str, Any]:
    manifests = [r.manifest for r in runs]
    fingerprints = [(m.get("code") or {}).get("fingerprint") or {} for m in manifests]
    per_run = []
    for run, fp in zip(runs, fingerprints, strict=True):
        states = code_states(run)
        per_run.append(
            {
                "run": run.id,
                "fingerprint": fp.get("shoshin_source"),
                "config_file_sha256": (fp.get("config_file") or {}).get("sha256"),
                **{
                    f"{label}_git": {
                        "commit": s.get("commit"),
                        "branch": s.get("branch"),
                        "dirty": s.get("dirty"),
                        "untracked": len(s.get("untracked", [])),
                    }
                    for label, s in states.items()
                },
            }
        )
    base = fingerprints[0].get("files") or {}
    changed = {
        run.id: _changed_files(base, fp.get("files") or {})
        for run, fp in zip(runs[1:], fingerprints[1:], strict=True)
    }
    states = [code_states(r) for r in runs]
    diffs = []
    for other, other_states in zip(runs[1:], states[1:], strict=True):
        for label in sorted(set(states[0]) | set(other_states)):
            a, b = states[0].get(label, {}), other_states.get(label, {})
            same = (
                a.get("commit") == b.get("commit")
                and a.get("patch_sha256") == b.get("patch_sha256")
                and a.get("untracked") == b.get("untracked")
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


def run_metrics(run: Run) -> dict[str, Any]:
    """The headline numbers of a run: final and best val loss, steps, tokens/s, duration, and
    every recorded evaluation (`eval`: `heldout.loss`, `lm-eval.<task>.acc`, ...)."""
    from shoshin.evaluation.record import eval_metrics

    m = run.manifest
    rows = run.metrics()
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
    return {
        "run": run.id,
        "status": effective_status(m),
        "final_val_loss": vals[-1] if vals else None,
        "best_val_loss": min(vals) if vals else None,
        "steps": m.get("steps", max((r["step"] for r in rows), default=0)),
        "tokens_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "duration_seconds": m.get("elapsed_seconds"),
        "eval": eval_metrics(run.path),
    }


def compare_runs(runs: list[Run]) -> dict[str, Any]:
    """Everything `shoshin compare` reports, as plain data (what --json prints)."""
    if len(runs) < 2:
        raise ShoshinError("compare needs at least two runs, e.g. shoshin compare RUN_A RUN_B")
    if len({r.path.resolve() for r in runs}) < len(runs):
        raise ShoshinError("the same run is named twice; give different runs to compare")
    manifests = [r.manifest for r in runs]
    environments = [m.get("environment") or {} for m in manifests]
    packages = _differing(_by_key([e.get("packages") or {} for e in environments]))
    metrics = [run_metrics(r) for r in runs]
    for row in metrics[1:]:
        for key in ("final_val_loss", "best_val_loss", "tokens_per_sec", "duration_seconds"):
            first = metrics[0][key]
            row[f"delta_{key}"] = None if row[key] is None or first is None else row[key] - first
        base = metrics[0]["eval"]
        row["delta_eval"] = {k: v - base[k] for k, v in row["eval"].items() if k in base}
    return {
        "runs": [r.id for r in runs],
        "config": _differing(_by_key([r.config.to_dict() for r in runs])),
        "code": compare_code(runs),
        "data": _differing(_by_key([m.get("data") for m in manifests], DATA_KEYS)),
        "environment": _differing(_by_key(environments, ENV_KEYS)),
        "packages": packages,
        "metrics": metrics,
    }


# -- text ------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    return "-" if value is None else str(value)


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    return [
        indent + "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def _section(title: str, values: dict[str, list[Any]], ids: list[str]) -> list[str]:
    if not values:
        return [f"{title}: identical"]
    rows = [[key, *(_short(v) for v in vs)] for key, vs in values.items()]
    return [f"{title}:", *_table(["key", *ids], rows)]


def _git_cell(state: dict[str, Any] | None) -> str:
    if not state:
        return "-"
    commit = (state.get("commit") or "no commit")[:10]
    return commit + (" (dirty)" if state.get("dirty") else "")


def format_report(report: dict[str, Any]) -> str:
    """The human-readable side-by-side view of compare_runs()."""
    ids = report["runs"]
    short_ids = [i if len(i) <= 28 else i[:28] for i in ids]
    lines = ["runs: " + "  ".join(ids), ""]
    lines += _section("config (keys that differ)", report["config"], short_ids)
    lines.append("")

    code = report["code"]
    labels = sorted({k for p in code["runs"] for k in p if k.endswith("_git")})
    rows = [["fingerprint", *(_short(p["fingerprint"]) for p in code["runs"])]]
    rows += [[label, *(_git_cell(p.get(label)) for p in code["runs"])] for label in labels]
    verdict = "differ" if code["fingerprint_differs"] else "identical"
    lines += [f"code (fingerprints {verdict}):", *_table(["", *short_ids], rows)]
    for run_id, files in code["changed_source_files"].items():
        if files:
            lines.append(f"  shoshin source files that differ in {run_id}: {', '.join(files)}")
    if code["config_file_differs"]:
        lines.append("  the config files differ")
    for d in code["diffs"]:
        lines.append(f"  {d['repo']} code, {d['from']} -> {d['to']}:")
        if "diff" in d:
            text = d["diff"].rstrip() or "(same files: the recorded states are equivalent)"
            diff_lines = text.splitlines()
            lines += ["    " + line for line in diff_lines[:MAX_DIFF_LINES]]
            if len(diff_lines) > MAX_DIFF_LINES:
                lines.append(f"    ... {len(diff_lines) - MAX_DIFF_LINES} more lines (see --json)")
        else:
            lines.append(f"    {d['note']}")
    lines.append("")

    lines += _section("data", report["data"], short_ids)
    lines += _section("environment", report["environment"], short_ids)
    if report["packages"]:
        lines += _section("packages that differ", report["packages"], short_ids)
    lines.append("")

    rows = []
    for i, m in enumerate(report["metrics"]):

        def cell(key: str, fmt: str, m: dict = m, i: int = i) -> str:
            if m[key] is None:
                return "-"
            text = format(m[key], fmt)
            delta = m.get(f"delta_{key}")
            return text if i == 0 or delta is None else f"{text} ({delta:+{fmt}})"

        rows.append(
            [
                short_ids[i],
                m["status"],
                str(m["steps"]),
                cell("final_val_loss", ".4f"),
                cell("best_val_loss", ".4f"),
                cell("tokens_per_sec", ",.0f"),
                cell("duration_seconds", ".1f"),
            ]
        )
    headers = ["run", "status", "steps", "final val", "best val", "tokens/s", "seconds"]
    lines += ["metrics (Δ against the first run):", *_table(headers, rows)]
    names = sorted({k for m in report["metrics"] for k in m["eval"]})
    if names:
        rows = []
        for name in names:
            cells = []
            for i, m in enumerate(report["metrics"]):
                value, delta = m["eval"].get(name), m.get("delta_eval", {}).get(name)
                text = "-" if value is None else f"{value:.4f}"
                cells.append(text if i == 0 or delta is None else f"{text} ({delta:+.4f})")
            rows.append([name, *cells])
        lines += ["evaluations (shoshin eval; Δ against the first run):"]
        lines += _table(["metric", *short_ids], rows)
    return "\n".join(lines)


def plot_runs(runs: list[Run], path: Path) -> None:
    """Overlay the train (solid) and val (dashed) loss curves of the runs in one PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ShoshinError("--plot needs matplotlib: pip install 'shoshin[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        rows = run.metrics()
        train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{run.id} train")
        if val:
            ax.plot(*zip(*val, strict=True), "--o", color=color, ms=3, label=f"{run.id} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
