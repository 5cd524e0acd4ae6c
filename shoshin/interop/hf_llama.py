"""Hugging Face `LlamaForCausalLM` and `Qwen3ForCausalLM` checkpoints <-> shoshin's Llama.

SmolLM2, TinyLlama and the Llama family are LlamaForCausalLM checkpoints; Qwen3 differs from them
only by its QK-norm (an RMSNorm over each head's queries and keys), which is what decides the class
on export. Our module names are transformers' less its `model.` prefix, and transformers' Linear
layers store (out, in) as ours do: tensors convert by renaming alone.

What shoshin's Llama does not compute is refused in one line, naming it: another class in
`architectures`, rotary scaling (`rope_scaling` / `rope_parameters` of a type other than
"default"), sliding-window layers, attention or MLP biases, an activation other than SiLU.
"""

from __future__ import annotations

import torch

from shoshin.config import ModelConfig
from shoshin.errors import ShoshinError
from shoshin.interop.fields import positive_float, positive_int

# model_type in config.json -> the transformers class that runs it, and its family's name.
CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
FAMILIES = {"llama": "Llama", "qwen3": "Qwen3"}
PREFIX = "model."  # transformers' name of the decoder inside the *ForCausalLM wrapper


def config_from_hf(hf: dict, where: str) -> ModelConfig:
    """Our ModelConfig for a Llama or Qwen3 config.json; refuses what our Llama does not compute."""
    model_type = hf["model_type"]
    _check_supported(hf, model_type, where)
    n_layer, n_head, n_embd, n_positions, vocab_size, hidden = (
        positive_int(hf, key, where)
        for key in (
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_size",
            "max_position_embeddings",
            "vocab_size",
            "intermediate_size",
        )
    )
    n_kv_head = positive_int(hf, "num_key_value_heads", where, default=n_head)
    if hf.get("head_dim") is None and n_embd % n_head:
        raise ShoshinError(
            f"{where}: hidden_size ({n_embd}) must be a multiple of num_attention_heads ({n_head})"
        )
    head_dim = positive_int(hf, "head_dim", where, default=n_embd // n_head)
    eps = positive_float(hf, "rms_norm_eps", where, default=1e-6)
    tie = hf.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ShoshinError(f"{where}: tie_word_embeddings must be true or false, got {tie!r}")
    config = ModelConfig(
        arch="llama",
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        block_size=n_positions,
        dropout=0.0,
        bias=False,
        layer_norm_eps=eps,
        tie_embeddings=tie,
        n_kv_head=n_kv_head,
        head_dim=head_dim,
        intermediate_size=hidden,
        rope_theta=_rope_theta(hf, where),
        qk_norm=model_type == "qwen3",
        vocab_size=vocab_size,
    )
    try:
        config.validate()
    except ShoshinError as exc:
        raise ShoshinError(f"{where}: {exc}") from None
    return config


def _check_supported(hf: dict, model_type: str, where: str) -> None:
    expected = CLASSES[model_type]
    architectures = hf.get("architectures")
    if architectures not in (None, [expected]):
        raise ShoshinError(
            f"{where}: architectures {architectures} is not supported "
            f"(shoshin loads {expected} for model_type {model_type!r})"
        )
    rope_type = _rope_type(hf)
    if rope_type not in (None, "default"):
        raise ShoshinError(
            f"{where}: rotary scaling of type {rope_type!r} is not supported "
            "(shoshin computes plain rotary positions)"
        )
    layer_types = hf.get("layer_types") or []
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
        raise ShoshinError(
            f"{where}: sliding-window attention layers are not supported "
            "(shoshin's Llama attends over the whole context in every layer)"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag, False):
            raise ShoshinError(
                f"{where}: {flag}=true is not supported (shoshin's Llama has no biases)"
            )
    if hf.get("hidden_act", "silu") != "silu":
        raise ShoshinError(
            f"{where}: hidden_act {hf['hidden_act']!r} is not supported (shoshin's Llama uses silu)"
        )


def _rope_type(hf: dict) -> str | None:
    """The rotary scaling type: transformers < 5 write `rope_scaling`, 5 and later `rope_parameters`."""
    for key in ("rope_scaling", "rope_parameters"):
        value = hf.get(key)
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type"))
            if kind not in (None, "default"):
                return str(kind)
        elif value is not None:
            return repr(value)
    return None


def _rope_theta(hf: dict, where: str) -> float:
    params = hf.get("rope_parameters")
    theta = hf.get("rope_theta")
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    return positive_float({"rope_theta": theta}, "rope_theta", where, default=10000.0)


def our_name(hf_name: str) -> str | None:
    """The name of a transformers Llama/Qwen3 tensor in our Llama, or None for a rotary buffer."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None  # stored by older checkpoints; recomputed from rope_theta
    return hf_name.removeprefix(PREFIX)


def hf_name(name: str) -> str:
    """The transformers name of our Llama's tensor `name`."""
    return name if name.startswith("lm_head.") else PREFIX + name


def shoshin_to_hf(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json contents and transformers-named tensors for our Llama: Qwen3ForCausalLM when
    it has QK-norm, else LlamaForCausalLM. Options transformers cannot run are refused."""
    cfg: ModelConfig = model.config
    beyond = [
        f"model.{key}={value}"
        for key, value, plain in (
            ("mlp", cfg.mlp, "swiglu"),
            ("logit_softcap", cfg.logit_softcap, 0),
        )
        if value != plain
    ]
    if beyond:
        raise ShoshinError(
            f"this model uses {' and '.join(beyond)}, beyond the Llama/Qwen3 layout: transformers "
            "cannot run it, so it cannot be exported (shoshin sample, chat and serve can)"
        )
    from shoshin.models.llama import head_dim, intermediate_size, kv_heads

    tensors = {
        hf_name(name): t.detach().float().cpu().contiguous()
        for name, t in model.state_dict().items()
        if not (name == "lm_head.weight" and cfg.tie_embeddings)  # transformers re-ties it
    }
    model_type = "qwen3" if cfg.qk_norm else "llama"
    hf_config = {
        "architectures": [CLASSES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": intermediate_size(cfg),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": kv_heads(cfg),
        "head_dim": head_dim(cfg),
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.layer_norm_eps,
        # both spellings: transformers < 5 reads rope_theta, 5 and later rope_parameters
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }
    if model_type == "llama":
        hf_config["mlp_bias"] = False
    else:
        hf_config.update(use_sliding_window=False, sliding_window=None)
    return hf_config, tensors
