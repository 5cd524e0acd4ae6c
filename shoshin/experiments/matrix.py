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
import hashlib
import io
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from shoshin.config import load_config
from shoshin.errors import ShoshinError
from shoshin.experiments.seeds import member_config
from shoshin.runs.groups import PREFIX
from shoshin.runs.report import pyplot
from shoshin.runs.store import Run, readable_runs
from shoshin.stats import ALPHA, compare, summarize
from shoshin.storage.checkpoint import read_index
from shoshin.storage.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from shoshin.storage.manifest import GroupLink, Manifest, MatrixCell
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
    seeds: int = 1  # runs per cell (train.seed, +1, ...): cells then show mean ± sd

    def validate(self) -> None:
        if not self.archs or not self.datasets:
            raise ShoshinError("a matrix needs at least one --arch and one --data")
        if self.seeds < 1:
            raise ShoshinError("--seeds must be at least 1")
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
        seeds = [config.train.seed + k for k in range(spec.seeds)]
        found = _cell_runs(runs_dir, matrix_id, key)
        command = ["shoshin", "train", arch, *spec.cell_overrides(data)]
        link = None
        if spec.seeds > 1:  # the cell's runs are a seed group: `shoshin compare` takes it whole
            gid = f"{PREFIX}matrix-{matrix_id}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
            link = GroupLink(gid, seeds, [*command, "--seeds", str(spec.seeds)])
        for seed in seeds:
            where = f"[{i}/{len(configs)}] {key}" + (f", seed {seed}" if spec.seeds > 1 else "")
            _train_cell(found.get(seed), member_config(config, seed), runs_dir, where, log,
                        [*command, *([f"train.seed={seed}"] if link else [])],
                        {"matrix": MatrixCell(matrix_id, key, arch, data), "group": link})  # fmt: skip
    cells = [
        _cell_result(arch, data, _cell_runs(runs_dir, matrix_id, cell_key(arch, data)))
        for arch in spec.archs
        for data in spec.datasets
    ]
    mark_ties(cells)
    write_leaderboard(cells, spec, Path(out))
    log(f"leaderboard: {Path(out) / 'leaderboard.md'}")
    return cells


def _train_cell(found, config, runs_dir: Path, where: str, log, command, fields) -> None:
    """Train one run of a cell, unless it is done; resume it if it was interrupted."""
    if found is not None and found[1].status == "completed":
        log(f"{where}: done already (run {found[0].id})")
        return
    run = found[0] if found else None
    if run is not None and read_index(run.path / "checkpoints").get("latest"):
        log(f"{where}: resuming run {run.id}")
        resume(run, log=log)
        return
    log(f"{where}: training")
    train(config, runs_dir, command=command, log=log, manifest=fields)


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


def _cell_runs(runs_dir: Path, matrix_id: str, key: str) -> dict[int, tuple[Run, Manifest]]:
    """The runs of one cell by seed, each a completed one if any, else the latest attempt."""
    by_seed: dict[int, list[tuple[Run, Manifest]]] = {}
    for run, m in readable_runs(runs_dir):
        if m.matrix is not None and (m.matrix.id, m.matrix.cell) == (matrix_id, key):
            by_seed.setdefault(m.seed or 0, []).append((run, m))
    out = {}
    for seed, runs in by_seed.items():
        completed = [(run, m) for run, m in runs if m.status == "completed"]
        out[seed] = (completed or runs)[-1]
    return out


def _cell_result(arch: str, data: str, found: dict[int, tuple[Run, Manifest]]) -> dict[str, Any]:
    """One leaderboard row from a cell's runs: each figure as the mean over its seeds, with the
    standard deviation of the loss and bits where there are several."""
    if not found:
        raise ShoshinError(f"cell {cell_key(arch, data)} has no run; run the matrix again")
    rows = [_run_result(run, m) for _, (run, m) in sorted(found.items())]
    done = [r for r in rows if r["status"] == "completed"] or rows

    def mean(key: str) -> float | None:
        return summarize([r[key] for r in done if r[key] is not None]).mean

    losses = summarize([r["val_loss"] for r in done if r["val_loss"] is not None])
    bits = summarize([r["bits_per_unit"] for r in done if r["bits_per_unit"] is not None])
    evals = {k: v for k, v in done[0]["eval"].items() if all(k in r["eval"] for r in done)}
    return {
        "arch": arch,
        "data": data,
        "run": ",".join(r["run"] for r in rows),
        "group": next((m.group.id for _, m in found.values() if m.group), None),
        "status": "completed" if all(r["status"] == "completed" for r in rows) else "incomplete",
        "params": rows[0]["params"],
        "steps": rows[0]["steps"],
        "seeds": len(rows),
        "val_loss": losses.mean,
        "val_loss_sd": losses.sd,
        "val_losses": losses.values,
        "bits_per_unit": bits.mean,
        "bits_sd": bits.sd,
        "unit": rows[0]["unit"],  # char (char tokenizer) or byte (BPE)
        "tokens_per_sec": mean("tokens_per_sec"),
        "train_seconds": mean("train_seconds"),
        "eval": {k: sum(r["eval"][k] for r in done) / len(done) for k in evals},
    }


