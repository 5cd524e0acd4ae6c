"""What `shoshin compare` prints and draws, from shoshin.runs.compare.compare_runs().

The answer comes first: each metric of each subject (a run, or a seed group as mean ± sd (n)),
with which direction is better, the difference and, for groups, its 95% interval, p-value and a
verdict in words. Then what differs in config and code, then data, then the environment folded
into a count (all of it with --verbose), then every run's own numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoshin.runs.compare import short_names
from shoshin.runs.report import fmt_duration, pyplot, table
from shoshin.stats import fmt_p, lower_is_better, summarize

MAX_DIFF_LINES = 400  # of a code diff with --verbose; --json has all of it
SHORT_DIFF_LINES = 60  # without --verbose
COUNTS = ("wins", "losses", "ties", "replies", "tokens", "documents", "steps")
LABELS = {
    "final_val_loss": "final val loss",
    "final_val_bits_per_byte": "final val bits/byte",
    "final_val_bits_per_char": "final val bits/char",
    "tokens_per_sec": "tokens/s",
    "duration_seconds": "train seconds",
}


def label(metric: str, lower: bool) -> str:
    return f"{LABELS.get(metric, metric)} {'↓' if lower else '↑'}"


def number_format(metric: str, values: list[float]) -> str:
    """Counts as integers, speeds without decimals, times to 0.1 s (0.01 s under 10 s), the rest
    to 4 decimals."""
    if metric.rsplit(".", 1)[-1] in COUNTS and all(float(v).is_integer() for v in values):
        return ",.0f"
    if metric == "duration_seconds":
        return ".2f" if all(abs(v) < 10 for v in values) else ".1f"
    return {"tokens_per_sec": ",.0f"}.get(metric, ".4f")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    return "-" if value is None else str(value)


def _section(title: str, values: dict[str, list[Any]], ids: list[str]) -> list[str]:
    if not values:
        return [f"{title}: identical"]
    rows = [[key, *(_short(v) for v in vs)] for key, vs in values.items()]
    return [f"{title}:", *table(["key", *ids], rows, indent="  ")]


def _subject_line(name: str, s: dict[str, Any]) -> str:
    if s["kind"] == "run":
        return f"{name}  {s['id']}  (one run, seed {s['seeds'][0]})"
    seeds = ", ".join(str(x) for x in s["seeds"])
    return (
        f"{name}  {s['id']}  (group of {len(s['seeds'])} runs, seeds {seeds}; "
        f"{s['completed']} completed)"
    )


def result_lines(report: dict[str, Any]) -> list[str]:
    """The subjects, then per pair a table of the metrics and the verdicts."""
    names = short_names(report["runs"])
    lines = [_subject_line(n, s) for n, s in zip(names, report["subjects"], strict=True)]
    for n, s in zip(names, report["subjects"], strict=True):
        lines += [f"   left out of {n}: {why}" for why in s["left_out"]]
    single = all(s["kind"] == "run" for s in report["subjects"])
    for pair in report["statistics"]:
        a, b = names[report["runs"].index(pair["a"])], names[report["runs"].index(pair["b"])]
        lines += ["", f"result: {b} against {a} (↓ lower is better, ↑ higher is better)"]
        rows, verdicts = [], []
        for c in pair["metrics"]:
            fmt = number_format(c["metric"], c["a"]["values"] + c["b"]["values"])
            sides = [summarize(c[k]["values"]).text(fmt) for k in ("a", "b")]
            diff = "-" if c["difference"] is None else format(c["difference"], "+" + fmt)
            if c["ci"] is not None:
                diff += f" [{c['ci'][0]:+{fmt}}, {c['ci'][1]:+{fmt}}]"
            p = "-" if c["p"] is None else fmt_p(c["p"]).removeprefix("p = ")
            rows.append([label(c["metric"], c["lower_is_better"]), *sides, diff, p])
            if not single and c["p"] is not None:
                verdicts.append(f"  {LABELS.get(c['metric'], c['metric'])}: {c['verdict']}")
        headers = ["metric", a, b, f"{b} - {a}" + ("" if single else " [95% CI]"), "p"]
        lines += table(headers, rows, indent="  ")
        if single:
            lines.append(
                "  one run per side cannot separate the change from seed noise; "
                "train each side with --seeds 3 or more for a verdict"
            )
        else:
            lines += verdicts or [f"  {pair['metrics'][0]['verdict']}"] if pair["metrics"] else []
    return lines


def code_lines(code: dict[str, Any], ids: list[str], verbose: bool) -> list[str]:
    labels = sorted({k for p in code["runs"] for k in p if k.endswith("_git")})
    rows = [["fingerprint", *(_short(p["fingerprint"]) for p in code["runs"])]]
    rows += [[lab, *(_git_cell(p.get(lab)) for p in code["runs"])] for lab in labels]
    verdict = "differ" if code["fingerprint_differs"] else "identical"
    lines = [f"code (fingerprints {verdict}):", *table(["", *ids], rows, indent="  ")]
    for run_id, files in code["changed_source_files"].items():
        if files:
            lines.append(f"  shoshin source files that differ in {run_id}: {', '.join(files)}")
    if code["config_file_differs"]:
        lines.append("  the config files differ")
    limit = MAX_DIFF_LINES if verbose else SHORT_DIFF_LINES
    for d in code["diffs"]:
        lines.append(f"  {d['repo']} code, {d['from']} -> {d['to']}:")
        if "diff" not in d:
            lines.append(f"    {d['note']}")
            continue
        text = d["diff"].rstrip() or "(same files: the recorded states are equivalent)"
        diff_lines = text.splitlines()
        lines += ["    " + line for line in diff_lines[:limit]]
        if len(diff_lines) > limit:
            more = "--json" if verbose else "--verbose or --json"
            lines.append(f"    ... {len(diff_lines) - limit} more lines (see {more})")
    return lines


def _git_cell(state: dict[str, Any] | None) -> str:
    if not state:
        return "-"
    commit = (state.get("commit") or "no commit")[:10]
    return commit + (" (dirty)" if state.get("dirty") else "")


def environment_lines(report: dict[str, Any], ids: list[str], verbose: bool) -> list[str]:
    """The environment and packages: in full with --verbose, else folded into a count."""
    env, packages = report["environment"], report["packages"]
    if verbose:
        lines = _section("environment", env, ids)
        return lines + (_section("packages that differ", packages, ids) if packages else [])
    if not env and not packages:
        return ["environment: identical (python, torch, CPU, threads, packages)"]
    parts = []
    if env:
        parts.append(f"{len(env)} environment facts differ ({', '.join(env)})")
    if packages:
        names = ", ".join(list(packages)[:5]) + (", ..." if len(packages) > 5 else "")
        parts.append(f"{len(packages)} packages differ ({names})")
    return [f"environment: {'; '.join(parts)}; --verbose lists them"]


def runs_lines(report: dict[str, Any]) -> list[str]:
    """Every run's own numbers (for single runs, Δ against the first)."""
    rows = []
    for m in report["metrics"]:

        def cell(key: str, fmt: str, m: dict = m) -> str:
            if m[key] is None:
                return "-"
            delta = m.get(f"delta_{key}")
            return format(m[key], fmt) + ("" if delta is None else f" ({delta:+{fmt}})")

        rows.append([m["run"], str(m["seed"]), m["status"], str(m["steps"]),
                     cell("final_val_loss", ".4f"), cell("best_val_loss", ".4f"),
                     cell("tokens_per_sec", ",.0f"), fmt_duration(m["duration_seconds"])])  # fmt: skip
    headers = ["run", "seed", "status", "steps", "final val", "best val", "tokens/s", "time"]
    return ["runs:", *table(headers, rows, indent="  ")]


