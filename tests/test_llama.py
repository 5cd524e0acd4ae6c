"""The llama architecture (Llama/Qwen3 layout): its config rules, its costs; that it learns
through the ordinary training loop (test_training.py). Its decode paths are held to the naive
reference in test_generation.py (the "llama" models there); Hugging Face interop is in
test_llama_hf.py."""

from __future__ import annotations

import pytest
import torch

from shoshin.config import ModelConfig, key_reference, load_config
from shoshin.errors import ShoshinError
from shoshin.models import build_model
from shoshin.training.estimate import kv_cache_bytes

LLAMA = ["model.arch=llama", "model.bias=false"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.arch=llama"], "model.arch=llama has no biases: set model.bias=false"),
        ([*LLAMA, "model.n_kv_head=3"], r"model.n_kv_head \(3\) must divide model.n_head \(2\)"),
        ([*LLAMA, "model.n_embd=30", "model.n_head=4"], "or set model.head_dim"),
        ([*LLAMA, "model.head_dim=7"], "rotary embeddings need an even head width, got 7"),
        ([*LLAMA, "model.norm=post"], "pre-norm only"),
        ([*LLAMA, "model.mlp=gelu"], "model.mlp must be one of swiglu, relu2; got 'gelu'"),
        ([*LLAMA, "model.logit_softcap=-1"], "model.logit_softcap must not be negative"),
    ],
)
def test_bad_llama_shapes_are_one_line_errors(overrides, message):
    with pytest.raises(ShoshinError, match=message) as err:
        load_config("tiny", overrides)
    assert "\n" not in str(err.value)


def test_shoshin_config_lists_the_new_keys_with_descriptions():
    keys = {k.key: k for k in key_reference()}
    for key in (
        "model.n_kv_head",
        "model.head_dim",
        "model.intermediate_size",
        "model.rope_theta",
        "model.qk_norm",
        "model.mlp",
        "model.logit_softcap",
    ):
        assert keys[key].help, key
    assert keys["model.mlp"].choices == ("swiglu", "relu2")
    assert "RMSNorm" in keys["model.layer_norm_eps"].help


def _config(**shape) -> ModelConfig:
    base = dict(arch="llama", bias=False, n_layer=2, n_head=4, n_embd=32, block_size=16)
    return ModelConfig(**{**base, "vocab_size": 50, **shape})


def test_shapes_follow_the_config():
    model = build_model(_config(n_kv_head=2, head_dim=12, intermediate_size=40, qk_norm=True))
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert attn.q_proj.weight.shape == (4 * 12, 32)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (2 * 12, 32)
    assert attn.o_proj.weight.shape == (32, 4 * 12)
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (12,)
    assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (40, 32)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    # defaults: Llama's 8/3 width for the gated MLP, 4x for squared ReLU (which has no gate)
    assert build_model(_config()).layers[0].mlp.up_proj.weight.shape == (96, 32)
    relu2 = build_model(_config(mlp="relu2")).layers[0].mlp
    assert relu2.up_proj.weight.shape == (128, 32) and not hasattr(relu2, "gate_proj")
    tied, untied = build_model(_config()), build_model(_config(tie_embeddings=False))
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_from_scratch_the_blocks_start_as_the_identity():
    """Zero-initialised output projections: each block adds nothing until it has learned."""
    model = build_model(_config(tie_embeddings=False))
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")) or name == "lm_head.weight":
            assert not p.any(), name
    idx = torch.randint(0, 50, (2, 10))
    assert torch.equal(model(idx), torch.zeros(2, 10, 50))


def test_logit_softcap_bounds_the_logits():
    torch.manual_seed(0)
    capped = build_model(_config(logit_softcap=2.0, tie_embeddings=False)).eval()
    with torch.no_grad():
        capped.lm_head.weight.normal_(0, 1.0)
    plain = build_model(_config(tie_embeddings=False)).eval()
    plain.load_state_dict(capped.state_dict())
    idx = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        raw, logits = plain(idx), capped(idx)
    assert raw.abs().max() > 2.0  # the cap does something here
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))


def test_the_kv_cache_holds_only_the_key_value_heads():
    full, grouped = _config(), _config(n_kv_head=1)
    assert kv_cache_bytes(grouped) * 4 == kv_cache_bytes(full)
    cache = build_model(grouped).new_cache(3)
    assert cache.k.shape == (2, 3, 1, 16, 8)  # (n_layer, B, n_kv_head, max_len, head_dim)
