"""Devices: which one a command runs on, and what this CPU offers reduced precision.

Low on purpose: training picks its device here, and so do inference and the CLI's help (which
says what decodes fastest on this CPU); none of them should reach into another's module for it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from shoshin.errors import ShoshinError


def pick_device(name: str, option: str = "train.device") -> torch.device:
    """The torch device for `option` (train.device, --device): auto (CUDA when there is a GPU,
    else CPU), cpu or cuda."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ShoshinError(f"{option} cuda: no CUDA GPU is available here; use auto or cpu")
    return torch.device(name)


@functools.cache
def cpu_features() -> dict[str, bool | str]:
    """What this CPU offers reduced precision: ATen's dispatch level and the matrix instructions
    that make bf16 and int8 pay (read from PyTorch and /proc/cpuinfo, never assumed)."""
    flags: set[str] = set()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and not model:
                model = value.strip()
    except OSError:
        pass
    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags or torch.cpu._is_avx512_bf16_supported(),
        "amx_bf16": "amx_bf16" in flags or torch.cpu._is_amx_tile_supported(),
        "amx_int8": "amx_int8" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags) or torch.cpu._is_vnni_supported(),
    }


def cpu_has_bf16_matmul() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX)."""
    f = cpu_features()
    return bool(f["avx512_bf16"] or f["amx_bf16"]) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fbgemm_int8_available() -> bool:
    """True when PyTorch's x86 int8 kernels (FBGEMM dynamic quantization) can run here."""
    return (
        hasattr(torch.ops.quantized, "linear_dynamic")
        and "x86" in torch.backends.quantized.supported_engines
    )
