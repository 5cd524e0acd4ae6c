"""`shoshin reproduce`: re-run a recorded run and check, step by step, that its metrics come back.

Before re-running, the current code and data are checked against the run's fingerprints (shoshin's
source files, the source bytes of the corpus); any difference is listed and the re-run refused
unless forced. The re-run uses the recorded config and seed and stops after N steps with the full
run's learning-rate schedule, into a new run directory linked to the original. On CPU with the same
thread count the losses are bitwise identical.
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shoshin.config import Config
from shoshin.data.sources import load_corpus
from shoshin.errors import ShoshinError
from shoshin.runs.provenance import source_files
from shoshin.runs.store import Run
from shoshin.storage.manifest import Manifest, Reproduction
from shoshin.training.finetune import recorded_base
from shoshin.training.runner import train

LOSS_KEYS = ("train_loss", "val_loss")


@dataclass
class Verdict:
    """The outcome of comparing two metric histories."""

    ok: bool
    steps: int  # training steps compared
    compared: int  # loss values compared
    max_delta: float
    diverged_at: int | None = None
    key: str | None = None
    recorded: float | None = None
    now: float | None = None

    def line(self) -> str:
        if self.ok:
            return f"REPRODUCED: {self.steps} steps, max |Δ loss| = {self.max_delta:.3g}"
        return (
            f"DIVERGED at step {self.diverged_at}: recorded {self.recorded:.6f}, "
            f"now {self.now:.6f} ({self.key})"
        )


def compare_histories(
    recorded: list[dict[str, Any]], now: list[dict[str, Any]], steps: int, tolerance: float
) -> Verdict:
    """Walk both histories step by step up to `steps`; the first loss off by more than tolerance diverges."""
    now_by_step = {r["step"]: r for r in now}
    max_delta, compared = 0.0, 0
    for row in sorted((r for r in recorded if r["step"] <= steps), key=lambda r: r["step"]):
        other = now_by_step.get(row["step"])
        if other is None:
            continue
        for key in LOSS_KEYS:
            if key in row and key in other:
                delta = abs(row[key] - other[key])
                compared += 1
                if not delta <= tolerance:  # also catches NaN
                    return Verdict(
                        False, steps, compared, delta, row["step"], key, row[key], other[key]
                    )
                max_delta = max(max_delta, delta)
    if compared == 0:
        raise ShoshinError(
            f"no loss was logged at a common step in the first {steps} steps; "
            "reproduce more steps (--steps) or the whole run"
        )
    return Verdict(True, steps, compared, max_delta)


def _data_source(config: Config, manifest: Manifest) -> str:
    """The recorded data.source, found relative to the run's working directory if need be."""
    source = config.data.source
    prefix = "hf:" if source.startswith("hf:") else ""  # hf:./folder is a path too
    path = source.removeprefix(prefix)
    recorded_cwd = manifest.cwd
    if path != "chitchat" and not Path(path).exists() and recorded_cwd:
        candidate = Path(recorded_cwd) / path
        if candidate.exists():
            return prefix + str(candidate)
    return source


def fingerprint_differences(run: Run) -> tuple[list[str], list[str]]:
    """(differences that refuse a re-run, notes that do not) between the record and now."""
    manifest = run.manifest
    config = run.config
    problems, notes = [], []
    fingerprint = manifest.code.fingerprint if manifest.code else None
    recorded_files = fingerprint.files if fingerprint else None
    if not recorded_files:
        problems.append("code fingerprint: not recorded for this run")
    else:
        current = source_files()
        changed = sorted(
            k for k in set(recorded_files) | set(current) if recorded_files.get(k) != current.get(k)
        )
        if changed:
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            problems.append(
                f"code fingerprint: shoshin source files differ: {', '.join(changed[:8])}{more}"
            )
    recorded_sha256 = manifest.data.source_sha256 if manifest.data else None
    source = _data_source(config, manifest)
    if not recorded_sha256:
        problems.append("data fingerprint: not recorded for this run (it never prepared its data)")
    else:
        try:
            d = config.data
            now = load_corpus(source, 0, d.hf_split, d.hf_column, d.hf_revision).sha256
        except ShoshinError as exc:
            problems.append(f"data fingerprint: cannot read the data now ({exc})")
        else:
            if now != recorded_sha256:
                problems.append(
                    f"data fingerprint: {source} has changed (source sha256 recorded "
                    f"{recorded_sha256[:12]}, now {now[:12]})"
                )
    env = manifest.environment
    if env is not None:
        for key, was, current in (
            ("torch", env.torch, torch.__version__),
            ("python", env.python, platform.python_version()),
        ):
            if was and was != current:
                notes.append(f"{key} was {was}, now {current}")
    if manifest.world_size > 1:
        notes.append(
            f"the run used {manifest.world_size} processes (torchrun) and this re-run uses "
            "one: its global batch is smaller, so expect the losses to differ"
        )
    threads = manifest.threads
    if threads and threads != torch.get_num_threads():
        notes.append(f"the run used {threads} threads, this process has {torch.get_num_threads()}")
    return problems, notes


