"""What `shoshin runs` and `show` print, made from the typed run record (compare: compare_view).

Each view is a function from records to text (or, with --json, to plain data); the CLI only
prints what these return. Plots (compare --plot, lr-find, the benchmark matrix) use `pyplot()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoshin.config import Config
from shoshin.errors import ShoshinError
from shoshin.runs.store import (
    TRAINING_KINDS,
    Run,
    budget_lines,
    effective_status,
    run_kind,
)
from shoshin.storage.evaluations import EvalRecord
from shoshin.storage.manifest import DamagedRecord, Manifest, manifest_to_dict

# -- building blocks -----------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns, widths fitted to the content."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    return [
        indent + "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def fmt_duration(seconds: float | None) -> str:
    """95 -> '1m35s'; None -> '-'."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt_params(n: int | None) -> str:
    """1234567 -> '1.2M'; None -> '-'."""
    if not n:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a ShoshinError saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ShoshinError("plots need matplotlib: pip install 'shoshin[plot]'") from None
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


# -- shoshin runs --------------------------------------------------------------------------


@dataclass
class RunSummary:
    """The facts `shoshin runs` lists for one run (its --json rows)."""

    id: str
    path: str
    status: str  # a recorded status, "died", or "broken" (unreadable manifest: see error)
    name: str | None = None
    kind: str | None = None  # train | finetune | reproduction | lr-find (None: broken)
    reproduction_of: str | None = None
    arch: str | None = None
    params: int | None = None
    steps: int = 0
    planned_steps: int | None = None
    stopped_on_budget: bool = False
    best_val_loss: float | None = None
    error: str | None = None
    duration_seconds: float | None = None
    start_time: str | None = None
    group: str | None = None  # the seed group (train --seeds) the run belongs to


def summarize(run: Run) -> RunSummary:
    """A run's summary; a run whose manifest cannot be read is `broken`, with the reason."""
    try:
        m = run.manifest
    except DamagedRecord as exc:
        reason = str(exc).removeprefix(f"run {run.id} is broken: ")
        return RunSummary(id=run.id, path=str(run.path), status="broken", error=reason)
    return RunSummary(
        id=run.id,
        path=str(run.path),
        status=effective_status(m, run.path),
        name=m.name,
        kind=run_kind(m),
        reproduction_of=m.reproduction_of,
        arch=m.arch,
        params=m.params,
        steps=m.steps,
        planned_steps=m.planned_steps,
        stopped_on_budget=m.stopped_on_budget,
        best_val_loss=m.best_val_loss,
        error=m.error,
        duration_seconds=m.elapsed_seconds,
        start_time=m.start_time,
        group=m.group.id if m.group else None,
    )


def runs_json(summaries: list[RunSummary]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in summaries]


def format_runs(summaries: list[RunSummary], latest: str | None = None) -> str:
    """The `shoshin runs` table; an error column appears when some run failed or is broken, and
    `latest` (the id `latest` names) is said below it."""
    rows = [
        [
            s.id,
            s.name or "-",
            f"reproduces {s.reproduction_of}" if s.reproduction_of else s.kind or "-",
            s.arch or "-",
            fmt_params(s.params),
            f"{s.steps}/{s.planned_steps} (budget)" if s.stopped_on_budget else str(s.steps),
            _loss(s.best_val_loss),
            s.status,
            fmt_duration(s.duration_seconds),
        ]
        for s in summaries
    ]
    headers = ["id", "name", "kind", "arch", "params", "steps", "best val", "status", "duration"]
    if any(s.error for s in summaries):  # why a run failed, in a last column
        headers.append("error")
        for row, s in zip(rows, summaries, strict=True):
            error = s.error or ""
            row.append(error if len(error) <= 70 else error[:67] + "...")
    lines = table(headers, rows)
    if latest:
        lines += ["", f"latest = {latest} (the newest train or finetune run with a checkpoint)"]
    return "\n".join(lines)


# -- shoshin show --------------------------------------------------------------------------


def show_json(
    run: Run, m: Manifest, config: Config, metrics: list[dict], records: list[EvalRecord]
) -> dict[str, Any]:
    """What `shoshin show --json` prints: the manifest (status as `runs` shows it), config,
    metrics and the run's evaluation records."""
    manifest = {**manifest_to_dict(m), "status": effective_status(m, run.path)}
    return {
        "manifest": manifest,
        "config": config.to_dict(),
        "metrics": metrics,
        "eval": [dataclasses.asdict(r) for r in records],
    }


