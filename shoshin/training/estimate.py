"""What a training run will cost before it starts: parameters, FLOPs, memory and wall time.

The counts are analytic (from the config alone); the time comes from a few calibration steps of
the real model on this machine, and the memory adds the resident size of this very process (the
Python and PyTorch runtime, which dominates for small models) to the analytic tensors.

FLOPs per token, training (forward + backward = 3 x forward), after Kaplan et al. and PaLM:
    6 * N + 12 * n_layer * n_embd * block_size
N counts the weights that take part in matrix multiplies (every parameter except the position
embeddings; the tied token embedding counts once, for the output head). The second term is the
attention score and weighted-sum work, which grows with the context and is not in N.

A LoRA run (lora.rank > 0) trains its adapters only: gradients and AdamW's moments exist for
them alone, while the frozen base weights still take part in every pass.
"""

from __future__ import annotations

import resource
import sys
import time

import torch
import torch.nn as nn

from shoshin.config import Config, ModelConfig
from shoshin.data.dataset import PreparedData, check_fits, eval_batch_count, prepare_data
from shoshin.device import pick_device
from shoshin.models import architecture, build_model, count_parameters, count_trainable
from shoshin.models import lora as lora_adapters
from shoshin.progress import SlowWork, format_seconds
from shoshin.storage.manifest import Estimate
from shoshin.training.distributed import DistContext
from shoshin.training.step import TrainStep, draw_batch

FLOAT32 = 4
CALIBRATION_STEPS = 5  # timed optimizer steps (after 2 untimed ones) when train.calibrate is on


def flops_per_token(config: ModelConfig, matmul_params: int) -> tuple[float, float]:
    """(training FLOPs per token, the part of it that is not 6N) for a model of this shape."""
    extra = architecture(config.arch).extra_flops_per_token(config)
    return 6.0 * matmul_params + extra, extra


def matmul_parameters(model: nn.Module) -> int:
    """Parameters taking part in matrix multiplies: all but the position embeddings."""
    wpe = getattr(model, "wpe", None)
    return count_parameters(model) - (wpe.weight.numel() if wpe is not None else 0)


def activation_bytes(config: ModelConfig, batch_size: int, dtype: str = "float32") -> int:
    """Tensors kept for the backward pass of one micro-batch (B = batch_size, T = block_size).

    The model's own activations (counted by its registry entry, in the training dtype) plus the
    logits, their log-softmax and their gradient (3 B*T*V, always in float32 for the loss).
    """
    width = 2 if dtype == "bfloat16" else FLOAT32
    body = architecture(config.arch).activation_values(config, batch_size)
    return body * width + 3 * batch_size * config.block_size * config.vocab_size * FLOAT32


