"""The `eval/` folder of a run: one JSON record per evaluation, read back by show, compare and matrix.

    eval/val.json                  validation loss on the whole validation split (shoshin eval RUN)
    eval/heldout.json              held-out scores of the validation conversations (or texts)
    eval/lm-eval.<task>.json       one harness task: metrics, version, sample counts, harness version
    eval/lm-eval.<task>.samples.jsonl   the harness's per-sample records (inputs, log-likelihoods)
    eval/pairwise.<run>.json       the judge-free comparison against another run (+ .md: the replies)

A record says what was measured (`metrics`, flat numbers), on which checkpoint, when, with which
command; everything else is in `details`. Evaluating the same thing again replaces its record
(written to a temp file, then renamed). A record that cannot be read is skipped, never fatal.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoshin.storage.files import atomic_write_json, atomic_write_text, read_json

EVAL_DIR = "eval"


@dataclass
class EvalRecord:
    """One evaluation of a run. `name` is the file's stem: `heldout`, `lm-eval.<task>`,
    `pairwise.<run id>`; `metrics` are the numbers reported as `<name>.<metric>` columns."""

    name: str
    kind: str  # val | heldout | lm-eval | pairwise
    metrics: dict[str, float]
    checkpoint: str | None = None  # e.g. step-0000500
    command: list[str] = field(default_factory=list)
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        metrics = {
            k: float(v)
            for k, v in (data.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return cls(
            name=str(data["name"]),
            kind=str(data.get("kind", "unknown")),
            metrics=metrics,
            checkpoint=data.get("checkpoint"),
            command=list(data.get("command") or []),
            time=str(data.get("time", "")),
            details=dict(data.get("details") or {}),
        )


def write_record(
    run_path: Path, record: EvalRecord, samples: Iterable[dict[str, Any]] | None = None
) -> Path:
    """Write eval/<name>.json (and eval/<name>.samples.jsonl when samples are given)."""
    folder = Path(run_path) / EVAL_DIR
    if samples is not None:
        lines = "".join(json.dumps(s) + "\n" for s in samples)
        atomic_write_text(folder / f"{record.name}.samples.jsonl", lines)
    path = folder / f"{record.name}.json"
    atomic_write_json(path, asdict(record))
    return path


def read_records(run_path: Path) -> list[EvalRecord]:
    """Every readable record of a run, by name (damaged or foreign files are skipped)."""
    folder = Path(run_path) / EVAL_DIR
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(EvalRecord.from_dict(read_json(path)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return records


HEADLINE = ("heldout.loss", "heldout.bits_per_byte")  # what leaderboards show of held-out scores


def eval_metrics(run_path: Path, headline: bool = False) -> dict[str, float]:
    """All recorded evaluation numbers of a run as `<record>.<metric>`, e.g. `heldout.loss`.

    headline=True keeps what a leaderboard shows: the held-out loss and bits per byte and every
    harness metric (not the per-role details nor pairwise results, which name another run).
    """
    out = {
        f"{r.name}.{k}": v
        for r in read_records(run_path)
        for k, v in r.metrics.items()
        if math.isfinite(v)
    }
    if headline:
        out = {k: v for k, v in out.items() if k in HEADLINE or k.startswith("lm-eval.")}
    return out