def _run_result(run: Run, m: Manifest) -> dict[str, Any]:
    from shoshin.storage.evaluations import eval_metrics

    evals = [r for r in run.metrics() if "val_loss" in r]
    last = evals[-1] if evals else {}
    unit = next((k[len("val_bits_per_") :] for k in last if k.startswith("val_bits_per_")), None)
    elapsed = m.elapsed_seconds or 0
    return {
        "run": run.id,
        "status": m.status,
        "params": m.params,
        "steps": m.steps,
        "val_loss": m.final_val_loss,
        "bits_per_unit": last.get(f"val_bits_per_{unit}") if unit else None,
        "unit": unit,
        "tokens_per_sec": m.tokens_seen / elapsed if elapsed else None,
        "train_seconds": elapsed,
        "eval": eval_metrics(run.path, headline=True),  # end of training and later shoshin eval
    }


def mark_ties(cells: list[dict[str, Any]]) -> None:
    """Per dataset, mark the cells whose val loss is not significantly different from the
    leader's (Welch's t-test, p >= 0.05): `tied_with_leader` and `p_vs_leader`. Cells of one
    seed cannot be tested and are not marked."""
    for data in {c["data"] for c in cells}:
        ranked = sorted((c for c in cells if c["data"] == data), key=_rank_key)
        leader = ranked[0]
        for cell in ranked:
            cell["tied_with_leader"], cell["p_vs_leader"] = False, None
        for cell in ranked[1:]:
            result = compare("val_loss", leader["val_losses"], cell["val_losses"])
            if result.p is not None:
                cell["p_vs_leader"] = result.p
                cell["tied_with_leader"] = result.p >= ALPHA


def _rank_key(cell: dict[str, Any]) -> float:
    return math.inf if cell["val_loss"] is None else cell["val_loss"]


def _spread(value: float | None, sd: float | None, spec: str) -> str:
    return _fmt(value, spec) + ("" if sd is None else f" ± {sd:{spec}}")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_leaderboard(cells: list[dict[str, Any]], spec: MatrixSpec, out: Path) -> None:
    """leaderboard.md, leaderboard.json and heatmap.png in `out`."""
    budget = f"{spec.steps} steps" if spec.steps else f"{spec.minutes:g} minutes"
    overrides = " ".join(spec.overrides) or "none"
    lines = [
        "# Benchmark matrix",
        "",
        f"Budget per cell: {budget}; overrides: {overrides}; {spec.seeds} seed(s) per cell"
        + (
            " (mean ± sd; `tied` marks a cell whose loss is not significantly different from the "
            "leader's, Welch's t-test p >= 0.05)"
            if spec.seeds > 1
            else ""
        )
        + ". Lower loss and bits are better; "
        "bits are per character (char tokenizer) or per UTF-8 byte (BPE), comparable across "
        "tokenizers where the text is ASCII. Columns named `heldout.*` score whole validation "
        "conversations (or texts) at the end of training, `lm-eval.*` are harness tasks that "
        "`shoshin eval` recorded for a cell's run.",
        "",
    ]
    for data in spec.datasets:
        ranked = sorted((c for c in cells if c["data"] == data), key=_rank_key)
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
            bits = f"{_spread(c['bits_per_unit'], c['bits_sd'], '.4f')} /{c['unit']}"
            bits = bits if c["unit"] else "-"
            scores = "".join(f"{_fmt(c.get('eval', {}).get(k), '.4f')} | " for k in evals)
            place = f"{rank} (tied, p = {c['p_vs_leader']:.2f})" if c["tied_with_leader"] else rank
            loss = _spread(c["val_loss"], c["val_loss_sd"], ".4f")
            lines.append(
                f"| {place} | {c['arch']} | {loss} | {bits} | {scores}"
                f"{_fmt(c['tokens_per_sec'], ',.0f')} | {_fmt(c['params'], ',')} | "
                f"{c['steps']} | {c['group'] or c['run']} |"
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