def format_compare(report: dict[str, Any], verbose: bool = False) -> str:
    """The human-readable `shoshin compare`: the answer first, then why the runs differ."""
    names = short_names(report["runs"])
    lines = result_lines(report)
    lines += ["", *_section("config (keys that differ)", report["config"], names)]
    lines += ["", *code_lines(report["code"], names, verbose)]
    lines += ["", *_section("data", report["data"], names)]
    lines += environment_lines(report, names, verbose)
    lines += ["", *runs_lines(report)]
    return "\n".join(lines)


def plot_compare(subjects: list[Any], report: dict[str, Any], path: Path) -> None:
    """Write compare_figure() as a PNG at `path`."""
    plt = pyplot()
    fig = compare_figure(subjects, report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_figure(subjects: list[Any], report: dict[str, Any]) -> Any:
    """Learning curves per subject (mean line, min-max band over its runs) and, beside them, the
    final val loss of every run as points; the title names the subjects and the verdict."""
    import numpy as np

    from shoshin.runs.groups import Group

    plt = pyplot()
    fig, (curves, finals) = plt.subplots(
        1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1]}
    )
    names = short_names(report["runs"])
    for i, (subject, name) in enumerate(zip(subjects, names, strict=True)):
        color = f"C{i % 10}"
        pairs = subject.completed() if isinstance(subject, Group) else [(subject, None)]
        runs = [r for r, _ in pairs] or (subject.runs if isinstance(subject, Group) else [subject])
        histories = [r.metrics() for r in runs]
        evals = [sum("val_loss" in row for row in h) for h in histories]
        key = "val_loss" if min(evals, default=0) >= 2 else "train_loss"
        curves_by_step = [{row["step"]: row[key] for row in h if key in row} for h in histories]
        steps = sorted(set.intersection(*(set(c) for c in curves_by_step))) if runs else []
        if steps:
            grid = np.array([[c[s] for s in steps] for c in curves_by_step])
            curves.plot(steps, grid.mean(axis=0), color=color, label=f"{name}: {subject.id}")
            curves.fill_between(steps, grid.min(axis=0), grid.max(axis=0), color=color, alpha=0.2)
        final = [row["final_val_loss"] for row in report["metrics"]
                 if row["run"] in {r.id for r in runs} and row["final_val_loss"] is not None]  # fmt: skip
        finals.scatter([i] * len(final), final, color=color, zorder=3)
        if final:
            finals.hlines(float(np.mean(final)), i - 0.25, i + 0.25, color=color)
        curves.set_ylabel(key.replace("_", " ") + " (mean, min-max band)")
    curves.set_xlabel("step")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    finals.set_xticks(range(len(names)), names)
    finals.set_xlim(-0.6, len(names) - 0.4)
    finals.set_ylabel("final val loss per run (lower is better)")
    finals.grid(alpha=0.3)
    verdict = next(
        (c["verdict"] for pair in report["statistics"] for c in pair["metrics"]
         if c["metric"] == "final_val_loss"), "",
    )  # fmt: skip
    fig.suptitle(f"{' vs '.join(names)}: {verdict}" if verdict else " vs ".join(names), fontsize=10)
    fig.tight_layout()
    return fig


