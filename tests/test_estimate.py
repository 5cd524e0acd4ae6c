"""`shoshin estimate`: FLOP and memory formulas checked against the real model, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from shoshin.config import ModelConfig
from shoshin.models import build_model, count_parameters
from shoshin.training.estimate import (
    Estimate,
    activation_bytes,
    flops_per_token,
    format_estimate,
    kv_cache_bytes,
    matmul_parameters,
)


def gpt_config(**kw) -> ModelConfig:
    base = dict(arch="gpt", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    return ModelConfig(**{**base, **kw})


def test_flops_per_token_is_6n_plus_attention():
    config = gpt_config()
    model = build_model(config)
    n = matmul_parameters(model)
    assert n == count_parameters(model) - 16 * 32  # all but the position embeddings
    total, attention = flops_per_token(config, n)
    assert attention == 12 * 2 * 32 * 16
    assert total == 6 * n + attention
    lstm = ModelConfig(arch="lstm", n_layer=1, n_embd=32, block_size=16, vocab_size=50)
    assert flops_per_token(lstm, 1000) == (6000.0, 0.0)


def saved_activation_bytes(config: ModelConfig, batch: int) -> int:
    """Bytes of the tensors autograd really keeps for backward (each storage counted once)."""
    model = build_model(config)
    storages: dict[int, int] = {}
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(config.vocab_size, (batch, config.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, config.vocab_size), x.view(-1))
    loss.backward()
    return sum(storages.values())


def test_activation_estimate_matches_what_autograd_saves():
    for config in (
        gpt_config(n_layer=3, n_embd=64, block_size=32, vocab_size=65),
        ModelConfig(arch="lstm", n_layer=2, n_embd=64, block_size=32, vocab_size=65),
    ):
        measured = saved_activation_bytes(config, batch=8)
        estimated = activation_bytes(config, batch_size=8)
        assert 0.7 < estimated / measured < 1.3, (config.arch, estimated, measured)


def test_kv_cache_bytes():
    assert kv_cache_bytes(gpt_config()) == 2 * 2 * 16 * 32 * 4  # k and v, 2 layers, float32


@pytest.mark.slow
def test_estimate_cli_and_training_records_it(shakespeare_like):
    overrides = [f"data.source={shakespeare_like}", "train.max_steps=10", "train.sample_tokens=0"]
    result = run_cli("estimate", "tiny", *overrides, "--json", "--calibration-steps", "2")
    assert result.returncode == 0, result.stderr
    est = json.loads(result.stdout)
    assert est["steps"] == 10 and est["tokens_per_step"] == 8 * 64
    assert est["total_flops"] == est["flops_per_token"] * 10 * 8 * 64
    assert est["predicted_train_seconds"] > 0 and est["step_seconds"] > 0
    memory = est["memory"]
    assert memory["optimizer"] == 2 * memory["weights"] == 2 * 4 * est["params"]
    assert memory["training_process"] > memory["runtime"] > 0

    text = format_estimate(Estimate(**est))
    assert "FLOPs per token" in text and "predicted time" in text

    trained = run_cli("train", "tiny", *overrides)
    assert trained.returncode == 0, trained.stderr
    shown = run_cli("show", "latest", "--json")
    manifest = json.loads(shown.stdout)["manifest"]
    assert manifest["estimate"]["params"] == manifest["params"] == est["params"]
    assert manifest["estimate"]["step_seconds"] > 0 and manifest["peak_rss_bytes"] > 0
    human = run_cli("show", "latest").stdout
    assert "time      predicted" in human and "memory    predicted" in human


def test_estimate_bad_config_is_one_line_error():
    result = run_cli("estimate", "tiny", "model.n_layr=3")
    assert result.returncode == 2
    assert "did you mean model.n_layer" in result.stderr and "Traceback" not in result.stderr
