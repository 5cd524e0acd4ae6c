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
import time
from typing import Any

import torch

from shoshin.config import Config, save_config
from shoshin.data.chat import is_chat_tokenizer
from shoshin.data.dataset import PreparedData, eval_batches
from shoshin.device import pick_device
from shoshin.errors import Interrupted, ShoshinError, Terminated
from shoshin.generation.continuation import sample_text
from shoshin.generation.params import surface_defaults
from shoshin.generation.scoring import heldout_at_end_of_training
from shoshin.interop.hf import Pretrained
from shoshin.models import count_parameters, count_trainable
from shoshin.models import lora as lora_adapters
from shoshin.runs.mlflow_sink import open_mirror
from shoshin.runs.provenance import code_fingerprint, data_record
from shoshin.runs.store import (
    HEARTBEAT_SECONDS,
    Run,
    budget_lines,
    now_iso,
    resume_command,
)
from shoshin.storage.checkpoint import (
    checkpoint_path,
    load_model_tensors,
    load_optimizer_state,
    model_tensors,
    read_checkpoint,
    read_index,
    save_checkpoint,
)
from shoshin.storage.manifest import Resume
from shoshin.training.distributed import init_distributed, rank_zero_only
from shoshin.training.estimate import CALIBRATION_STEPS, estimate, peak_resident_bytes
from shoshin.training.optim import lr_at
from shoshin.training.progress_bar import Progress
from shoshin.training.setup import (
    batch_generator,
    capture_rng,
    pretrained_tokenizer,
    restore_rng,
    seeded_model,
    training_data,
)
from shoshin.training.step import TrainStep
from shoshin.training.validation import loss_sums, per_unit