# -- groups in `shoshin runs` and `shoshin show GROUP` ---------------------------------------


def _final_loss(group: Any) -> str:
    from shoshin.runs.compare import group_values

    values = group_values(group.completed()).get("final_val_loss", [])
    return summarize(values).text(".4f") if values else "-"


def format_groups(groups: list[Any]) -> str:
    """The groups table under `shoshin runs`: members completed of planned, final val loss."""
    rows = []
    for g in groups:
        statuses = g.statuses()
        others = sorted({s for s in statuses if s != "completed"})
        state = f"{len(g.completed())}/{len(g.seeds)} completed"
        if others or g.missing_seeds():
            state += " (" + ", ".join(others + ["missing"] * bool(g.missing_seeds())) + ")"
        seeds = ",".join(str(s) for s in g.seeds)
        rows.append([g.id, seeds, state, _final_loss(g)])
    return "\n".join(table(["group", "seeds", "runs", "final val loss"], rows))


def group_json(group: Any) -> dict[str, Any]:
    """What `shoshin show GROUP --json` prints."""
    from dataclasses import asdict

    from shoshin.runs.compare import group_values, run_metrics

    return {
        "group": group.id,
        "seeds": group.seeds,
        "command": group.command,
        "runs": [run_metrics(r, m) for r, m in zip(group.runs, group.manifests, strict=True)],
        "left_out": group.left_out(),
        "statistics": {k: asdict(summarize(v)) for k, v in group_values(group.completed()).items()},
    }


def format_group(group: Any) -> str:
    """`shoshin show GROUP`: the command, each metric as mean ± sd (n), the members, and any
    member left out of the statistics."""
    data = group_json(group)
    lines = [
        f"group     {group.id}",
        f"command   {' '.join(group.command) or '- (named on the command line)'}",
        f"seeds     {', '.join(str(s) for s in group.seeds)}",
        "",
        "over the completed runs (mean ± sd (n); ↓ lower is better, ↑ higher is better):",
    ]
    rows = []
    for metric, s in data["statistics"].items():
        fmt = number_format(metric, s["values"])
        rows.append([label(metric, lower_is_better(metric)), summarize(s["values"]).text(fmt)])
    lines += table(["metric", "value"], rows, indent="  ") if rows else ["  (none completed)"]
    lines += [f"  left out: {why}" for why in data["left_out"]]
    lines += ["", *runs_lines({"metrics": data["runs"]})]
    return "\n".join(lines)


def format_eval_group(records: list[Any]) -> str:
    """After `eval GROUP`: each recorded metric over the members, mean ± sd (n)."""
    values: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.metrics.items():
            values.setdefault(f"{record.name.split('.')[0]}.{key}", []).append(value)
    rows = [
        [label(k, lower_is_better(k)), summarize(v).text(number_format(k, v))]
        for k, v in values.items()
    ]
    return "\n".join(["over the group (mean ± sd (n)):", *table(["metric", "value"], rows, "  ")])
