"""The learning-rate range test (Smith 2015; popularised by fastai): find a good learning rate in
one short run instead of a sweep.

Train from scratch while the learning rate grows exponentially, e.g. from 1e-7 to 1 over a few
hundred steps, and watch the loss: too small a rate barely moves it, a good one brings it down
fast, too large a one makes it blow up. The loss is noisy, so it is smoothed with a bias-corrected
exponential moving average over about the last 1/15 of the steps; the test stops once the smoothed
loss exceeds 4x its minimum. (A longer average lags: fastai's fixed 0.98 averages ~50 steps, which
over 300 steps spanning 7 decades shifts the smoothed minimum a decade towards larger rates.)

The suggestion rule: the learning rate where the smoothed loss was lowest, divided by 10. At the
minimum the rate is already at the edge of stability (a few steps later it diverges); a tenth of it
is still in the steep, fast-learning part of the curve. The steepest point of the curve is also
recorded, for comparison.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

from shoshin.config import Config, save_config
from shoshin.device import pick_device
from shoshin.errors import ShoshinError
from shoshin.models import count_parameters
from shoshin.runs.report import pyplot
from shoshin.runs.store import Run, create_run
from shoshin.storage.files import atomic_write_bytes
from shoshin.storage.manifest import DataRecord, LrFindRecord
from shoshin.training.distributed import DistContext
from shoshin.training.setup import batch_generator, seeded_model, training_data
from shoshin.training.step import TrainStep

DIVERGENCE_FACTOR = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
PLOT = "lr_find.png"


@dataclass
class LrFindResult:
    run: Run
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    rule: str
    steepest_lr: float
    diverged: bool
    plot: Path


def lr_range(start: float, end: float, steps: int) -> list[float]:
    """`steps` learning rates growing geometrically from `start` to `end`."""
    ratio = (end / start) ** (1 / max(steps - 1, 1))
    return [start * ratio**i for i in range(steps)]


def smoothing_for(steps: int) -> float:
    """The EMA factor for a test of `steps` steps: it averages about the last steps/15 losses."""
    return min(max(1 - 15 / steps, 0.5), 0.98)


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (so the first values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str, float]:
    """(suggested lr, the rule in words, the steepest-descent lr) for a range test's curve."""
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    # Steepest descent of the smoothed loss per unit of log(lr), before the minimum.
    slopes = [
        (smoothed[i + 1] - smoothed[i]) / math.log(lrs[i + 1] / lrs[i])
        for i in range(max(best, 1))
        if i + 1 < len(lrs)
    ]
    steepest = lrs[min(range(len(slopes)), key=slopes.__getitem__)] if slopes else lrs[best]
    rule = f"minimum of the smoothed loss at lr {lrs[best]:.2e}, divided by 10"
    return lrs[best] / 10, rule, steepest


def lr_find(
    config: Config,
    runs_dir: Path,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 300,
    command: list[str] | None = None,
    log=print,
) -> LrFindResult:
    """Run the range test for `config` (model, data, batch size, optimizer settings) as a run."""
    if not 0 < start_lr < end_lr:
        raise ShoshinError(f"need 0 < --start-lr < --end-lr, got {start_lr:g} and {end_lr:g}")
    if steps < 10:
        raise ShoshinError(f"--steps must be at least 10 for a usable curve, got {steps}")
    if config.lora.rank:
        raise ShoshinError(
            "lr-find trains a model from scratch; LoRA adapters need a pretrained base "
            "(shoshin finetune --from SRC lora.rank=8), so set lora.rank=0"
        )
    tc, T = config.train, config.model.block_size
    dist = DistContext(device=pick_device(tc.device))
    data = training_data(config, dist, log)
    config.name = f"lr-find-{config.name or config.model.arch}"
    run = create_run(config, runs_dir, command)
    save_config(config, run.path / "config.yaml")
    log(f"run {run.id} -> {run.path}")

    model = seeded_model(config).to(dist.device)
    lrs = lr_range(start_lr, end_lr, steps)
    gen = batch_generator(config)
    train_step = TrainStep(model, tc, T, data.train, gen, schedule=lrs.__getitem__, dist=dist)
    beta = smoothing_for(steps)
    run.update_manifest(
        kind="lr-find",
        arch=config.model.arch,
        params=count_parameters(model),
        device=str(dist.device),
        data=DataRecord(source=config.data.source, fingerprint=data.fingerprint),
    )
    losses: list[float] = []
    smoothed: list[float] = []
    started = time.monotonic()
    try:
        model.train()
        diverged = _sweep(train_step, steps, beta, run, log, losses, smoothed)
        if len(losses) < 2:
            raise ShoshinError(
                f"the loss diverged within {len(losses) + 1} steps of --start-lr {start_lr:g}; "
                "start lower"
            )
        suggested, rule, steepest = suggest(lrs[: len(smoothed)], smoothed)
        plot = run.path / PLOT
        atomic_write_bytes(plot, _plot_png(lrs[: len(losses)], losses, smoothed, suggested))
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        run.finish(status, exc, steps=len(losses))
        raise
    run.finish(
        "completed",
        steps=len(losses),
        elapsed_seconds=round(time.monotonic() - started, 2),
        lr_find=LrFindRecord(
            start_lr=start_lr,
            end_lr=end_lr,
            planned_steps=steps,
            diverged_at_lr=lrs[len(losses)] if diverged and len(losses) < steps else None,
            suggested_lr=suggested,
            rule=rule,
            steepest_lr=steepest,
            min_smoothed_loss=min(smoothed),
            smoothing=beta,
            plot=PLOT,
        ),
    )
    stop = "diverged" if diverged else "reached --end-lr"
    log(f"{stop} after {len(losses)} steps; steepest descent at lr {steepest:.2e}")
    return LrFindResult(
        run, lrs[: len(losses)], losses, smoothed, suggested, rule, steepest, diverged, plot
    )


def _sweep(
    train_step: TrainStep,
    steps: int,
    beta: float,
    run: Run,
    log,
    losses: list[float],
    smoothed: list[float],
) -> bool:
    """Train one step per learning rate, appending to `losses` and `smoothed` (filled in place, so
    an interrupt keeps what was done); True when the loss diverged before the last step."""
    for step in range(steps):
        loss, lr = train_step(step)
        if not math.isfinite(loss):
            return True
        losses.append(loss)
        smoothed[:] = smooth(losses, beta)
        run.append_metrics(
            {"step": step + 1, "lr": lr, "train_loss": loss, "smoothed_loss": smoothed[-1]}
        )
        if (step + 1) % 25 == 0:
            log(f"step {step + 1}/{steps} | lr {lr:.2e} | loss {smoothed[-1]:.4f}")
        if smoothed[-1] > DIVERGENCE_FACTOR * min(smoothed):
            return True
    return False


def _plot_png(lrs: list[float], losses: list[float], smoothed: list[float], lr: float) -> bytes:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, color="0.8", linewidth=0.8, label="loss")
    ax.plot(lrs, smoothed, color="C0", label="smoothed loss")
    ax.axvline(lr, color="C3", linestyle="--", label=f"suggested lr {lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_ylim(min(smoothed) * 0.9, max(smoothed[0], min(smoothed) * DIVERGENCE_FACTOR) * 1.05)
    ax.set_title("learning-rate range test")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