def _quiet(*args, **kwargs) -> None:
    """The log function of ranks other than 0: one copy of every message is enough."""


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
        tokenizer = pretrained_tokenizer(config, run, init)
        self.data: PreparedData = training_data(config, self.dist, self.log, tokenizer)
        self.model = seeded_model(config)
        if init is not None:
            # the vocabulary may have grown by the chat tokens
            init.copy_into(self.model, tokens=self.data.tokenizer.vocab_size)
            self._record(base_model=init.describe())
        self.adapter = self._attach_lora(init)
        self.model.to(self.device)
        self.batch_gen = batch_generator(config)
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
        self.last_eval_whole = False  # whether that evaluation scored the whole split
        self._last_beat = -math.inf
        self.stopped_on_budget = False
        # The last state recorded in full (see _commit): what an interrupt keeps.
        self._committed_updates = 0
        self._committed_rng = capture_rng(self.batch_gen)

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
        restore_rng(ckpt["rng"], self.batch_gen)
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

    def evaluate(self, whole: bool = False) -> dict[str, float]:
        """Validation loss (shoshin.training.validation): the whole split when `whole`, in float32,
        else the estimate of train.eval_iters batches of the same windows spread evenly over it.

        Under DDP each rank scores every world_size-th batch and the sums are combined over ranks.
        """
        tc, T, world = self.config.train, self.config.model.block_size, self.dist.world_size
        batches = eval_batches(
            self.data.val, tc.batch_size * world, T, 0 if whole else tc.eval_iters
        )
        # The bare model: DDP's forward would wait for ranks that score fewer batches.
        total, count = loss_sums(
            self.model,
            batches,
            self.device,
            autocast=None if whole else self.train_step.autocast,
            mine=lambda i: i % world == self.dist.rank,
        )
        loss = self.dist.mean(total) / max(self.dist.mean(count), 1e-12)  # sum / sum over ranks
        self.last_eval_step = self.step
        self.last_eval_whole = whole
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        if self.config.data.loss_on == "all":
            # Bits per character (char tokenizer) or per UTF-8 byte (BPE): comparable across tokenizers.
            bits = per_unit(loss, self.data.meta, self.config.data.tokenizer)
            if bits is not None:
                out[f"val_bits_per_{bits[0]}"] = bits[1]
        return out

    # -- the loop ------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None) -> Run:
        """Train up to train.max_steps, or only up to step `stop_after` with the same LR schedule."""
        tc = self.config.train
        stop = tc.max_steps if stop_after is None else min(tc.max_steps, stop_after)
        log = self.log
        self.progress = Progress(tc.max_steps, self.step, log, self.dist.is_main)
        self.log = self.progress.say  # while the bar is drawn, lines go above it
        try:
            self._start()
            while self.step < stop and not self._out_of_time():
                loss, lr = self._take_step()
                row = self._training_row(loss, lr)
                improved = self._evaluate_if_due(row)
                self._write_row(row)
                self._checkpoint_if_due(improved)
                self._commit()
            self._end_bar(log)
            self._close_out()
        except KeyboardInterrupt as exc:
            self._end_bar(log)  # before the resume hint: nothing is drawn after it
            self._keep_after_interrupt()
            raise exc if isinstance(exc, Terminated) else Interrupted from None
        except BaseException as exc:
            self._end_bar(log)
            self._finish("failed", exc)
            raise
        self._finish("completed")
        return self.run

    def _end_bar(self, log) -> None:
        """Close the bar (its last state stays on screen, its line ended) and log plainly again."""
        self.progress.close()
        self.log = log

    def _start(self) -> None:
        """Record the start, save the starting state of a new run, agree on where the last
        evaluation was, and start the clocks."""
        tc = self.config.train
        self.model.train()
        self._record_start()  # includes the estimate's calibration: before the clocks start
        if self._latest_checkpoint_step() is None:
            # A run always has a checkpoint to go back to: Ctrl-C in the middle of a step before
            # the first periodic checkpoint (or a SIGKILL then) resumes from the start, exactly.
            self._save(capture_rng(self.batch_gen))
        self.last_eval_step = self.dist.from_main(self._last_eval_step)
        # an evaluation at the last step scored the whole split (a run killed after it resumes
        # there, and must not score it again)
        self.last_eval_whole = self.last_eval_step == tc.max_steps
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
        """Estimate the val loss every eval_interval steps, score the whole split at the end, into
        `row`; True if val improved."""
        tc = self.config.train
        due = tc.eval_interval and self.step % tc.eval_interval == 0
        if not due and self.step != tc.max_steps:
            return False
        started = time.monotonic()
        improved = self._evaluate_into(row, whole=self.step == tc.max_steps)
        since, at = self._log_clock
        self._log_clock = (since + time.monotonic() - started, at)  # keep evaluation out of tok/s
        return improved

    def _evaluate_into(self, row: dict[str, float], whole: bool = False) -> bool:
        row.update(self.evaluate(whole))
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
            elapsed_seconds=round(self.elapsed, 4),
            tokens_seen=self.tokens_seen,
        )

    def _checkpoint_if_due(self, improved: bool) -> None:
        tc = self.config.train
        due = tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0
        if due or improved or self.step == tc.max_steps:
            self._save(capture_rng(self.batch_gen), best=improved)

    def _commit(self) -> None:
        """This step is complete and recorded: an interrupt from here on keeps it."""
        self._committed_updates = self.train_step.updates
        self._committed_rng = capture_rng(self.batch_gen)

    def _close_out(self) -> None:
        """After the loop: the whole validation split scored and the end state checkpointed (also
        after a stop by time budget), then the held-out documents scored (shoshin.evaluation)."""
        row: dict[str, float] = {}
        # A run cut short at a step it already evaluated (reproduce --steps N) keeps that figure,
        # as the run it reproduces recorded it there.
        cut = self.step < self.config.train.max_steps and not self.stopped_on_budget
        scored = self.last_eval_step == self.step and (self.last_eval_whole or cut)
        improved = not scored and self._evaluate_into(row, whole=True)
        self._write_row(row)
        if improved or self._latest_checkpoint_step() != self.step:
            self._save(capture_rng(self.batch_gen), best=improved)
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
            elapsed_seconds=round(self.elapsed, 4),
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
