"""LoRA adapters on shoshin's models, through peft (pip install 'shoshin[lora]').

peft replaces each targeted nn.Linear (e.g. `h.3.attn.c_attn`) by a wrapper that keeps the frozen
layer and adds a low-rank update: y = W x + (alpha / rank) * B A x, with A (rank, in) and
B (out, rank); B starts at zero, so training starts from exactly the base model. The model stays
the same nn.Module (forward, KV cache and all); only the adapters train.

    adapter = attach(model, config.lora)     # model now holds LoRA layers; base frozen
    tensors = adapter_tensors(adapter)        # what a checkpoint saves: the adapters only
    load_adapter(adapter, tensors, where)     # and back
    model = merge(adapter)                    # W + (alpha / rank) B A: a plain model again

The targeted module names come from the architecture's registry entry (`lora_targets`); they are
also Hugging Face GPT-2's and GPT-1's, so an adapter exports to PEFT's own format unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from shoshin.config import LoraConfig, ModelConfig
from shoshin.errors import ShoshinError
from shoshin.models import architecture

# What set_peft_model_state_dict calls the one adapter shoshin trains.
ADAPTER = "default"
# How PeftModel's state dict names the wrapped model's modules (and PEFT's adapter files too).
ADAPTER_PREFIX = "base_model.model."


def target_modules(model_config: ModelConfig, lora: LoraConfig) -> list[str]:
    """The module-name suffixes that get adapters, for this architecture and lora.targets."""
    targets = architecture(model_config.arch).lora_targets
    if targets is None:
        raise ShoshinError(f"lora.rank does not apply to model.arch={model_config.arch}")
    return list(targets[lora.targets])


def peft_config(model_config: ModelConfig, lora: LoraConfig, **extra: Any):
    """peft's LoraConfig for shoshin's lora.* settings (`extra`: more LoraConfig fields)."""
    import peft

    return peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules(model_config, lora),
        bias="none",
        **extra,
    )


def attach(model: nn.Module, lora: LoraConfig):
    """Add LoRA adapters to `model` in place and freeze everything else; returns the PeftModel.

    `model` itself keeps working as before (its forward now includes the adapters); the
    PeftModel is the handle for the adapter state and for merging.
    """
    import peft

    return peft.get_peft_model(model, peft_config(model.config, lora))


def adapter_tensors(adapter) -> dict[str, torch.Tensor]:
    """The adapter weights alone (peft's names, e.g. `base_model.model.h.0.attn.c_attn.lora_A.weight`)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(adapter, adapter_name=ADAPTER)
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def load_adapter(adapter, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load adapter weights saved by adapter_tensors; a mismatch is a one-line error."""
    from peft import set_peft_model_state_dict

    expected = adapter_tensors(adapter)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ShoshinError(
            f"the adapter in {where} does not match the run's lora.* settings: "
            f"missing {missing[:2]}, unexpected {unexpected[:2]}, wrong shape {wrong[:2]}"
        )
    set_peft_model_state_dict(adapter, tensors, adapter_name=ADAPTER)


def merge(adapter) -> nn.Module:
    """The model with each adapter folded into its base weight: plain layers, no LoRA overhead."""
    return adapter.merge_and_unload()


def describe(lora: LoraConfig, model_config: ModelConfig) -> dict[str, Any]:
    """What a run's manifest records about its adapters."""
    return {
        "method": "lora",
        "rank": lora.rank,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "targets": lora.targets,
        "target_modules": target_modules(model_config, lora),
    }
