"""Linear layers for inference: weight layouts and weight-only quantization (int8, int4).

Decoding one token reads every weight once, so at batch 1 a layer costs its weight bytes plus its
kernel's per-call overhead. Each class here replaces one nn.Linear (in place, for inference only)
and keeps its arithmetic documented, so that the agreement tests can state their tolerance:

- `TransposedLinear` (fp32, CPU): the same values stored (in, out); exact.
- `PackedLinear` (bf16, CPU with bf16 instructions): oneDNN's blocked layout.
- `Int8Linear`: one scale per output channel, w ~ scale[n] * q[n, k], q in [-127, 127].
- `Int4Linear`: one scale and offset per group of `INT4_GROUP_SIZE` inputs of an output channel,
  w ~ (q - 8) * scale[g, n] + zero[g, n], q in [0, 15], run by PyTorch's CPU int4 kernel.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from shoshin.device import fbgemm_int8_available

# Inputs of one output channel that share an int4 scale and offset. 64 is half of gpt-fast's and
# torchao's default (128): a small model's weights spread more per group, and the extra scales
# cost 1/16 of the int4 bytes. PyTorch's CPU kernel takes 32, 64, 128 or 256.
INT4_GROUP_SIZE = 64


class Int8Linear(nn.Module):
    """A Linear layer whose weight is stored as int8 with one float scale per output channel.

    On an x86 CPU the matmul runs in FBGEMM's int8 kernels (VNNI where the CPU has it) with the
    activations quantized on the fly, as CTranslate2's `int8_float32` does; elsewhere PyTorch's
    int8-weight kernel (bf16 activations) or, on GPU, a dequantized matmul.
    """

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
            # and the bias added in the same kernel. The overload itself, not the packet: its
            # Python dispatch costs a few microseconds per call, 49 calls per GPT-2 token.
            x32 = x if x.dtype == torch.float32 else x.float()
            y = torch.ops.quantized.linear_dynamic.default(x32, self.packed, False)
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


def int4_fits(linear: nn.Linear, group_size: int = INT4_GROUP_SIZE) -> bool:
    """Whether a layer's input width splits into int4 groups (else it stays int8)."""
    return linear.in_features % group_size == 0


class Int4Linear(nn.Module):
    """A Linear layer with group-wise int4 weights: 16 levels between each group's min and max.

    q = round((w - min) / scale), scale = (max - min) / 15 per group of `group_size` inputs of one
    output channel; w ~ (q - 8) * scale + zero with zero = min + 8 * scale (PyTorch's convention).
    The CPU kernel (`_weight_int4pack_mm_for_cpu`) wants bf16 activations (its fp32 path is not
    vectorised) and an output width that is a multiple of 16: the output is padded with zero rows
    and cut back. It is made for few rows (decoding): from PREFILL_ROWS rows on (a prompt), the
    weight is dequantized to bf16 for the call and multiplied by oneDNN (2.8x faster for a
    768x3072 layer at 512 rows on this project's CPU). For that the levels are also kept plainly,
    two to a byte (the kernel's layout is reordered), so an int4 model holds as many weight bytes
    as an int8 one and reads half as many per decoded token. Off the CPU the weight is dequantized
    for each call (correct, not fast).
    """

    PREFILL_ROWS = 32

    def __init__(self, linear: nn.Linear, group_size: int = INT4_GROUP_SIZE):
        super().__init__()
        if not int4_fits(linear, group_size):
            raise ValueError(f"in_features {linear.in_features} is not a multiple of {group_size}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size
        w = linear.weight.detach().float()
        n_pad = -self.out_features % 16
        w = F.pad(w, (0, 0, 0, n_pad))  # (N, K), N a multiple of 16
        groups = w.view(w.shape[0], -1, group_size)  # (N, K/g, g)
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, K/g)
        scale = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((groups - lo[..., None]) / scale[..., None]).round().clamp(0, 15)
        q = q.to(torch.int32).view_as(w)
        zero = lo + 8 * scale
        scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1)  # (K/g, N, 2)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.on_cpu = w.device.type == "cpu"
        levels = q.to(torch.uint8).view(q.shape[0], -1, 2)  # (N, K/2, 2): two levels to a byte
        self.register_buffer("levels", levels[..., 0] | (levels[..., 1] << 4))  # (N, K/2)
        kernel = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1) if self.on_cpu else None
        self.register_buffer("packed", kernel)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16).contiguous())

    def _dequantized(self) -> torch.Tensor:
        """The weight (out, in) in bf16, from its levels."""
        s, z = self.scales_and_zeros.transpose(0, 1).unbind(-1)  # (N, K/g) each
        q = torch.stack([self.levels & 15, self.levels >> 4], dim=-1)  # (N, K/2, 2)
        q = q.view(s.shape[0], -1, self.group_size).to(torch.bfloat16)  # (N, K/g, g)
        w = (q - 8) * s[..., None] + z[..., None]
        return w.view(s.shape[0], -1)[: self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.on_cpu and x2.shape[0] < self.PREFILL_ROWS:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.packed, self.group_size, self.scales_and_zeros
            )[:, : self.out_features]
        else:
            y = F.linear(x2, self._dequantized())
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)


class PackedLinear(nn.Module):
    """A bf16 Linear layer whose weight is reordered once into oneDNN's blocked layout (CPU).

    Its AMX/AVX-512 BF16 kernels read that layout directly (PyTorch's plain bf16 matmul re-packs
    or takes a slower path on every call). Inference only: the packed weight is an opaque oneDNN
    tensor (no state_dict, no .to()).
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


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) with make(linear); returns the model."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, make(child))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every nn.Linear of `model` (in place) becomes an Int8Linear; returns the model.

    A lm_head tied to the embedding gets its own int8 copy; the embedding lookup stays in float.
    """
    return replace_linears(model, Int8Linear)


def quantize_int4(model: nn.Module, group_size: int = INT4_GROUP_SIZE) -> nn.Module:
    """Every nn.Linear whose input width is a multiple of `group_size` becomes an Int4Linear, the
    others an Int8Linear (in place); returns the model."""
    return replace_linears(
        model,
        lambda lin: Int4Linear(lin, group_size) if int4_fits(lin, group_size) else Int8Linear(lin),
    )
