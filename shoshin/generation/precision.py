"""Reduced-precision inference: bf16 weights and activations, or int8 weight-only quantization.

Decoding one token at a time reads every weight once per token, so it is limited by memory
bandwidth: halving or quartering the bytes per weight is the lever. int8 here is weight-only and
per output channel: w ≈ scale[n] * q[n, k] with q in [-127, 127]; activations stay in float
(on CPU they enter the int8 matmul kernel as bf16, its fast path).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        self.register_buffer("weight", torch.round(w / scale[:, None]).to(torch.int8))  # (out, in)
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x.device.type == "cpu":
            # PyTorch's fused int8-weight kernel (no dequantized copy of the weight in memory);
            # its bf16 path is the fast one on CPU, so fp32 inputs are rounded to bf16 for it.
            bf16 = torch.bfloat16
            y = torch.ops.aten._weight_int8pack_mm(x2.to(bf16), self.weight, self.scale_bf16)
            y = y.to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)


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
    model: nn.Module, dtype: str = "fp32", quantize: str | None = None
) -> nn.Module:
    """Ready `model` for generation, in place: eval mode, dtype fp32|bf16, quantize None|int8.

    On CPU, fp32 Linear layers are re-stored transposed (TransposedLinear) for faster decoding;
    the model is then for inference only (a tied lm_head gets its own copy of the embedding).
    """
    if dtype not in DTYPES:
        raise ShoshinError(f"dtype must be one of fp32, bf16; got {dtype!r}")
    if quantize not in (None, "none", "int8"):
        raise ShoshinError(f"quantize must be int8 (or none); got {quantize!r}")
    model.eval()
    model.to(DTYPES[dtype])
    if quantize == "int8":
        quantize_int8(model)
    elif dtype in ("fp32", "float32") and next(model.parameters()).device.type == "cpu":
        _replace_linears(model, TransposedLinear)  # (bf16 matmuls are slower transposed)
    return model
