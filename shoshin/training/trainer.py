"""The training loop: one story from config to a run directory with metrics and checkpoints.

`Trainer.fit` reads top to bottom: take a step (shoshin.training.step, the one training step),
guard against a non-finite loss, log, evaluate, write the metrics row, checkpoint; then close out;
an interrupt or a failure is recorded on the way out. Under torchrun every rank runs this same
loop; the methods marked `@rank_zero_only` are the ones that write (the run directory, logs,
checkpoints), and they run on rank 0 alone.

Resume is exact: model, optimizer, schedule position, RNG states (dropout and the batch sampler) are
restored from the checkpoint, so an interrupted-then-resumed run logs the same losses as one that
ran straight through (bitwise on CPU with the same thread count).

LoRA (lora.rank > 0): the model starts from a pretrained base, peft adds adapters to it in place
(shoshin.models.lora), and only the adapters train and are checkpointed; a checkpoint names the
base by source and sha256, and resuming loads that base again and refuses a changed one.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from shoshin.config import Config, apply_overrides, save_config
from shoshin.data.chat import is_chat_tokenizer
from shoshin.data.dataset import PreparedData, check_fits, eval_batches, prepare_data
from shoshin.data.tokenizers import BPE_FILE, BpeTokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.evaluation.evaluate import heldout_at_end_of_training
from shoshin.generation.params import surface_defaults
from shoshin.generation.sample import sample_text
from shoshin.interop.hf import Pretrained, load_recorded_base
from shoshin.models import build_model, count_parameters, count_trainable
from shoshin.models import lora as lora_adapters
from shoshin.models.loss import IGNORE_INDEX
from shoshin.runs.files import remove_temporaries
from shoshin.runs.mlflow_sink import open_mirror
from shoshin.runs.provenance import code_fingerprint, data_record
from shoshin.runs.record import Resume
from shoshin.runs.report import budget_lines
from shoshin.runs.store import (
    CONFIG,
    HEARTBEAT_SECONDS,
    Run,
    create_run,
    now_iso,
    resume_command,
)
from shoshin.training.checkpoint import (
    checkpoint_path,
    load_model_tensors,
    load_optimizer_state,
    model_tensors,
    read_checkpoint,
    read_index,
    read_state,
    remove_unfinished,
    save_checkpoint,
    verify_checkpoint,
)
from shoshin.training.distributed import init_distributed, pick_device, rank_zero_only
from shoshin.training.estimate import CALIBRATION_STEPS, estimate, peak_resident_bytes
from shoshin.training.optim import lr_at
from shoshin.training.step import TrainStep


def _quiet(*args, **kwargs) -> None:
    """The log function of ranks other than 0: one copy of every message is enough."""


def _capture_rng(generator: torch.Generator) -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = state
    return rng


def _restore_rng(rng: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["batches"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _pretrained_tokenizer(config: Config, run: Run, init: Pretrained | None) -> BpeTokenizer | None:
    """The checkpoint's tokenizer for fine-tuning runs (from the run directory when resuming)."""
    if config.data.tokenizer != "pretrained":
        return None
    saved = run.path / BPE_FILE
    if init is not None and not saved.exists():
        return init.tokenizer
    tokenizer = load_tokenizer(run.path) if saved.exists() else None
    if not isinstance(tokenizer, BpeTokenizer):
        raise ShoshinError(
            "data.tokenizer=pretrained takes the tokenizer of a checkpoint; "
            "fine-tune one with: shoshin finetune --from SRC"
        )
    return tokenizer


