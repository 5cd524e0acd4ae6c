"""The training loop: one story from config to a run directory with metrics and checkpoints.

Resume is exact: model, optimizer, schedule position, RNG states (dropout and the batch sampler) are
restored from the checkpoint, so an interrupted-then-resumed run logs the same losses as one that
ran straight through (bitwise on CPU with the same thread count).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from shoshin.config import Config, save_config
from shoshin.data.chat import is_chat_tokenizer
from shoshin.data.dataset import PreparedData, check_fits, get_batch, prepare_data
from shoshin.data.tokenizers import BPE_FILE, BpeTokenizer, load_tokenizer
from shoshin.errors import ShoshinError
from shoshin.evaluation.evaluate import heldout_at_end_of_training
from shoshin.generation.sample import sample_text
from shoshin.generation.sampling import SamplingParams
from shoshin.interop.hf import Pretrained
from shoshin.models import build_model, count_parameters
from shoshin.runs.mlflow_sink import open_mirror
from shoshin.runs.provenance import code_fingerprint, data_record
from shoshin.runs.store import CONFIG, Run, create_run, now_iso
from shoshin.training.checkpoint import (
    checkpoint_path,
    load_model_tensors,
    load_optimizer_state,
    read_checkpoint,
    read_index,
    save_checkpoint,
    verify_checkpoint,
)
from shoshin.training.distributed import init_distributed
from shoshin.training.estimate import estimate, peak_resident_bytes
from shoshin.training.optim import lr_at, make_optimizer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ShoshinError("train.device=cuda but no CUDA GPU is available; use train.device=auto")
    return torch.device(name)


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
    if init is not None:
        return init.tokenizer
    if config.data.tokenizer != "pretrained":
        return None
    tokenizer = load_tokenizer(run.path) if (run.path / BPE_FILE).exists() else None
    if not isinstance(tokenizer, BpeTokenizer):
        raise ShoshinError(
            "data.tokenizer=pretrained takes the tokenizer of a checkpoint; "
            "fine-tune one with: shoshin finetune --from SRC"
        )
    return tokenizer


class Trainer:
    """Trains one run. Use `train(config)` for a new run or `resume(run)` to continue one.

    Under torchrun every rank builds a Trainer; only rank 0 (`self.dist.is_main`) writes anything.
    """

    def __init__(self, config: Config, run: Run, log=print, init: Pretrained | None = None):
        """`init`: a pretrained checkpoint to start from (shoshin finetune) instead of random weights."""
        self.config = config
        self.run = run
        tc = config.train
        self.dist = init_distributed(pick_device(tc.device))
        self.log = log if self.dist.is_main else _quiet
        self.device = self.dist.device
        with self.dist.main_first():  # rank 0 tokenizes and caches; the others then read the cache
            self.data: PreparedData = prepare_data(
                config.data, log=self.log, tokenizer=_pretrained_tokenizer(config, run, init)
            )
        check_fits(self.data, config.model.block_size, config.data.source)
        config.model.vocab_size = self.data.tokenizer.vocab_size
        torch.manual_seed(tc.seed)
        self.model = build_model(config.model)
        if init is not None:
            init.copy_into(self.model)  # the vocabulary may have grown by the chat tokens
            if self.dist.is_main:
                run.update_manifest(base_model=init.describe())
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, tc, self.device.type)
        self.batch_gen = torch.Generator().manual_seed(tc.seed)
        self.step = 0
        self.best_val = math.inf
        self.elapsed = 0.0  # seconds of training across resumes
        self.tokens_seen = 0
        self.last_eval_step = -1
        # DDP averages gradients across ranks during backward; one process trains the bare model.
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.dist.enabled
            else None
        )
        trained = self.ddp or self.model
        self.forward = torch.compile(trained) if tc.compile else trained
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if tc.dtype == "bfloat16"
            else contextlib.nullcontext()
        )

    # -- state ---------------------------------------------------------------------------

    def load(self, which: str = "latest") -> None:
        """Restore model, optimizer, RNG and counters from a checkpoint of this run."""
        path = checkpoint_path(self.run.path / "checkpoints", which)
        ckpt = read_checkpoint(path, with_trainer=True)
        load_model_tensors(self.model, ckpt["model"], str(path))
        if ckpt["optimizer"] is not None:
            load_optimizer_state(self.optimizer, ckpt["optimizer"], str(path))
        _restore_rng(ckpt["rng"], self.batch_gen)
        state = ckpt["state"]
        self.step = state["step"]
        self.best_val = state.get("best_val_loss") or math.inf
        self.elapsed = state.get("elapsed", 0.0)
        self.tokens_seen = state.get("tokens_seen", 0)

    def save(self, rng: dict[str, torch.Tensor], best: bool = False) -> None:
        if not self.dist.is_main:
            return
        state = {
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            "elapsed": self.elapsed,
            "tokens_seen": self.tokens_seen,
        }
        save_checkpoint(
            self.run.path / "checkpoints",
            self.step,
            self.model,
            self.optimizer,
            rng,
            state,
            best=best,
        )

    # -- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss over eval_iters fixed batches (the same batches every time).

        Under DDP each rank scores its slice of every batch and the means are averaged over ranks.
        """
        tc, T = self.config.train, self.config.model.block_size
        gen = torch.Generator().manual_seed(tc.seed + 1)
        self.model.eval()
        losses = []
        for _ in range(tc.eval_iters):
            x, y = get_batch(self.data.val, tc.batch_size * self.dist.world_size, T, gen)
            x, y = self.dist.shard(x), self.dist.shard(y)
            with self.autocast:
                losses.append(self.forward(x.to(self.device), y.to(self.device)).item())
        self.model.train()
        loss = self.dist.mean(sum(losses) / len(losses))
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
        tc, T = self.config.train, self.config.model.block_size
        stop = tc.max_steps if stop_after is None else min(tc.max_steps, stop_after)
        model, opt, world = self.model, self.optimizer, self.dist.world_size
        tokens_per_step = tc.batch_size * world * tc.grad_accum * T
        interactive = sys.stderr.isatty() and self.dist.is_main
        bar = tqdm(
            total=tc.max_steps, initial=self.step, disable=not interactive, dynamic_ncols=True
        )
        rng_at_step_start = _capture_rng(self.batch_gen)
        updating = False  # between the optimizer step and the end of its bookkeeping
        model.train()
        try:
            if self.dist.is_main:
                self._record_start()  # includes the estimate's calibration: before the clocks start
            self.last_eval_step = self.dist.from_main(self._last_eval_step)
            deadline = (
                time.monotonic() + tc.max_minutes * 60 - self.elapsed if tc.max_minutes else None
            )
            last_log_time, last_log_step = time.monotonic(), self.step
            while self.step < stop:
                # Ranks agree on the time budget (their clocks differ) so that all stop together.
                if deadline is not None and self.dist.any(time.monotonic() >= deadline):
                    self.log(f"time budget of {tc.max_minutes:g} min reached at step {self.step}")
                    break
                step_start = time.monotonic()
                rng_at_step_start = _capture_rng(self.batch_gen)
                lr = lr_at(self.step, tc)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for micro in range(tc.grad_accum):
                    # Every rank draws the same global batch and keeps its own rows of it.
                    x, y = get_batch(self.data.train, tc.batch_size * world, T, self.batch_gen)
                    x, y = self.dist.shard(x), self.dist.shard(y)
                    # Gradients are all-reduced on the last micro-step only; earlier ones accumulate.
                    skip_sync = self.ddp is not None and micro < tc.grad_accum - 1
                    with self.ddp.no_sync() if skip_sync else contextlib.nullcontext():
                        with self.autocast:
                            loss = self.forward(x.to(self.device), y.to(self.device))
                            loss = loss / tc.grad_accum
                        loss.backward()
                    loss_sum += loss.item()
                loss_sum = self.dist.mean(loss_sum)  # the same value on every rank
                if not math.isfinite(loss_sum):
                    raise ShoshinError(
                        f"training loss became {loss_sum} at step {self.step + 1}; stopped "
                        "(the last good checkpoint is kept); try a lower train.lr or train.grad_clip=1"
                    )
                if tc.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                updating = True
                opt.step()
                opt.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens_seen += tokens_per_step
                self.elapsed += time.monotonic() - step_start
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.4f}", refresh=False)

                row: dict[str, float] = {}
                last = self.step == tc.max_steps
                if self.step % tc.log_interval == 0 or last:
                    now = time.monotonic()
                    tok_s = (
                        (self.step - last_log_step)
                        * tokens_per_step
                        / max(now - last_log_time, 1e-9)
                    )
                    last_log_time, last_log_step = now, self.step
                    row.update(train_loss=loss_sum, lr=lr, tokens_per_sec=tok_s)
                evaluated = (tc.eval_interval and self.step % tc.eval_interval == 0) or last
                improved = False
                if evaluated:
                    eval_start = time.monotonic()
                    row.update(self.evaluate())
                    last_log_time += time.monotonic() - eval_start  # keep eval time out of tokens/s
                    improved = row["val_loss"] < self.best_val
                    self.best_val = min(self.best_val, row["val_loss"])
                if row and self.dist.is_main:
                    self.run.append_metrics(
                        {"step": self.step, **row, "elapsed": round(self.elapsed, 3)}
                    )
                    self._report(row, bar, interactive)
                checkpoint_due = tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0
                if checkpoint_due or improved or last:
                    self.save(_capture_rng(self.batch_gen), best=improved)
                updating = False
            self._close_out(bar, interactive)
        except KeyboardInterrupt:
            bar.close()
            if updating:
                # Interrupted while the weights changed or the step was being evaluated and logged:
                # this step is incomplete, so the last checkpoint stands and resume redoes from it.
                latest = read_index(self.run.path / "checkpoints").get("latest")
                self.step = int(latest.split("-")[1]) if latest else 0
            else:
                # Interrupted before the step changed anything: save the state from before it began.
                self.save(rng_at_step_start)
            self._finish("interrupted")
            self.log(
                f"interrupted at step {self.step}; resume with: shoshin train --resume {self.run.id}"
            )
            raise
        except BaseException as exc:
            bar.close()
            self._finish("failed", error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc())
            raise
        bar.close()
        self._finish("completed")
        return self.run

    def _record_start(self) -> None:
        """Rank 0, as the loop starts: what is being trained, where, on what data, at what cost."""
        if "estimate" not in self.run.manifest:  # a resumed run keeps the estimate of its start
            est = estimate(self.config, self.data, self.device, model_resident=True, log=self.log)
            self.run.update_manifest(estimate=est.to_dict())
        self.run.update_manifest(
            status="running",
            params=count_parameters(self.model),
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

    def _close_out(self, bar: tqdm, interactive: bool) -> None:
        """At the end: make sure the end state is evaluated and checkpointed (also after a stop by
        time budget), then score the held-out documents (shoshin.evaluation)."""
        improved = False
        if self.last_eval_step != self.step:
            row = self.evaluate()
            improved = row["val_loss"] < self.best_val
            self.best_val = min(self.best_val, row["val_loss"])
            if self.dist.is_main:
                self.run.append_metrics(
                    {"step": self.step, **row, "elapsed": round(self.elapsed, 3)}
                )
                self._report(row, bar, interactive)
        if not self.dist.is_main:
            return
        index = read_index(self.run.path / "checkpoints")
        if improved or index.get("latest") != f"step-{self.step:07d}":
            self.save(_capture_rng(self.batch_gen), best=improved)
        heldout_at_end_of_training(self.model, self.data, self.run, self.log)

    def _report(self, row: dict[str, float], bar: tqdm, interactive: bool) -> None:
        tc = self.config.train
        parts = [f"step {self.step}/{tc.max_steps}"]
        if "train_loss" in row:
            parts.append(f"loss {row['train_loss']:.4f}")
        if "val_loss" in row:
            parts.append(f"val {row['val_loss']:.4f}")
        if "lr" in row:
            parts.append(f"lr {row['lr']:.2e}")
        if "tokens_per_sec" in row:
            parts.append(f"{row['tokens_per_sec']:,.0f} tok/s")
            remaining = (tc.max_steps - self.step) * self.elapsed / max(self.step, 1)
            parts.append(f"eta {remaining / 60:.1f} min")
        line = " | ".join(parts)
        if interactive:
            if "val_loss" in row:
                bar.write(line)
        else:
            self.log(line)

    def _finish(self, status: str, error: str | None = None, tb: str | None = None) -> None:
        if not self.dist.is_main:
            return
        metrics = self.run.metrics()
        vals = [r["val_loss"] for r in metrics if "val_loss" in r]
        fields = {
            "status": status,
            "end_time": now_iso(),
            "steps": self.step,
            "elapsed_seconds": round(self.elapsed, 2),
            "tokens_seen": self.tokens_seen,
            "peak_rss_bytes": peak_resident_bytes(),
            "best_val_loss": min(vals) if vals else None,
            "final_val_loss": vals[-1] if vals else None,
            "error": error,
        }
        if tb:
            (self.run.path / "traceback.txt").write_text(tb)
            fields["traceback"] = "traceback.txt"
        self.run.update_manifest(**fields)
        if self.run.mirror is not None:
            self.run.mirror.finish(status)

    def sample_text(self, max_new_tokens: int, prompt: str = "", seed: int = 0) -> str:
        """A short sample from the current model, as a chat reply when the run is a chat model."""
        tok = self.data.tokenizer
        chat = is_chat_tokenizer(tok)
        if chat:
            prompt = prompt or "Hi! How are you?"
        params = SamplingParams(max_new_tokens, temperature=0.8, top_k=50, seed=seed)
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
    `manifest` adds fields to the new run's manifest. Under torchrun, rank 0 creates the run.
    """
    ctx = init_distributed(pick_device(config.train.device))
    run = ctx.from_main(lambda: create_run(config, runs_dir, command, manifest))
    if ctx.is_main:
        procs = f" ({ctx.world_size} processes)" if ctx.enabled else ""
        log(f"run {run.id} -> {run.path}{procs}")
    try:
        trainer = Trainer(config, run, log=log, init=init)
    except BaseException as exc:
        if ctx.is_main:
            (run.path / "traceback.txt").write_text(traceback.format_exc())
            run.update_manifest(
                status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                end_time=now_iso(),
                error=f"{type(exc).__name__}: {exc}",
                traceback="traceback.txt",
            )
        raise
    if ctx.is_main:
        save_config(config, run.path / "config.yaml")  # now with the tokenizer's vocab_size
    trainer.fit(stop_after)
    _final_sample(trainer, log)
    return run


def resume(run: Run, log=print) -> Run:
    """Continue `run` from its latest checkpoint, exactly where it stopped."""
    config = run.config
    # A damaged or hostile checkpoint is refused before data and a model are built to resume into.
    verify_checkpoint(
        checkpoint_path(run.path / "checkpoints"), config.model, str(run.path / CONFIG)
    )
    trainer = Trainer(config, run, log=log)
    trainer.load("latest")
    if trainer.dist.is_main:
        log(f"resuming run {run.id} at step {trainer.step}")
        run.update_manifest(
            resumed=[
                *run.manifest.get("resumed", []),
                # The code may have changed since the run started: record what resumes it.
                {
                    "step": trainer.step,
                    "time": now_iso(),
                    "code_fingerprint": code_fingerprint()["shoshin_source"],
                },
            ]
        )
    trainer.fit()
    _final_sample(trainer, log)
    return run


def _final_sample(trainer: Trainer, log) -> None:
    tc = trainer.config.train
    if tc.sample_tokens > 0 and trainer.dist.is_main:
        text = trainer.sample_text(tc.sample_tokens, tc.sample_prompt, seed=tc.seed)
        (trainer.run.path / "samples").mkdir(exist_ok=True)
        path = trainer.run.path / "samples" / f"step-{trainer.step:07d}.txt"
        path.write_text(text)
        if trainer.run.mirror is not None:
            trainer.run.mirror.log_artifact(path, "samples")
        log("sample:\n" + text)
