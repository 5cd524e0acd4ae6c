"""Starting and continuing a run: `train(config)` makes a new run and trains it, `resume(run)`
continues one from its latest checkpoint (with a new budget if asked); both around a `Trainer`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoshin.config import Config, apply_overrides, save_config
from shoshin.data.sources import check_source
from shoshin.device import pick_device
from shoshin.errors import ShoshinError
from shoshin.interop.hf import Pretrained, load_recorded_base
from shoshin.models.fit import verify_checkpoint
from shoshin.runs.store import (
    CONFIG,
    Run,
    create_run,
)
from shoshin.storage.checkpoint import (
    checkpoint_path,
    read_state,
    remove_unfinished,
)
from shoshin.storage.files import remove_temporaries
from shoshin.training.distributed import init_distributed
from shoshin.training.optim import warmdown_start
from shoshin.training.trainer import Trainer


def train(
    config: Config,
    runs_dir: Path,
    command: list[str] | None = None,
    log=print,
    init: Pretrained | None = None,
    stop_after: int | None = None,
    manifest: dict | None = None,
) -> Run:
    """Train a new run from `config` (from `init`'s weights when fine-tuning); returns its Run.

    `stop_after` ends training at that step with the schedule of the full run (see `reproduce`);
    `manifest` adds fields to the new run's manifest. Under torchrun, rank 0 creates the run and
    holds its lock.
    """
    check_source(config.data.source)  # data that cannot be read makes no run folder
    dist = init_distributed(pick_device(config.train.device))
    run = dist.from_main(lambda: create_run(config, runs_dir, command, manifest))
    try:
        if dist.is_main:
            procs = f" ({dist.world_size} processes)" if dist.enabled else ""
            log(f"run {run.id} -> {run.path}{procs}")
        try:
            trainer = Trainer(config, run, log=log, init=init)
        except BaseException as exc:
            if dist.is_main:  # a run that never started training still says why
                run.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", exc)
            raise
        if dist.is_main:
            save_config(config, run.path / "config.yaml")  # now with the tokenizer's vocab_size
        trainer.fit(stop_after)
        trainer.final_sample()
        trainer.say_if_stopped_on_budget()
    finally:
        run.release_lock()
    return run


def _become_writer(run: Run, log) -> None:
    """Take the run's lock, then clear what a killed writer left half-written (no one else can be
    writing it now)."""
    run.take_lock()
    removed = remove_unfinished(run.path / "checkpoints") + remove_temporaries(run.path)
    if removed:
        log(f"removed {len(removed)} unfinished file(s) of a killed process: {', '.join(removed)}")


def resume(run: Run, log=print, changes: Sequence[str] = ()) -> Run:
    """Continue `run` from its latest checkpoint, exactly where it stopped.

    `changes`: `train.max_steps=N` / `train.max_minutes=M` items, a new budget (see
    change_budget). The lock is taken before anything is read or written: a second writer of the
    same run stops at once with a one-line error naming the first (under torchrun, rank 0 holds it).
    A LoRA run's checkpoints hold its adapters only: the base model it recorded is loaded again
    (and refused if its weights changed).
    """
    config = run.config
    dist = init_distributed(pick_device(config.train.device))
    dist.from_main(lambda: _become_writer(run, log))
    try:
        # A damaged or hostile checkpoint is refused before data and a model are built to
        # resume into.
        path = checkpoint_path(run.path / "checkpoints")
        init = None
        if config.lora.rank:
            base = run.manifest.base_model
            if base is None:
                raise ShoshinError(
                    f"LoRA run {run.id} does not record its base model; cannot resume"
                )
            init = load_recorded_base(base.source, base.path, base.weights_sha256, f"run {run.id}")
            init.check_describes(config.model, str(run.path / CONFIG))
            read_state(path)  # the adapters are checked by name and shape as they load
        else:
            verify_checkpoint(path, config.model, str(run.path / CONFIG))
        changed = change_budget(config, changes, read_state(path)["step"])
        trainer = Trainer(config, run, log=log, init=init)
        trainer.load("latest")
        if config.train.max_steps < trainer.step:
            raise ShoshinError(
                f"train.max_steps={config.train.max_steps} is before the run's step "
                f"{trainer.step}; give at least {trainer.step}"
            )
        trainer.record_resume(changed)
        trainer.fit()
        trainer.final_sample()
        trainer.say_if_stopped_on_budget()
    finally:
        run.release_lock()
    return run


def change_budget(
    config: Config, changes: Sequence[str], step: int | None = None
) -> dict[str, list[Any]]:
    """Apply a resume's new budget to `config`; returns what changed, {key: [before, after]}.

    The learning-rate schedule is the one the run trained with: when max_steps moves, the decay
    still reaches min_lr where it did (train.lr_decay_steps keeps the old max_steps), and steps past
    it train at min_lr, as nanoGPT's lr_decay_iters does. A wsd run still in its stable phase at
    `step` (its checkpoint's), under the old budget and the new, is the exception: its rate is
    constant there, so the warmdown moves to the end of the new budget. The LR never jumps.
    """
    tc = config.train
    keys = ("max_steps", "max_minutes", "lr_decay_steps")
    before = {k: getattr(tc, k) for k in keys}
    old_warmdown = warmdown_start(tc)
    apply_overrides(config, list(changes))
    if tc.max_steps != before["max_steps"] and not tc.lr_decay_steps:
        stable = (
            tc.schedule == "wsd"
            and step is not None
            and step < min(old_warmdown, warmdown_start(tc))
        )
        if not stable:
            tc.lr_decay_steps = before["max_steps"]
    return {f"train.{k}": [before[k], getattr(tc, k)] for k in keys if getattr(tc, k) != before[k]}
