"""The benchmark matrix: every architecture trained on every dataset at the same budget.

Each cell is an ordinary recorded run (so `shoshin compare` works on any two cells, and `shoshin
reproduce` re-runs one); the matrix itself is a folder holding its spec and the results:

    OUT/matrix.json       what was asked (architectures, datasets, budget, overrides) and an id
    OUT/leaderboard.md    per-dataset rankings and an architecture x dataset grid
    OUT/leaderboard.json  the same figures for machines
    OUT/heatmap.png       bits per character/byte, architecture x dataset

Every cell's run carries `matrix: {id, cell}` in its manifest, so a matrix that was interrupted
finds its runs again: finished cells are kept, an interrupted cell resumes from its checkpoint,
and a cell that never got going starts afresh.
"""

from __future__ import annotations

import dataclasses
import io
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from shoshin.config import load_config
from shoshin.errors import ShoshinError
from shoshin.runs.report import pyplot
from shoshin.runs.store import Run, readable_runs
from shoshin.storage.checkpoint import read_index
from shoshin.storage.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from shoshin.storage.manifest import Manifest, MatrixCell
from shoshin.training.runner import resume, train

STATE = "matrix.json"


@dataclass
class MatrixSpec:
    """What to compare: architectures (presets or YAML configs) x datasets, at one budget."""

    archs: list[str]
    datasets: list[str]
    steps: int = 0  # training steps per cell, or
    minutes: float = 0.0  # training minutes per cell (with the preset's steps as a ceiling)
    overrides: list[str] = field(default_factory=list)  # key=value for every cell

    def validate(self) -> None:
        if not self.archs or not self.datasets:
            raise ShoshinError("a matrix needs at least one --arch and one --data")
        if (self.steps > 0) == (self.minutes > 0):
            raise ShoshinError("give the budget of each cell as --steps N or --minutes M")
        for axis in (self.archs, self.datasets):
            if len(set(axis)) != len(axis):
                raise ShoshinError(f"duplicate entries in {', '.join(axis)}")

    def cell_overrides(self, dataset: str) -> list[str]:
        """The overrides that turn an architecture's config into one cell of the matrix."""
        budget = (
            [f"train.max_steps={self.steps}", "train.max_minutes=0"]
            if self.steps
            else [f"train.max_minutes={self.minutes:g}"]
        )
        # No end-of-run sample: cells are compared on numbers. A user override can turn it back on.
        return [f"data.source={dataset}", *budget, "train.sample_tokens=0", *self.overrides]


@dataclass
class MatrixState:
    """OUT/matrix.json: the matrix's id and its spec, with every architecture and dataset so far."""

    id: str
    spec: MatrixSpec


def cell_key(arch: str, dataset: str) -> str:
    return f"{arch} x {dataset}"


def run_matrix(spec: MatrixSpec, out: Path, runs_dir: Path, log=print) -> list[dict[str, Any]]:
    """Train every missing cell (resuming interrupted ones), then write the leaderboard and heatmap."""
    spec.validate()
    configs = {  # load every config first: a typo fails now, not after an hour of training
        (arch, data): load_config(arch, spec.cell_overrides(data))
        for arch in spec.archs
        for data in spec.datasets
    }
    matrix_id = _open_state(spec, Path(out))
    for i, ((arch, data), config) in enumerate(configs.items(), start=1):
        key = cell_key(arch, data)
        found = _cell_run(runs_dir, matrix_id, key)
        where = f"[{i}/{len(configs)}] {key}"
        if found is not None and found[1].status == "completed":
            log(f"{where}: done already (run {found[0].id})")
            continue
        run = found[0] if found else None
        if run is not None and read_index(run.path / "checkpoints").get("latest"):
            log(f"{where}: resuming run {run.id}")
            resume(run, log=log)
            continue
        log(f"{where}: training")
        command = ["shoshin", "train", arch, *spec.cell_overrides(data)]
        train(
            config,
            runs_dir,
            command=command,
            log=log,
            manifest={"matrix": MatrixCell(matrix_id, key, arch, data)},
        )
    cells = [
        _cell_result(arch, data, _cell_run(runs_dir, matrix_id, cell_key(arch, data)))
        for arch in spec.archs
        for data in spec.datasets
    ]
    write_leaderboard(cells, spec, Path(out))
    log(f"leaderboard: {Path(out) / 'leaderboard.md'}")
    return cells


def _open_state(spec: MatrixSpec, out: Path) -> str:
    """The matrix id recorded in OUT/matrix.json (created on the first run of the matrix).

    Cells may be added to a matrix later (more architectures or datasets), but its budget and
    overrides are fixed: cells trained differently would not be comparable.
    """
    path = out / STATE
    if path.exists():
        try:
            state = pydantic.TypeAdapter(MatrixState).validate_json(path.read_bytes())
        except (OSError, pydantic.ValidationError):
            raise ShoshinError(f"{path} is corrupt; remove it to start the matrix afresh") from None
        old = state.spec
        if (old.steps, old.minutes, old.overrides) != (spec.steps, spec.minutes, spec.overrides):
            raise ShoshinError(
                f"the matrix in {out} was run with a different budget or overrides "
                f"(steps={old.steps}, minutes={old.minutes}, overrides={old.overrides}); "
                "use another --out"
            )
        archs = old.archs + [a for a in spec.archs if a not in old.archs]
        datasets = old.datasets + [d for d in spec.datasets if d not in old.datasets]
        matrix_id = state.id
    else:
        archs, datasets, matrix_id = spec.archs, spec.datasets, secrets.token_hex(4)
    grown = dataclasses.replace(spec, archs=archs, datasets=datasets)
    atomic_write_json(path, dataclasses.asdict(MatrixState(matrix_id, grown)))
    return matrix_id


