"""The registry of architectures is the one list that config validation, build_model, the estimate
and the unknown-name error read: registering a model makes it known everywhere at once."""

from __future__ import annotations

import pytest

from shoshin.config import ModelConfig, load_config
from shoshin.errors import ShoshinError
from shoshin.models import ARCHITECTURES, LSTM, Architecture, build_model
from shoshin.training.estimate import activation_bytes, flops_per_token, kv_cache_bytes


def test_an_unknown_arch_is_one_error_naming_the_registered_ones():
    with pytest.raises(ShoshinError, match="model.arch must be one of gpt, llama, lstm; got 'rnn'"):
        load_config(None, ["model.arch=rnn"])
    with pytest.raises(ShoshinError, match="gpt, llama, lstm"):
        build_model(ModelConfig(arch="rnn", vocab_size=10))  # no silent fallback to an LSTM


class GRULike(LSTM):
    """A stand-in for a new model family (an LSTM under another name is enough here)."""


def test_a_registered_architecture_is_known_to_config_build_and_estimate(monkeypatch):
    entry = Architecture(
        model=GRULike,
        summary="test family",
        extra_flops_per_token=lambda c: 123.0,
        activation_values=lambda c, B: 7 * B,
        cache_values=lambda c, batch: 5 * batch,
    )
    monkeypatch.setitem(ARCHITECTURES, "gru", entry)
    config = load_config("tiny", ["model.arch=gru"])  # validation reads the registry
    config.model.vocab_size = 10
    assert type(build_model(config.model)) is GRULike
    assert flops_per_token(config.model, 100) == (723.0, 123.0)
    assert kv_cache_bytes(config.model, batch_size=2) == 5 * 2 * 4
    logits = 3 * 8 * config.model.block_size * 10 * 4
    assert activation_bytes(config.model, 8) == 7 * 8 * 4 + logits
    with pytest.raises(ShoshinError, match="gpt, llama, lstm, gru"):
        load_config(None, ["model.arch=grux"])


def test_models_declare_what_generation_needs():
    gpt = build_model(ModelConfig(arch="gpt", block_size=32, vocab_size=10))
    lstm = build_model(ModelConfig(arch="lstm", vocab_size=10))
    llama = build_model(ModelConfig(arch="llama", bias=False, block_size=48, vocab_size=10))
    assert (gpt.context_window, gpt.right_padding_safe) == (32, True)
    assert (llama.context_window, llama.right_padding_safe) == (48, True)
    assert (lstm.context_window, lstm.right_padding_safe) == (None, False)
