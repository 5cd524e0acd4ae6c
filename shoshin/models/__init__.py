"""Models: a GPT (GPT-1 and GPT-2 layouts), a Llama (Llama/Qwen3 layout) and an LSTM, all plain
nn.Modules, and the registry of known architectures.

`ARCHITECTURES` is the one list of what `model.arch` may name: config validation, `build_model`,
the cost estimate and the error for an unknown name all read it. Adding a model: write its module
(an nn.Module taking a ModelConfig, with `forward(idx, targets=None, cache=None, logits_at=None)`,
`new_cache` (whose `lengths` is a CPU tensor), and the two generation declarations
`context_window` and `right_padding_safe`), then add an entry here.

(An upward import for one function: ModelConfig.validate asks this registry for `check_config`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from shoshin.config import ModelConfig
from shoshin.errors import ShoshinError
from shoshin.models import llama
from shoshin.models.gpt import GPT
from shoshin.models.llama import Llama
from shoshin.models.lstm import LSTM

__all__ = [
    "ARCHITECTURES",
    "GPT",
    "LSTM",
    "Architecture",
    "Llama",
    "build_model",
    "count_parameters",
    "count_trainable",
]


@dataclass(frozen=True)
class Architecture:
    """A model family shoshin can build, and what its costs scale with (for `shoshin estimate`)."""

    model: type[nn.Module]
    summary: str
    # training FLOPs per token beyond 6N (N: the matmul weights), e.g. attention over the context
    extra_flops_per_token: Callable[[ModelConfig], float]
    # activations kept for the backward pass of one micro-batch of B sequences, in values,
    # leaving out the logits (B: batch size; T, C, L from the config)
    activation_values: Callable[[ModelConfig, int], int]
    # the inference cache of `batch` rows at full context, in values
    cache_values: Callable[[ModelConfig, int], int]
    # module names (suffixes) that LoRA adapts for each `lora.targets` choice; None = no LoRA
    lora_targets: dict[str, tuple[str, ...]] | None = None
    # the rules a config of this architecture must follow (ModelConfig.validate calls it)
    check_config: Callable[[ModelConfig], None] | None = None


def _gpt_activations(c: ModelConfig, B: int) -> int:
    # Per layer, in units of B*T*C: the block input, ln_1 output, q/k/v (3), attention output and
    # its re-assembled copy (2), the residual sum, ln_2 output, MLP hidden before and after GELU
    # (4 + 4): 17. The fused attention kernel keeps no T x T matrix unless dropout is on (then the
    # probabilities and the dropout mask). Around the blocks: embeddings and final LayerNorm (3).
    B_T_C = B * c.block_size * c.n_embd
    per_layer = 17 * B_T_C + (2 * B * c.n_head * c.block_size**2 if c.dropout > 0 else 0)
    return c.n_layer * per_layer + 3 * B_T_C


def _check_gpt(c: ModelConfig) -> None:
    if c.n_head < 1:
        raise ShoshinError(f"model.n_head must be at least 1, got {c.n_head}")
    if c.n_embd % c.n_head:
        raise ShoshinError(
            f"model.n_embd ({c.n_embd}) must be a multiple of model.n_head ({c.n_head})"
        )


def _llama_activations(c: ModelConfig, B: int) -> int:
    # Per layer, in units of B*T: the block input and its RMSNorm (2C); q, k, v before and after
    # QK-norm and rotary (2 (q + 2 kv), kv = n_kv_head * head_dim); the attention output and its
    # re-assembled copy (2q); the residual sum and its RMSNorm (2C); the MLP's gate, up, silu(gate)
    # and their product (4I; relu2: up, relu, square, 3I). Around the blocks: embeddings and the
    # final RMSNorm (2C).
    B_T = B * c.block_size
    q = c.n_head * llama.head_dim(c)
    kv = llama.kv_heads(c) * llama.head_dim(c)
    mlp = (3 if c.mlp == "relu2" else 4) * llama.intermediate_size(c)
    per_layer = B_T * (4 * c.n_embd + 4 * q + 4 * kv + mlp)
    if c.dropout > 0:
        per_layer += 2 * B * c.n_head * c.block_size**2
    return c.n_layer * per_layer + 2 * B_T * c.n_embd


def _lstm_activations(c: ModelConfig, B: int) -> int:
    # Per layer: its input plus the workspace of PyTorch's fused LSTM kernel (gates, cell states
    # and more; measured at about 16 B*T*C on CPU); plus the embedding output.
    B_T_C = B * c.block_size * c.n_embd
    return c.n_layer * 17 * B_T_C + B_T_C


ARCHITECTURES: dict[str, Architecture] = {
    "gpt": Architecture(
        model=GPT,
        summary="Transformer decoder with learned positions (GPT-2 pre-norm or GPT-1 post-norm)",
        extra_flops_per_token=lambda c: 12.0 * c.n_layer * c.n_embd * c.block_size,
        activation_values=_gpt_activations,
        cache_values=lambda c, batch: 2 * c.n_layer * batch * c.block_size * c.n_embd,  # K and V
        # The names of Hugging Face's GPT-2 and GPT-1 as well, so an exported adapter applies there.
        lora_targets={
            "attention": ("attn.c_attn", "attn.c_proj"),
            "mlp": ("mlp.c_fc", "mlp.c_proj"),
            "both": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        },
        check_config=_check_gpt,
    ),
    "llama": Architecture(
        model=Llama,
        summary="Transformer decoder of the Llama/Qwen3 layout: RMSNorm, rotary positions, "
        "grouped-query attention, SwiGLU",
        # attention scores and weighted sum over the context, at the query width
        extra_flops_per_token=lambda c: (
            12.0 * c.n_layer * c.n_head * llama.head_dim(c) * c.block_size
        ),
        activation_values=_llama_activations,
        # K and V of the key/value heads only: grouped-query attention shrinks the cache
        cache_values=lambda c, batch: (
            2 * c.n_layer * batch * c.block_size * llama.kv_heads(c) * llama.head_dim(c)
        ),
        # transformers' LlamaForCausalLM / Qwen3ForCausalLM names: exported adapters apply there
        lora_targets={
            "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
            "mlp": ("gate_proj", "up_proj", "down_proj"),
            "both": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        },
        check_config=llama.check_config,
    ),
    "lstm": Architecture(
        model=LSTM,
        summary="stacked LSTM; its carried (h, c) state replaces a context window",
        extra_flops_per_token=lambda c: 0.0,  # the recurrent matmuls are in N already
        activation_values=_lstm_activations,
        cache_values=lambda c, batch: 2 * c.n_layer * batch * c.n_embd,  # h and c
    ),
}


def architecture(name: str) -> Architecture:
    """The registry entry for `name`; an unknown name is a ShoshinError listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ShoshinError(
            f"model.arch must be one of {', '.join(ARCHITECTURES)}; got {name!r}"
        ) from None


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for `config` (vocab_size must be set)."""
    return architecture(config.arch).model(config)


def count_parameters(model: nn.Module) -> int:
    """Parameters, counting tied weights once (frozen ones too: a LoRA run's base weights)."""
    return sum(p.numel() for p in model.parameters())


def count_trainable(model: nn.Module) -> int:
    """Parameters the optimizer updates: all of them, or a LoRA run's adapters only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
