"""The one training step: what it computes, and that every command that trains goes through it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import QUICK, write_corpus

from shoshin.config import load_config
from shoshin.data.dataset import prepare_data
from shoshin.models import build_model
from shoshin.training import step as step_module
from shoshin.training.distributed import DistContext
from shoshin.training.step import TrainStep


@pytest.fixture
def tiny(tmp_path):
    config = load_config("tiny", [f"data.source={write_corpus(tmp_path / 'c.txt')}", *QUICK])
    data = prepare_data(config.data, log=lambda *a: None)
    config.model.vocab_size = data.tokenizer.vocab_size
    return config, data


def _step(config, data, model, **train) -> TrainStep:
    """A TrainStep on `model` with train settings changed by `train`, batches drawn from seed 0."""
    tc = dataclasses.replace(config.train, **train)
    gen = torch.Generator().manual_seed(0)
    return TrainStep(model, tc, config.model.block_size, data.train, gen, lambda s: 1e-3,
                     DistContext())  # fmt: skip


def test_accumulated_micro_batches_take_the_step_of_one_big_batch(tiny):
    config, data = tiny
    torch.manual_seed(0)
    a = build_model(config.model)
    b = copy.deepcopy(a)
    loss_a, _ = _step(config, data, a, batch_size=8, grad_accum=1)(0)
    loss_b, _ = _step(config, data, b, batch_size=4, grad_accum=2)(0)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_a_non_finite_loss_leaves_the_weights_untouched(tiny):
    config, data = tiny
    model = build_model(config.model)
    before = copy.deepcopy(model.state_dict())
    step = _step(config, data, model)
    step.forward = lambda x, y: model(x, y) * float("nan")
    loss, _ = step(0)
    assert loss != loss and step.updates == 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_train_lr_find_and_calibration_all_take_their_steps_here(tiny, tmp_path, monkeypatch):
    from shoshin.experiments.lr_find import lr_find
    from shoshin.training.estimate import estimate
    from shoshin.training.runner import train

    config, data = tiny
    calls: list[int] = []
    real = step_module.TrainStep.__call__

    def counted(self, step):
        calls.append(step)
        return real(self, step)

    monkeypatch.setattr(step_module.TrainStep, "__call__", counted)
    train(copy.deepcopy(config), tmp_path / "runs", log=lambda *a: None)
    assert calls == [0, 1, 2, 3]
    calls.clear()
    estimate(copy.deepcopy(config), data, calibration_steps=2, log=lambda *a: None)
    assert len(calls) == 4  # 2 untimed warm-up steps, then the 2 timed ones
    calls.clear()
    lr_find(copy.deepcopy(config), tmp_path / "runs", steps=10, end_lr=1e-2, log=lambda *a: None)
    assert calls == list(range(10))
