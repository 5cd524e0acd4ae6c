"""Reduced-precision inference: bf16 weights and activations, or int8 weights.

Decoding one token at a time reads every weight once per token, so at batch 1 it is limited by
memory bandwidth and by the per-token cost of the kernels: fewer bytes per weight only pay where a
kernel turns them into speed. What each Linear layer becomes, by device and CPU:

- fp32 on CPU: `TransposedLinear` (the weight stored (in, out), which BLAS streams faster for
  one row). Exactly the model's arithmetic: the engine's fp32 output equals the naive path's.
- bf16 on a CPU with bf16 instructions (AVX-512 BF16 or AMX): `PackedLinear`, the weight reordered
  once into oneDNN's blocked layout, which its AMX/AVX-512 BF16 kernels read directly (PyTorch's
  plain bf16 matmul re-packs or takes a slower path on every call). Without those instructions
  bf16 is plain `nn.Linear` in bf16, and is no faster than fp32.
- int8 (`Int8Linear`): weights quantized per output channel, w ≈ scale[n] * q[n, k] with q in
  [-127, 127]. On an x86 CPU the matmul runs in FBGEMM's int8 kernels (VNNI where the CPU has it)
  with the activations quantized on the fly, as CTranslate2's `int8_float32` does; elsewhere
  PyTorch's int8-weight kernel (bf16 activations) or, on GPU, a dequantized matmul.

Reduced precision changes the arithmetic: outputs agree with fp32 within a tolerance (tests state
it), and int8 rows of one batch share an activation range per matmul, so only fp32 promises that a
row's tokens are the same alone and in a batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from shoshin.device import cpu_has_bf16_matmul, fbgemm_int8_available, pick_device
from shoshin.errors import ShoshinError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class Int8Linear(nn.Module):
    """A Linear layer whose weight is stored as int8 with one float scale per output channel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q = torch.round(w / scale[:, None]).to(torch.int8)  # (out, in)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.packed = None  # FBGEMM's packed int8 weight and bias (x86 CPU), else the buffers
        if w.device.type == "cpu" and fbgemm_int8_available():
            self.packed = _fbgemm_pack(q, scale, bias)
            for name in ("weight", "scale", "bias"):
                self.register_buffer(name, None)
        else:
            self.register_buffer("weight", q)
            self.register_buffer("scale", scale.to(linear.weight.dtype))
            self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
            self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            # activations are quantized on the fly (one range per call), accumulated in int32,
            # and the bias added in the same kernel
            y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, False)
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        if x.device.type == "cpu":
            # PyTorch's fused int8-weight kernel (no dequantized copy of the weight in memory);
            # it takes bf16 activations and a bf16 scale.
            x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale_bf16)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def _fbgemm_pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """FBGEMM's packed form of int8 weights q (out, in) with per-channel scales (out,) and a
    float bias."""
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # PyTorch flags quantized tensors for a future removal
        warnings.simplefilter("ignore")
        zeros = torch.zeros(q.shape[0], dtype=torch.long)
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float())


class PackedLinear(nn.Module):
    """A bf16 Linear layer whose weight is reordered once into oneDNN's blocked layout (CPU).

    Inference only: the packed weight is an opaque oneDNN tensor (no state_dict, no .to()).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)  # laid out for decoding
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class TransposedLinear(nn.Module):
    """A Linear layer with its weight stored transposed, (in, out), as GPT-2's Conv1D stores it.

    Decoding multiplies one row by each weight matrix; CPU BLAS streams an (in, out) matrix for
    that noticeably faster than the (out, in) layout of nn.Linear (same values, same result).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())  # (in, out)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = x2 @ self.weight_t if self.bias is None else torch.addmm(self.bias, x2, self.weight_t)
        return y.view(*shape[:-1], self.out_features)


def _replace_linears(model: nn.Module, make) -> nn.Module:
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, make(child))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) with an Int8Linear; returns the model.

    A lm_head tied to the embedding gets its own int8 copy; the embedding lookup stays in float.
    """
    return _replace_linears(model, Int8Linear)


def prepare_for_inference(
    model: nn.Module, dtype: str = "fp32", quantize: str | None = None, device: str | None = None
) -> nn.Module:
    """Ready `model` for generation, in place: eval mode, dtype fp32|bf16, quantize None|int8,
    moved to `device` (auto|cpu|cuda; None leaves it where it is).

    Linear layers are replaced by the fastest form for the device and CPU (see the module's
    docstring); the model is then for inference only (a tied lm_head gets its own copy).
    """
    if dtype not in DTYPES:
        raise ShoshinError(f"dtype must be one of fp32, bf16; got {dtype!r}")
    if quantize not in (None, "none", "int8"):
        raise ShoshinError(f"quantize must be int8 (or none); got {quantize!r}")
    if device is not None:
        model.to(pick_device(device, "--device"))
    model.eval()
    model.to(DTYPES[dtype])
    on_cpu = next(model.parameters()).device.type == "cpu"
    if quantize == "int8":
        quantize_int8(model)
    elif on_cpu and DTYPES[dtype] == torch.float32:
        _replace_linears(model, TransposedLinear)
    elif on_cpu and cpu_has_bf16_matmul():
        _replace_linears(model, PackedLinear)
    return model