def format_show(
    run: Run, m: Manifest, config: Config, metrics: list[dict], records: list[EvalRecord]
) -> str:
    """The human-readable `shoshin show`: status, command, model, data, time, code, config,
    evaluations during training and the records of shoshin eval."""
    status = effective_status(m, run.path) + (f" ({m.error})" if m.error else "")
    lines = [
        f"run       {run.id}",
        f"path      {run.path}",
        f"status    {status}",
        *(f"budget    {line}" for line in budget_lines(run.path, m, config.train.max_minutes)),
        f"command   {' '.join(m.command)}",
    ]
    kind = run_kind(m)
    if m.reproduction_of:
        lines.append(f"kind      reproduction of {m.reproduction_of}")
    elif kind not in TRAINING_KINDS:
        lines.append(f"kind      {kind}")
    lines += [
        f"started   {m.start_time}   ended {m.end_time or '-'}",
        f"model     {m.arch or '-'}, {fmt_params(m.params)} parameters",
    ]
    if m.base_model is not None:
        b = m.base_model
        lines.append(f"base      {b.source} ({b.model_type}, sha256 {b.weights_sha256[:12]})")
    if m.adapter is not None:
        a = m.adapter
        lines.append(
            f"adapter   {a.method} rank {a.rank}, alpha {a.alpha:g}, dropout {a.dropout:g}, "
            f"on {', '.join(a.target_modules)}: {fmt_params(m.trainable_params)} trainable"
        )
    if m.data is not None:
        lines.append(f"data      {m.data.source} ({m.data.kind}), tokens {m.data.tokens or None}")
    lines.append(f"steps     {m.steps} in {fmt_duration(m.elapsed_seconds)}")
    lines += _predicted_vs_actual(m)
    lines.append(
        f"val loss  best {m.best_val_loss:.4f}" if m.best_val_loss is not None else "val loss  -"
    )
    if m.git is not None:
        lines.append(f"git       {m.git.commit or '-'}" + (" (dirty)" if m.git.dirty else ""))
    source = m.code.shoshin_git if m.code else None
    if source is not None and source.commit:
        dirty = " (dirty)" if source.dirty else ""
        lines.append(f"shoshin   {source.commit}{dirty} in {source.root}")
    if m.code is not None and m.code.fingerprint is not None:
        lines.append(f"code      fingerprint {m.code.fingerprint.shoshin_source[:16]}")
    warning = m.data.overlap.get("warning") if m.data else None
    if warning:
        lines.append(f"leakage   {warning}")
    lines.append("config:")
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            lines.append(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        else:
            lines.append(f"  {section}: {values}")
    evals = [r for r in metrics if "val_loss" in r]
    if evals:
        lines.append("evaluations:")
        rows = [
            [f"  {r['step']}", f"{r['val_loss']:.4f}", _loss(r.get("train_loss"))]
            for r in evals[-10:]
        ]
        lines += table(["  step", "val loss", "train loss"], rows)
    if records:
        lines.append("eval (shoshin eval; eval/ folder):")
        rows = [
            [
                f"  {r.name}",
                r.checkpoint or "-",
                ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items()),
            ]
            for r in records
        ]
        lines += table(["  record", "checkpoint", "metrics"], rows)
    return "\n".join(lines)


def _predicted_vs_actual(m: Manifest) -> list[str]:
    """The run's own estimate (made as it started) against what it then took."""
    lines = []
    est = m.estimate
    if est is not None and est.step_seconds and m.steps and m.elapsed_seconds:
        predicted = est.step_seconds * m.steps
        lines.append(
            f"time      predicted {fmt_duration(predicted)} for {m.steps} steps, "
            f"actual {fmt_duration(m.elapsed_seconds)} "
            f"({m.elapsed_seconds / predicted:.2f}x the prediction)"
        )
    predicted_bytes = est.memory.get("training_process") if est is not None else None
    if predicted_bytes and m.peak_rss_bytes:
        lines.append(
            f"memory    predicted {predicted_bytes / 2**20:,.0f} MiB, "
            f"peak resident {m.peak_rss_bytes / 2**20:,.0f} MiB "
            f"({m.peak_rss_bytes / predicted_bytes:.2f}x)"
        )
    return lines