def reproduce(
    run: Run,
    runs_dir: Path,
    steps: int | None = None,
    force: bool = False,
    tolerance: float = 1e-6,
    command: list[str] | None = None,
    log=print,
) -> tuple[Run, Verdict]:
    """Re-run `run` for `steps` steps (default: all it recorded) and compare the loss histories."""
    manifest = run.manifest
    recorded = run.metrics()
    recorded_steps = manifest.steps or max((r["step"] for r in recorded), default=0)
    if recorded_steps < 1:
        raise ShoshinError(
            f"run {run.id} recorded no training steps; there is nothing to reproduce"
        )
    steps = recorded_steps if steps is None else steps
    if not 1 <= steps <= recorded_steps:
        raise ShoshinError(
            f"--steps must be between 1 and {recorded_steps} (the steps run {run.id} recorded)"
        )

    problems, notes = fingerprint_differences(run)
    for note in notes:
        log(f"note: {note}")
    if problems:
        for problem in problems:
            log(f"differs: {problem}")
        if not force:
            raise ShoshinError(
                f"the current code or data differ from run {run.id}'s record (listed above); "
                "restore them, or re-run with --force to see what the difference does"
            )
        log("--force: reproducing anyway")

    config = run.config
    config.data.source = _data_source(config, manifest)
    config.train.max_minutes = 0.0  # the step count decides, not the clock
    threads = manifest.threads
    if threads and threads != torch.get_num_threads() and threads <= (os.cpu_count() or 1):
        torch.set_num_threads(threads)  # same thread count: same float summation order on CPU
        log(f"using {threads} threads, as the original run did")
    link = {"reproduction_of": run.id, "reproduction_steps": steps}
    base = recorded_base(manifest)  # a fine-tuning run starts again from the same checkpoint
    new = train(config, runs_dir, command, log=log, init=base, stop_after=steps, manifest=link)
    verdict = compare_histories(recorded, new.metrics(), steps, tolerance)
    result = Reproduction(
        reproduced=verdict.ok,
        steps=steps,
        max_abs_delta=verdict.max_delta,
        of=run.id,
        run=new.id,
        diverged_at=verdict.diverged_at,
        forced=bool(problems),
    )
    new.update_manifest(reproduction=result)
    run.update_manifest(reproductions=[*run.manifest.reproductions, result])
    return new, verdict


def probe(config: Config, steps: int = 20, log=print) -> Verdict:
    """Two short runs of `config` with the same seed, compared bitwise: is this setup deterministic?"""
    config = copy.deepcopy(config)
    tc = config.train
    tc.max_steps = min(tc.max_steps, steps)
    tc.log_interval, tc.eval_interval, tc.checkpoint_interval = 1, tc.max_steps, 0
    tc.max_minutes, tc.sample_tokens = 0.0, 0
    config.tracking.mlflow = False
    histories = []
    with tempfile.TemporaryDirectory(prefix="shoshin-probe-") as tmp:
        for attempt in (1, 2):
            log(f"probe run {attempt} of 2: {tc.max_steps} steps")
            run = train(
                copy.deepcopy(config),
                Path(tmp),
                ["shoshin", "reproduce", "--probe"],
                log=lambda *a: None,
            )
            histories.append(run.metrics())
    return compare_histories(histories[0], histories[1], tc.max_steps, 0.0)
