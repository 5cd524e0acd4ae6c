"""The registry of known architectures: the one list of what `model.arch` may name.

Config validation, `shoshin.models.build_model`, the cost estimate and the error for an unknown
name all read `ARCHITECTURES`. It imports no PyTorch and no model: an entry names its class by
dotted path, imported when a model is first built, so that the config (which validates
`model.arch` against this list) stands below the models and `shoshin config` starts without
PyTorch. The cost formulas take a `shoshin.config.ModelConfig` (typed `Any` here for that reason).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoshin.errors import ShoshinError


@dataclass(frozen=True)
class Architecture:
    """A model family shoshin can build, and what its costs scale with (for `shoshin estimate`)."""

    model: type | str  # the nn.Module class, or its dotted path (imported on first build)
    summary: str
    # training FLOPs per token beyond 6N (N: the matmul weights), e.g. attention over the context
    extra_flops_per_token: Callable[[Any], float]
    # activations kept for the backward pass of one micro-batch of B sequences, in values,
    # leaving out the logits (B: batch size; T, C, L from the config)
    activation_values: Callable[[Any, int], int]
    # the inference cache of `batch` rows at full context, in values
    cache_values: Callable[[Any, int], int]
    # module names (suffixes) that LoRA adapts for each `lora.targets` choice; None = no LoRA
    lora_targets: dict[str, tuple[str, ...]] | None = None

    def model_class(self) -> type:
        """The nn.Module class that builds this architecture from a ModelConfig."""
        if isinstance(self.model, str):
            module, _, name = self.model.rpartition(".")
            return getattr(importlib.import_module(module), name)
        return self.model


def _gpt_activations(c: Any, B: int) -> int:
    # Per layer, in units of B*T*C: the block input, ln_1 output, q/k/v (3), attention output and
    # its re-assembled copy (2), the residual sum, ln_2 output, MLP hidden before and after GELU
    # (4 + 4): 17. The fused attention kernel keeps no T x T matrix unless dropout is on (then the
    # probabilities and the dropout mask). Around the blocks: embeddings and final LayerNorm (3).
    B_T_C = B * c.block_size * c.n_embd
    per_layer = 17 * B_T_C + (2 * B * c.n_head * c.block_size**2 if c.dropout > 0 else 0)
    return c.n_layer * per_layer + 3 * B_T_C


def _lstm_activations(c: Any, B: int) -> int:
    # Per layer: its input plus the workspace of PyTorch's fused LSTM kernel (gates, cell states
    # and more; measured at about 16 B*T*C on CPU); plus the embedding output.
    B_T_C = B * c.block_size * c.n_embd
    return c.n_layer * 17 * B_T_C + B_T_C


ARCHITECTURES: dict[str, Architecture] = {
    "gpt": Architecture(
        model="shoshin.models.gpt.GPT",
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
    ),
    "lstm": Architecture(
        model="shoshin.models.lstm.LSTM",
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