def kv_cache_bytes(config: ModelConfig, batch_size: int = 1) -> int:
    """Inference cache at full context: keys and values of every layer (GPT), or the LSTM state."""
    return architecture(config.arch).cache_values(config, batch_size) * FLOAT32


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def peak_resident_bytes() -> int:
    """The peak resident memory of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def memory_estimate(
    config: Config,
    params: int,
    data: PreparedData,
    runtime_bytes: int,
    trainable: int | None = None,
) -> dict[str, int]:
    """Training and inference memory, in bytes, by part; `trainable`: the parameters the optimizer
    updates (default: all), which alone have gradients and optimizer state."""
    tc = config.train
    weights = params * FLOAT32
    trained = (params if trainable is None else trainable) * FLOAT32
    # The tokenized corpus is memory-mapped: random windows page all of it in over a run.
    data_bytes = sum(s.tokens.nbytes + s.mask.nbytes for s in (data.train, data.val))
    parts = {
        "weights": weights,
        "gradients": trained,
        "optimizer": 2 * trained,  # AdamW's two moments
        "activations": activation_bytes(config.model, tc.batch_size, tc.dtype),
        "data": data_bytes,
    }
    parts["training_tensors"] = sum(parts.values())
    parts["runtime"] = runtime_bytes
    parts["training_process"] = parts["training_tensors"] + runtime_bytes
    parts["kv_cache"] = kv_cache_bytes(config.model)
    parts["inference_tensors"] = weights + parts["kv_cache"]
    return parts


def calibrate(
    config: Config,
    data: PreparedData,
    device: torch.device,
    steps: int = 5,
    warmup: int = 2,
    log=print,
) -> tuple[float, float]:
    """Seconds per optimizer step and per evaluation batch, timed on a fresh copy of the model.

    The copy, its optimizer and its batches are separate from any run, and the global RNG is
    restored afterwards, so calibrating inside a training process changes none of its results.
    The steps are the training step itself (shoshin.training.step), at the run's peak rate.
    """
    tc, T = config.train, config.model.block_size
    single = DistContext(device=device)
    with torch.random.fork_rng(devices=[]):
        model = build_model(config.model)
        if config.lora.rank:
            lora_adapters.attach(model, config.lora)  # random base weights time the same
        model.to(device)
        gen = torch.Generator().manual_seed(tc.seed + 2)
        step = TrainStep(model, tc, T, data.train, gen, schedule=lambda _: tc.lr, dist=single)

        @torch.no_grad()
        def eval_batch() -> None:
            step.loss(*draw_batch(data.val, tc.batch_size, T, gen, single)).item()

        what = f"calibrating the time estimate ({warmup + steps} training steps on this machine)"
        progress = SlowWork(what, warmup + 2 * steps + 1, log)
        step_s = _timed(lambda: step(0), steps, warmup, device, progress)
        model.eval()
        eval_s = _timed(eval_batch, steps, 1, device, progress)
    return step_s, eval_s


def _timed(fn, repeats: int, warmup: int, device: torch.device, progress: SlowWork) -> float:
    """Mean seconds per call after `warmup` untimed calls (the first ones pay for allocation)."""
    for _ in range(warmup):
        fn()
        progress.advance()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
        progress.advance()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def estimate(
    config: Config,
    data: PreparedData | None = None,
    device: torch.device | None = None,
    calibration_steps: int = CALIBRATION_STEPS,
    model_resident: bool = False,
    log=print,
) -> Estimate:
    """Estimate the cost of training `config`; `calibration_steps=0` skips the timing.

    `model_resident` says the caller already holds the model's weights (a Trainer does), so they
    are not counted twice in the measured runtime.
    """
    device = device or pick_device(config.train.device)
    if data is None:
        data = prepare_data(config.data, log=log)
        check_fits(data, config.model.block_size, config.data.source)
    config.model.vocab_size = data.tokenizer.vocab_size
    with torch.random.fork_rng(devices=[]):
        shape = build_model(config.model)  # on CPU, only to count
        if config.lora.rank:
            lora_adapters.attach(shape, config.lora)
    params, matmul = count_parameters(shape), matmul_parameters(shape)
    trainable = count_trainable(shape)
    del shape
    fpt, attention = flops_per_token(config.model, matmul)
    tc = config.train
    tokens_per_step = tc.batch_size * tc.grad_accum * config.model.block_size
    # PyTorch loads its optimizer machinery on first use (~70 MB resident); a training process has
    # it, so load it before measuring this process as the runtime of one.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    runtime = resident_bytes() - (params * FLOAT32 if model_resident else 0)
    est = Estimate(
        params=params,
        matmul_params=matmul,
        flops_per_token=fpt,
        attention_flops_per_token=attention,
        tokens_per_step=tokens_per_step,
        steps=tc.max_steps,
        total_tokens=tokens_per_step * tc.max_steps,
        total_flops=fpt * tokens_per_step * tc.max_steps,
        memory=memory_estimate(config, params, data, max(runtime, 0), trainable),
        trainable_params=trainable,
    )
    if calibration_steps > 0:
        step_s, eval_s = calibrate(config, data, device, steps=calibration_steps, log=log)
        train_s = tc.max_steps * step_s
        if tc.max_minutes:
            train_s = min(train_s, tc.max_minutes * 60)
        steps = round(train_s / step_s)
        evals = steps // tc.eval_interval if tc.eval_interval else 0
        if not tc.eval_interval or steps % tc.eval_interval:
            evals += 1  # the last step is always evaluated
        est.step_seconds = step_s
        est.eval_batch_seconds = eval_s
        est.calibration_steps = calibration_steps
        est.predicted_train_seconds = train_s
        eval_batches = eval_batch_count(
            data.val.tokens.size, tc.batch_size, config.model.block_size, tc.eval_iters
        )
        est.predicted_eval_seconds = evals * eval_batches * eval_s
        est.predicted_total_seconds = train_s + est.predicted_eval_seconds
        est.achieved_flops_per_second = fpt * tokens_per_step / step_s
    return est


def _si(value: float, unit: str = "") -> str:
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_estimate(est: Estimate) -> str:
    """The human-readable report printed by `shoshin estimate`."""
    m = est.memory
    lines = [
        f"parameters        {est.params:,} ({est.matmul_params:,} in matrix multiplies)",
        *(
            [f"trainable         {est.trainable_params:,} (LoRA adapters; the rest is frozen)"]
            if est.trainable_params not in (None, est.params)
            else []
        ),
        f"FLOPs per token   {_si(est.flops_per_token)} "
        f"(6N = {_si(6 * est.matmul_params)} + attention {_si(est.attention_flops_per_token)})",
        f"training          {est.steps:,} steps x {est.tokens_per_step:,} tokens = "
        f"{_si(est.total_tokens)} tokens, {_si(est.total_flops, 'FLOP')}",
        "memory, training  "
        + ", ".join(
            f"{k} {_mib(m[k])}"
            for k in ("weights", "gradients", "optimizer", "activations", "data")
        ),
        f"                  tensors {_mib(m['training_tensors'])} + runtime {_mib(m['runtime'])}"
        f" = process {_mib(m['training_process'])}",
        f"memory, inference weights {_mib(m['weights'])} + KV cache at full context "
        f"{_mib(m['kv_cache'])} (batch 1)",
    ]
    if est.step_seconds is not None:
        lines += [
            f"calibration       {est.calibration_steps} steps: {est.step_seconds * 1000:.1f} ms/step, "
            f"{_si(est.achieved_flops_per_second, 'FLOP/s')}",
            f"predicted time    {format_seconds(est.predicted_train_seconds)} training + "
            f"{format_seconds(est.predicted_eval_seconds)} evaluation = "
            f"{format_seconds(est.predicted_total_seconds)}",
        ]
    return "\n".join(lines)
