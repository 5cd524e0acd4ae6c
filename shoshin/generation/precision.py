"""Inference precision: which form each Linear layer takes, and which dtype is fastest here.

Decoding one token at a time reads every weight once per token, so at batch 1 it is limited by
memory bandwidth and by the per-token cost of the kernels: fewer bytes per weight only pay where a
kernel turns them into speed. What each Linear layer becomes (shoshin.generation.quantize holds
the layers), by device and CPU:

- fp32 on CPU: `TransposedLinear` (the weight stored (in, out), which BLAS streams faster for
  one row). Exactly the model's arithmetic: the engine's fp32 output equals the naive path's.
- bf16 on a CPU with bf16 instructions (AVX-512 BF16 or AMX): `PackedLinear`, oneDNN's blocked
  layout. Without those instructions bf16 is plain `nn.Linear` in bf16.
- int8 (`Int8Linear`): per-output-channel int8 weights, FBGEMM's kernels on x86.
- int4 (`Int4Linear`): group-wise int4 weights (groups of `INT4_GROUP_SIZE` inputs), PyTorch's CPU
  int4 kernel; layers whose input width is not a multiple of the group stay int8.

Whether bf16 beats fp32 is a property of the CPU, its memory and PyTorch's kernels, so it is
measured rather than assumed (`measured_speeds`, once per CPU model and PyTorch version, cached
under the shoshin cache folder); `--dtype auto` takes the faster one.

Reduced precision changes the arithmetic: outputs agree with fp32 within a tolerance (tests state
it), and int8 rows of one batch share an activation range per matmul, so only fp32 promises that a
row's tokens are the same alone and in a batch.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from shoshin.device import cpu_features, cpu_has_bf16_matmul, pick_device
from shoshin.errors import ShoshinError
from shoshin.generation.quantize import (
    INT4_GROUP_SIZE,
    PackedLinear,
    TransposedLinear,
    fbgemm_int8_available,
    quantize_int4,
    quantize_int8,
    replace_linears,
)
from shoshin.storage.files import atomic_write_json, cache_dir

QUANTIZE = (None, "none", "int8", "int4")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def _measure_cache_file() -> Path:
    return cache_dir() / "precision.json"


def _cpu_key() -> str:
    f = cpu_features()
    threads = torch.get_num_threads()  # two threads share bandwidth and overhead differently
    return f"{f['model'] or f['capability']} | torch {torch.__version__} | {threads} threads"


def cached_speeds() -> dict | None:
    """This CPU's measured decode speeds (see measured_speeds), or None if not measured yet."""
    try:
        return json.loads(_measure_cache_file().read_text()).get(_cpu_key())
    except (OSError, ValueError, AttributeError):
        return None


def measured_speeds(rounds: int = 3, steps: int = 16) -> dict:
    """ms per decode step of fp32 and bf16 on this CPU, and the faster one ("fastest").

    Measured once (a few seconds) on a GPT-2-small-wide model of four blocks, prepared as
    `prepare_for_inference` prepares it, decoding `steps` tokens at batch 1 (so the norms,
    attention and conversions count, not only the matmuls), interleaved and best of `rounds`;
    then cached by CPU model, PyTorch version and thread count. A damaged or unwritable cache
    file only means measuring again.
    """
    from shoshin.config import ModelConfig
    from shoshin.models.gpt import GPT

    known = cached_speeds()
    if known is not None:
        return known
    print("shoshin: timing fp32 against bf16 decoding on this CPU (once)", file=sys.stderr)
    torch.manual_seed(0)
    config = ModelConfig(n_layer=4, n_head=12, n_embd=768, block_size=64, vocab_size=8192)
    plain = GPT(config)
    models = {name: prepare_for_inference(copy.deepcopy(plain), name) for name in ("fp32", "bf16")}
    tokens = torch.zeros(1, 1, dtype=torch.long)
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for _ in range(rounds):
            for name, model in models.items():
                cache = model.new_cache(1)
                start = time.perf_counter()
                for _ in range(steps):
                    model(tokens, cache=cache)
                best[name] = min(best[name], (time.perf_counter() - start) / steps)
    result = {name: round(s * 1e3, 3) for name, s in best.items()}
    result["fastest"] = min(best, key=best.get)
    result["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _store_speeds(result)
    return result


def _store_speeds(result: dict) -> None:
    path = _measure_cache_file()
    try:
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table[_cpu_key()] = result
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, table)
    except OSError:
        pass


def resolve_dtype(dtype: str, device: torch.device | str = "cpu") -> str:
    """`dtype` itself, or for "auto" the one measured fastest here (bf16 on a GPU)."""
    if dtype != "auto":
        return dtype
    if torch.device(device).type != "cpu":
        return "bf16"
    return measured_speeds()["fastest"]


def precision_help() -> str:
    """One sentence for --help: which dtype decodes fastest on this CPU, as measured (never
    measuring here: help must stay instant)."""
    f = cpu_features()
    where = f"on this CPU ({f['model'] or f['capability']})"
    speeds = cached_speeds()
    if speeds is None:
        dtype = "not measured yet here: --dtype auto measures fp32 against bf16 once and keeps it"
    else:
        other = "bf16" if speeds["fastest"] == "fp32" else "fp32"
        ratio = speeds[other] / speeds[speeds["fastest"]]
        dtype = (
            f"{speeds['fastest']} decodes fastest, measured {speeds['measured']} "
            f"({other} takes {ratio:.2f}x as long); --dtype auto uses it"
        )
    int8 = "int8 kernels with VNNI" if fbgemm_int8_available() and f["vnni"] else "no VNNI"
    return f"{where}: {dtype}; --quantize int8/int4 read 4x/8x fewer weight bytes ({int8})"


def prepare_for_inference(
    model: nn.Module, dtype: str = "fp32", quantize: str | None = None, device: str | None = None
) -> nn.Module:
    """Ready `model` for generation, in place: eval mode, dtype fp32|bf16|auto (the one measured
    fastest here), quantize None|int8|int4, moved to `device` (auto|cpu|cuda; None leaves it).

    Linear layers are replaced by the fastest form for the device and CPU (see the module's
    docstring); the model is then for inference only (a tied lm_head gets its own copy).
    """
    if dtype not in DTYPES and dtype != "auto":
        raise ShoshinError(f"dtype must be one of fp32, bf16, auto; got {dtype!r}")
    if quantize not in QUANTIZE:
        raise ShoshinError(f"quantize must be int8 or int4 (or none); got {quantize!r}")
    if device is not None:
        model.to(pick_device(device, "--device"))
    dtype = resolve_dtype(dtype, next(model.parameters()).device)
    model.eval()
    if hasattr(model, "fuse"):  # a model that declares projections it can merge (Llama)
        model.fuse()
    model.to(DTYPES[dtype])
    on_cpu = next(model.parameters()).device.type == "cpu"
    if quantize == "int8":
        quantize_int8(model)
    elif quantize == "int4":
        quantize_int4(model, INT4_GROUP_SIZE)
    elif on_cpu and DTYPES[dtype] == torch.float32:
        replace_linears(model, TransposedLinear)
    elif on_cpu and cpu_has_bf16_matmul():
        replace_linears(model, PackedLinear)
    return model