class Progress:
    """A progress bar on a terminal; elsewhere, one log line per logged step."""

    def __init__(self, max_steps: int, step: int, log, show_bar: bool):
        self.max_steps = max_steps
        self.log = log
        self.interactive = show_bar and sys.stderr.isatty()
        self.bar = tqdm(
            total=max_steps, initial=step, disable=not self.interactive, dynamic_ncols=True
        )
        self.deadline: float | None = None  # time.monotonic() when the time budget runs out

    def advance(self, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def report(self, step: int, row: dict[str, float], elapsed: float) -> None:
        """`step 50/1000 | loss ... | val ... | lr ... | tok/s | eta` (only evaluations on a bar)."""
        parts = [f"step {step}/{self.max_steps}"]
        if "train_loss" in row:
            parts.append(f"loss {row['train_loss']:.4f}")
        if "val_loss" in row:
            parts.append(f"val {row['val_loss']:.4f}")
        if "lr" in row:
            parts.append(f"lr {row['lr']:.2e}")
        if "tokens_per_sec" in row:
            parts.append(f"{row['tokens_per_sec']:,.0f} tok/s")
            parts.append(self._eta((self.max_steps - step) * elapsed / max(step, 1)))
        line = " | ".join(parts)
        if not self.interactive:
            self.log(line)
        elif "val_loss" in row:
            self.bar.write(line)

    def _eta(self, remaining: float) -> str:
        """The time to the end: to max_steps, or to the time budget when that comes first."""
        budget = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
        if budget is not None and budget < remaining:
            return f"eta {budget / 60:.1f} min (time budget; all steps need {remaining / 60:.1f})"
        return f"eta {remaining / 60:.1f} min"

    def close(self) -> None:
        self.bar.close()


class Trainer:
    """Trains one run. Use `train(config)` for a new run or `resume(run)` to continue one."""

    def __init__(self, config: Config, run: Run, log=print, init: Pretrained | None = None):
        """`init`: a pretrained checkpoint to start from (shoshin finetune) instead of random weights."""
        self.config = config
        self.run = run
        tc, T = config.train, config.model.block_size
        self.dist = init_distributed(pick_device(tc.device))
        self.log = log if self.dist.is_main else _quiet
        self.device = self.dist.device
        with self.dist.main_first():  # rank 0 tokenizes and caches; the others then read the cache
            self.data: PreparedData = prepare_data(
                config.data, log=self.log, tokenizer=_pretrained_tokenizer(config, run, init)
            )
        check_fits(self.data, T, config.data.source)
        config.model.vocab_size = self.data.tokenizer.vocab_size
        torch.manual_seed(tc.seed)
        self.model = build_model(config.model)
        if init is not None:
            init.copy_into(self.model)  # the vocabulary may have grown by the chat tokens
            self._record(base_model=init.describe())
        self.adapter = self._attach_lora(init)
        self.model.to(self.device)
        self.batch_gen = torch.Generator().manual_seed(tc.seed)
        self.train_step = TrainStep(
            self.model,
            tc,
            T,
            self.data.train,
            self.batch_gen,
            schedule=lambda step: lr_at(step, tc),
            dist=self.dist,
            compile=tc.compile,
        )
        self.tokens_per_step = tc.batch_size * self.dist.world_size * tc.grad_accum * T
        # Where training stands; a checkpoint restores all of it.
        self.step = 0
        self.best_val = math.inf
        self.elapsed = 0.0  # seconds of training across resumes (evaluation excluded)
        self.tokens_seen = 0
        self.last_eval_step = -1
        self._last_beat = -math.inf
        self.stopped_on_budget = False
        # The last state recorded in full (see _commit): what an interrupt keeps.
        self._committed_updates = 0
        self._committed_rng = _capture_rng(self.batch_gen)

    def _attach_lora(self, init: Pretrained | None):
        """With lora.rank > 0: adapters on the pretrained model (the PeftModel), else None."""
        lora = self.config.lora
        if not lora.rank:
            return None
        if init is None:
            raise ShoshinError(
                "lora.rank trains adapters on a pretrained model: "
                "shoshin finetune --from SRC lora.rank=8"
            )
        self.base = {  # what each checkpoint says its adapters need underneath them
            "source": init.source,
            "path": str(init.path),
            "weights_sha256": init.weights_sha256,
        }
        adapter = lora_adapters.attach(self.model, lora)
        self._record(adapter=lora_adapters.describe(lora, self.config.model))
        return adapter

    # -- state ---------------------------------------------------------------------------

    def load(self, which: str = "latest") -> None:
        """Restore model, optimizer, RNG and counters from a checkpoint of this run."""
        path = checkpoint_path(self.run.path / "checkpoints", which)
        ckpt = read_checkpoint(path, with_trainer=True)
        if self.adapter is not None:
            lora_adapters.load_adapter(self.adapter, ckpt["model"], str(path))
        else:
            load_model_tensors(self.model, ckpt["model"], str(path))
        if ckpt["optimizer"] is not None:
            load_optimizer_state(self.train_step.optimizer, ckpt["optimizer"], str(path))
        _restore_rng(ckpt["rng"], self.batch_gen)
        state = ckpt["state"]
        self.step = state["step"]
        self.best_val = state.get("best_val_loss") or math.inf
        self.elapsed = state.get("elapsed", 0.0)
        self.tokens_seen = state.get("tokens_seen", 0)

    @rank_zero_only
    def _save(self, rng: dict[str, torch.Tensor], best: bool = False) -> None:
        state = {
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            "elapsed": self.elapsed,
            "tokens_seen": self.tokens_seen,
        }
        if self.adapter is not None:
            weights = lora_adapters.adapter_tensors(self.adapter)
            state["base_model"] = self.base
        else:
            weights = model_tensors(self.model)
        save_checkpoint(
            self.run.path / "checkpoints",
            self.step,
            weights,
            self.train_step.optimizer,
            rng,
            state,
            best=best,
        )
        self._heartbeat(force=True)

    def _latest_checkpoint_step(self) -> int | None:
        latest = read_index(self.run.path / "checkpoints").get("latest")
        return int(latest.split("-")[1]) if latest else None

    # -- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss per target over train.eval_iters batches (0: the whole split).

        The batches tile the split (data.dataset.eval_batches), the same ones every time. Under
        DDP each rank scores every world_size-th batch and the sums are combined over ranks.
        """
        tc, T, world = self.config.train, self.config.model.block_size, self.dist.world_size
        self.model.eval()
        total = count = 0.0
        batches = eval_batches(self.data.val, tc.batch_size * world, T, tc.eval_iters)
        for i, (x, y) in enumerate(batches):
            if i % world == self.dist.rank:
                n = int((y != IGNORE_INDEX).sum())
                # The bare model: DDP's forward would wait for ranks that score fewer batches.
                with self.train_step.autocast:
                    total += self.model(x.to(self.device), y.to(self.device)).item() * n
                count += n
        self.model.train()
        loss = self.dist.mean(total) / max(self.dist.mean(count), 1e-12)  # sum / sum over ranks
        self.last_eval_step = self.step
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        meta = self.data.meta
        if self.config.data.loss_on == "all":
            # Bits per character (char tokenizer) or per UTF-8 byte (BPE): comparable across tokenizers.
            unit = "char" if self.config.data.tokenizer == "char" else "byte"
            units = (
                meta["characters"]["val"] if unit == "char" else meta.get("bytes", {}).get("val")
            )
            if units:
                out[f"val_bits_per_{unit}"] = loss * meta["tokens"]["val"] / units / math.log(2)
        return out

    # -- the loop ------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None) -> Run:
        """Train up to train.max_steps, or only up to step `stop_after` with the same LR schedule."""
        tc = self.config.train
        stop = tc.max_steps if stop_after is None else min(tc.max_steps, stop_after)
        self.progress = Progress(tc.max_steps, self.step, self.log, self.dist.is_main)
        try:
            self._start()
            while self.step < stop and not self._out_of_time():
                loss, lr = self._take_step()
                row = self._training_row(loss, lr)
                improved = self._evaluate_if_due(row)
                self._write_row(row)
                self._checkpoint_if_due(improved)
                self._commit()
            self._close_out()
        except KeyboardInterrupt:
            self._keep_after_interrupt()
            raise
        except BaseException as exc:
            self._finish("failed", exc)
            raise
        finally:
            self.progress.close()
        self._finish("completed")
        return self.run

    def _start(self) -> None:
        """Record the start, save the starting state of a new run, agree on where the last
        evaluation was, and start the clocks."""
        tc = self.config.train
        self.model.train()
        self._record_start()  # includes the estimate's calibration: before the clocks start
        if self._latest_checkpoint_step() is None:
            # A run always has a checkpoint to go back to: Ctrl-C in the middle of a step before
            # the first periodic checkpoint (or a SIGKILL then) resumes from the start, exactly.
            self._save(_capture_rng(self.batch_gen))
        self.last_eval_step = self.dist.from_main(self._last_eval_step)
        self._deadline = (
            time.monotonic() + tc.max_minutes * 60 - self.elapsed if tc.max_minutes else None
        )
        self.progress.deadline = self._deadline
        self._log_clock = (time.monotonic(), self.step)  # throughput since the last logged row
        self._commit()

    def _out_of_time(self) -> bool:
        """Whether the time budget is spent. Ranks agree (their clocks differ) to stop together."""
        if self._deadline is None or not self.dist.any(time.monotonic() >= self._deadline):
            return False
        self.log(
            f"time budget of {self.config.train.max_minutes:g} min reached at step {self.step}"
        )
        self.stopped_on_budget = True
        return True

    def _take_step(self) -> tuple[float, float]:
        """One optimizer step, and the guard against a non-finite loss."""
        started = time.monotonic()
        loss, lr = self.train_step(self.step)
        if not math.isfinite(loss):
            raise ShoshinError(
                f"training loss became {loss} at step {self.step + 1}; stopped "
                "(the last good checkpoint is kept); try a lower train.lr or train.grad_clip=1"
            )
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        self.elapsed += time.monotonic() - started
        self.progress.advance(loss)
        return loss, lr

    def _training_row(self, loss: float, lr: float) -> dict[str, float]:
        """Training loss, learning rate and throughput, every log_interval steps and at the end."""
        tc = self.config.train
        if self.step % tc.log_interval and self.step != tc.max_steps:
            return {}
        now = time.monotonic()
        since, at = self._log_clock
        self._log_clock = (now, self.step)
        tokens_per_sec = (self.step - at) * self.tokens_per_step / max(now - since, 1e-9)
        return {"train_loss": loss, "lr": lr, "tokens_per_sec": tokens_per_sec}

    def _evaluate_if_due(self, row: dict[str, float]) -> bool:
        """Evaluate every eval_interval steps and at the end, into `row`; True if val improved."""
        tc = self.config.train
        due = tc.eval_interval and self.step % tc.eval_interval == 0
        if not due and self.step != tc.max_steps:
            return False
        started = time.monotonic()
        improved = self._evaluate_into(row)
        since, at = self._log_clock
        self._log_clock = (since + time.monotonic() - started, at)  # keep evaluation out of tok/s
        return improved

    def _evaluate_into(self, row: dict[str, float]) -> bool:
        row.update(self.evaluate())
        improved = row["val_loss"] < self.best_val
        self.best_val = min(self.best_val, row["val_loss"])
        return improved

    @rank_zero_only
    def _write_row(self, row: dict[str, float]) -> None:
        if row:
            self.run.append_metrics({"step": self.step, **row, "elapsed": round(self.elapsed, 3)})
            self.progress.report(self.step, row, self.elapsed)
            self._heartbeat()

    @rank_zero_only
    def _heartbeat(self, force: bool = False) -> None:
        """Tell `shoshin runs` the run is alive and how far it got (at every checkpoint, and with
        the logged rows at most every HEARTBEAT_SECONDS: each beat rewrites the manifest)."""
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        self.run.update_manifest(
            heartbeat=now_iso(),
            steps=self.step,
            elapsed_seconds=round(self.elapsed, 2),
            tokens_seen=self.tokens_seen,
        )

    def _checkpoint_if_due(self, improved: bool) -> None:
        tc = self.config.train
        due = tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0
        if due or improved or self.step == tc.max_steps:
            self._save(_capture_rng(self.batch_gen), best=improved)

    def _commit(self) -> None:
        """This step is complete and recorded: an interrupt from here on keeps it."""
        self._committed_updates = self.train_step.updates
        self._committed_rng = _capture_rng(self.batch_gen)

    def _close_out(self) -> None:
        """After the loop: the end state evaluated and checkpointed (also after a stop by time
        budget), then the held-out documents scored (shoshin.evaluation)."""
        row: dict[str, float] = {}
        improved = self.last_eval_step != self.step and self._evaluate_into(row)
        self._write_row(row)
        if improved or self._latest_checkpoint_step() != self.step:
            self._save(_capture_rng(self.batch_gen), best=improved)
        self._score_heldout()

    @rank_zero_only
    def _score_heldout(self) -> None:
        heldout_at_end_of_training(self.model, self.data, self.run, self.log)

    def _keep_after_interrupt(self) -> None:
        """Ctrl-C: leave a checkpoint that resume continues from exactly.

        Before the interrupted step touched the weights, the state it started from is saved.
        Once it had (the optimizer step, or the evaluation and records after it), the step is
        incomplete: the last checkpoint stands and resume redoes the steps after it.
        """
        if self.train_step.updates == self._committed_updates:
            if self._latest_checkpoint_step() != self.step:
                self._save(self._committed_rng)
        else:
            self.step = self._latest_checkpoint_step() or 0
        self._finish("interrupted")
        self.log(f"interrupted at step {self.step}; resume with: {resume_command(self.run.path)}")

    # -- the record ----------------------------------------------------------------------

    @rank_zero_only
    def _record(self, **fields: Any) -> None:
        self.run.update_manifest(**fields)

    @rank_zero_only
    def _record_start(self) -> None:
        """What is being trained, where, on what data, at what cost; then the tokenizer and mirror."""
        tc = self.config.train
        est = self.run.manifest.estimate  # a resumed run keeps the estimate of its start
        if est is None:
            steps = CALIBRATION_STEPS if tc.calibrate else 0
            est = estimate(
                self.config,
                self.data,
                self.device,
                calibration_steps=steps,
                model_resident=True,
                log=self.log,
            )
        self.run.update_manifest(
            status="running",
            pid=os.getpid(),  # after a resume: this process, so `shoshin runs` sees it live
            hostname=socket.gethostname(),
            heartbeat=now_iso(),
            steps=self.step,
            end_time=None,  # a resumed run has not ended (yet): drop how it ended last time
            error=None,
            traceback=None,
            estimate=est,
            params=count_parameters(self.model),
            trainable_params=count_trainable(self.model),
            arch=self.config.model.arch,
            device=str(self.device),
            threads=torch.get_num_threads(),
            world_size=self.dist.world_size,
            data=data_record(self.data, self.config.data),
        )
        leakage = (self.data.meta.get("overlap") or {}).get("warning")
        if leakage:
            self.log(f"warning: {leakage}")
        self.data.tokenizer.save(self.run.path)
        self.run.mirror = open_mirror(self.config, self.run, self.log)
        self.run.truncate_metrics(self.step)

    def _last_eval_step(self) -> int:
        """The step of the last evaluation already in the metrics (after a resume), else -1."""
        rows = self.run.metrics()
        return max(
            (r["step"] for r in rows if "val_loss" in r and r["step"] <= self.step), default=-1
        )

    @rank_zero_only
    def _finish(self, status: str, exc: BaseException | None = None) -> None:
        vals = [r["val_loss"] for r in self.run.metrics() if "val_loss" in r]
        self.run.finish(
            status,
            exc,
            steps=self.step,
            planned_steps=self.config.train.max_steps,
            stopped_on_budget=self.stopped_on_budget,
            elapsed_seconds=round(self.elapsed, 2),
            tokens_seen=self.tokens_seen,
            peak_rss_bytes=peak_resident_bytes(),
            best_val_loss=min(vals) if vals else None,
            final_val_loss=vals[-1] if vals else None,
        )
        if self.run.mirror is not None:
            self.run.mirror.finish(status)

    @rank_zero_only
    def record_resume(self, changes: dict[str, list[Any]]) -> None:
        """Note in the manifest that the run continues, from which step, with which code and
        which change of budget (then saved in its config.yaml too)."""
        changed = "".join(f"; {k} {old} -> {new}" for k, (old, new) in changes.items())
        self.log(f"resuming run {self.run.id} at step {self.step}{changed}")
        if changes:
            save_config(self.config, self.run.path / "config.yaml")
        # The code may have changed since the run started: record what resumes it.
        resume = Resume(self.step, now_iso(), code_fingerprint().shoshin_source, changes)
        self.run.update_manifest(resumed=[*self.run.manifest.resumed, resume])

    @rank_zero_only
    def say_if_stopped_on_budget(self) -> None:
        """The last lines of a run the time budget stopped: steps done of planned, and how to go on."""
        for line in budget_lines(self.run.path, self.run.manifest, self.config.train.max_minutes):
            self.log(line)

    @rank_zero_only
    def final_sample(self) -> None:
        """Write and print train.sample_tokens tokens of the trained model (samples/step-N.txt)."""
        tc = self.config.train
        if tc.sample_tokens <= 0:
            return
        text = self.sample_text(tc.sample_tokens, tc.sample_prompt, seed=tc.seed)
        (self.run.path / "samples").mkdir(exist_ok=True)
        path = self.run.path / "samples" / f"step-{self.step:07d}.txt"
        path.write_text(text)
        if self.run.mirror is not None:
            self.run.mirror.log_artifact(path, "samples")
        self.log("sample:\n" + text)

    def sample_text(self, max_new_tokens: int, prompt: str = "", seed: int = 0) -> str:
        """A short sample from the current model, as a chat reply when the run is a chat model."""
        tok = self.data.tokenizer
        chat = is_chat_tokenizer(tok)
        if chat:
            prompt = prompt or "Hi! How are you?"
        params = surface_defaults("training", max_new_tokens=max_new_tokens, seed=seed)
        text = "".join(sample_text(self.model, tok, prompt, params))
        return f"user: {prompt}\nassistant: {text}" if chat else prompt + text


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
        changed = change_budget(config, changes)
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


def change_budget(config: Config, changes: Sequence[str]) -> dict[str, list[Any]]:
    """Apply a resume's new budget to `config`; returns what changed, {key: [before, after]}.

    The learning-rate schedule is the one the run trained with: when max_steps moves, the cosine
    still reaches min_lr where it did (train.lr_decay_steps keeps the old max_steps), and steps past
    it train at min_lr, as nanoGPT's lr_decay_iters does. The LR never jumps on a resume.
    """
    tc = config.train
    keys = ("max_steps", "max_minutes", "lr_decay_steps")
    before = {k: getattr(tc, k) for k in keys}
    apply_overrides(config, list(changes))
    if tc.max_steps != before["max_steps"] and not tc.lr_decay_steps:
        tc.lr_decay_steps = before["max_steps"]
    return {f"train.{k}": [before[k], getattr(tc, k)] for k in keys if getattr(tc, k) != before[k]}