def _cell_run(runs_dir: Path, matrix_id: str, key: str) -> tuple[Run, Manifest] | None:
    """The run of one cell and its manifest: a completed one if any, else the latest attempt."""
    runs = [
        (run, m)
        for run, m in readable_runs(runs_dir)
        if m.matrix is not None and (m.matrix.id, m.matrix.cell) == (matrix_id, key)
    ]
    completed = [(run, m) for run, m in runs if m.status == "completed"]
    return (completed or runs or [None])[-1]


def _cell_result(arch: str, data: str, found: tuple[Run, Manifest] | None) -> dict[str, Any]:
    """One leaderboard row from a cell's run."""
    if found is None:
        raise ShoshinError(f"cell {cell_key(arch, data)} has no run; run the matrix again")
    from shoshin.storage.evaluations import eval_metrics

    run, m = found
    evals = [r for r in run.metrics() if "val_loss" in r]
    last = evals[-1] if evals else {}
    unit = next((k[len("val_bits_per_") :] for k in last if k.startswith("val_bits_per_")), None)
    elapsed = m.elapsed_seconds or 0
    return {
        "arch": arch,
        "data": data,
        "run": run.id,
        "status": m.status,
        "params": m.params,
        "steps": m.steps,
        "val_loss": m.final_val_loss,
        "bits_per_unit": last.get(f"val_bits_per_{unit}") if unit else None,
        "unit": unit,  # char (char tokenizer) or byte (BPE)
        "tokens_per_sec": m.tokens_seen / elapsed if elapsed else None,
        "train_seconds": elapsed,
        "eval": eval_metrics(run.path, headline=True),  # end of training and later shoshin eval
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_leaderboard(cells: list[dict[str, Any]], spec: MatrixSpec, out: Path) -> None:
    """leaderboard.md, leaderboard.json and heatmap.png in `out`."""
    budget = f"{spec.steps} steps" if spec.steps else f"{spec.minutes:g} minutes"
    overrides = " ".join(spec.overrides) or "none"
    lines = [
        "# Benchmark matrix",
        "",
        f"Budget per cell: {budget}; overrides: {overrides}. Lower loss and bits are better; "
        "bits are per character (char tokenizer) or per UTF-8 byte (BPE), comparable across "
        "tokenizers where the text is ASCII. Columns named `heldout.*` score whole validation "
        "conversations (or texts) at the end of training, `lm-eval.*` are harness tasks that "
        "`shoshin eval` recorded for a cell's run.",
        "",
    ]
    for data in spec.datasets:
        ranked = sorted(
            (c for c in cells if c["data"] == data),
            key=lambda c: math.inf if c["val_loss"] is None else c["val_loss"],
        )
        evals = sorted({k for c in ranked for k in c.get("eval", {})})  # columns of shoshin eval
        lines += [
            f"## {data}",
            "",
            "| rank | architecture | val loss | bits | "
            + "".join(f"{k} | " for k in evals)
            + "tokens/s | params | steps | run |",
            "|---:|---|---:|---:|" + "---:|" * len(evals) + "---:|---:|---:|---|",
        ]
        for rank, c in enumerate(ranked, start=1):
            bits = f"{_fmt(c['bits_per_unit'], '.4f')} /{c['unit']}" if c["unit"] else "-"
            scores = "".join(f"{_fmt(c.get('eval', {}).get(k), '.4f')} | " for k in evals)
            lines.append(
                f"| {rank} | {c['arch']} | {_fmt(c['val_loss'], '.4f')} | {bits} | {scores}"
                f"{_fmt(c['tokens_per_sec'], ',.0f')} | {_fmt(c['params'], ',')} | "
                f"{c['steps']} | {c['run']} |"
            )
        lines.append("")
    lines += [
        "## Bits per character/byte, architecture x dataset",
        "",
        "| architecture | " + " | ".join(spec.datasets) + " |",
        "|---|" + "---:|" * len(spec.datasets),
    ]
    grid = {(c["arch"], c["data"]): c for c in cells}
    for arch in spec.archs:
        row = [_fmt(grid[arch, d]["bits_per_unit"], ".4f") for d in spec.datasets]
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    lines.append("")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.md", "\n".join(lines))
    atomic_write_json(out / "leaderboard.json", {"budget": budget, "cells": cells})
    atomic_write_bytes(out / "heatmap.png", _heatmap_png(cells, spec))


def _heatmap_png(cells: list[dict[str, Any]], spec: MatrixSpec) -> bytes:
    plt = pyplot()
    grid = {(c["arch"], c["data"]): c["bits_per_unit"] for c in cells}
    values = [[grid[a, d] if grid[a, d] is not None else math.nan for d in spec.datasets]
              for a in spec.archs]  # fmt: skip
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(spec.datasets), 1.4 + 0.6 * len(spec.archs)))
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")  # brighter = fewer bits = better
    ax.set_xticks(range(len(spec.datasets)), [Path(d).name for d in spec.datasets])
    ax.set_yticks(range(len(spec.archs)), spec.archs)
    low, high = image.get_clim()
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not math.isnan(value):
                dark_cell = value > (low + high) / 2  # viridis_r is dark at the high end
                color = "w" if dark_cell else "k"
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax, label="val bits per char/byte")
    ax.set_title("benchmark matrix: validation bits (lower is better)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
