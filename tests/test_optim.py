"""Optimizers and schedules: Muon for hidden matrices, the wsd schedule, exact resume with both,
extending a wsd run, and the one validation loss (training's final figure is `shoshin eval`'s)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from shoshin.config import load_config
from shoshin.errors import ShoshinError
from shoshin.models import build_model
from shoshin.runs.store import Run
from shoshin.training.optim import Optimizers, hidden_matrices, lr_at, make_optimizer
from shoshin.training.runner import change_budget, resume, train

QUIET = {"log": lambda _: None}


def _tiny(corpus, *extra: str):
    overrides = [
        f"data.source={corpus}",
        "train.max_steps=16",
        "train.checkpoint_interval=0",
        "train.eval_interval=8",
        "train.eval_iters=2",
        "train.log_interval=1",
        "train.sample_tokens=0",
        "train.calibrate=false",
        "model.dropout=0.1",  # resume must restore the dropout RNG too
        *extra,
    ]
    return load_config("tiny", overrides)


def test_wsd_warms_up_holds_then_decays_linearly_to_min_lr():
    tc = load_config(
        None,
        [
            "train.schedule=wsd",
            "train.max_steps=100",
            "train.warmup_steps=10",
            "train.warmdown_fraction=0.4",
            "train.lr=1.0",
            "train.min_lr=0.1",
        ],
    ).train
    lrs = [lr_at(s, tc) for s in range(120)]
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9] < 1.0  # warmup rises to the peak
    assert all(lr == 1.0 for lr in lrs[10:60])  # stable until the last 40% of the steps
    steps = [lrs[s] - lrs[s + 1] for s in range(60, 99)]
    assert all(d == pytest.approx(0.9 / 40) for d in steps)  # a straight line down
    assert all(lr == 0.1 for lr in lrs[100:])  # at min_lr from the end of the decay on
    tc.schedule = "cosine"
    cosine = [lr_at(s, tc) for s in range(100)]
    assert cosine[10] == pytest.approx(1.0) and 0.1 < cosine[50] < 1.0 and cosine[99] > 0.1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optimizer=sgd", "train.optimizer must be one of adamw, muon"),
        ("train.schedule=linear", "train.schedule must be one of cosine, wsd"),
        ("train.warmdown_fraction=0", "train.warmdown_fraction must be in (0, 1]"),
        ("train.warmdown_fraction=1.5", "train.warmdown_fraction must be in (0, 1]"),
        ("train.muon_lr=0", "train.muon_lr must be positive"),
        ("train.muon_momentum=1", "train.muon_momentum must be in [0, 1)"),
        ("train.muon_weight_decay=-1", "train.muon_weight_decay must not be negative"),
    ],
)
def test_new_keys_are_validated(override, message):
    with pytest.raises(ShoshinError, match=re.escape(message)):
        load_config("tiny", [override])


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    config = load_config("tiny", ["train.optimizer=muon", "model.tie_embeddings=false"])
    config.model.vocab_size = 50
    model = build_model(config.model)
    opt = make_optimizer(model, config.train, "cpu")
    assert isinstance(opt, Optimizers)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert in_muon == {id(p) for p in hidden_matrices(model)}
    for name in ("wte.weight", "wpe.weight", "lm_head.weight", "ln_f.weight"):
        assert id(named[name]) not in in_muon, name
    assert id(named["h.0.attn.c_attn.weight"]) in in_muon
    every = sum(len(g["params"]) for g in opt.param_groups)
    assert every == len(list(model.parameters()))
    assert [g["lr"] for g in opt.param_groups] == [0.02, 3e-3, 3e-3]  # muon_lr, then lr


def _rows(run: Run, keys=("step", "train_loss", "lr")) -> list[dict]:
    return [{k: r.get(k) for k in keys} for r in run.metrics() if "train_loss" in r]


@pytest.mark.parametrize(
    "recipe",
    [
        ("train.optimizer=muon",),
        ("train.schedule=wsd",),
        ("train.optimizer=muon", "train.schedule=wsd"),
    ],
)
def test_resume_is_exact_with_muon_and_wsd(tmp_path, shakespeare_like, recipe):
    config = _tiny(shakespeare_like, *recipe)
    straight = train(config, tmp_path / "a", **QUIET)
    run = train(_tiny(shakespeare_like, *recipe), tmp_path / "b", stop_after=7, **QUIET)
    state = json.loads((run.path / "checkpoints" / "step-0000007" / "state.json").read_text())
    if "train.optimizer=muon" in recipe:  # Muon's momentum buffers are in the checkpoint
        assert any("momentum_buffer" in k for k in _tensor_names(run.path / "checkpoints"))
        assert len(state["param_groups"]) == 3
    resume(Run(run.path), **QUIET)
    assert _rows(Run(run.path)) == _rows(straight)
    assert Run(run.path).manifest.final_val_loss == straight.manifest.final_val_loss


def _tensor_names(checkpoints) -> list[str]:
    from safetensors import safe_open

    with safe_open(checkpoints / "step-0000007" / "trainer.safetensors", framework="pt") as f:
        return list(f.keys())


def test_extending_a_wsd_run_moves_its_warmdown_only_while_the_rate_is_stable():
    base = ["train.schedule=wsd", "train.max_steps=100", "train.warmup_steps=0"]
    base += ["train.warmdown_fraction=0.5", "train.lr=1.0", "train.min_lr=0.0"]
    stable = load_config(None, base)
    assert change_budget(stable, ["train.max_steps=200"], step=30) == {
        "train.max_steps": [100, 200]
    }
    assert stable.train.lr_decay_steps == 0  # the warmdown is now steps 100-200
    assert lr_at(30, stable.train) == 1.0 and lr_at(150, stable.train) == pytest.approx(0.5)

    decaying = load_config(None, base)
    before = lr_at(70, decaying.train)
    change_budget(decaying, ["train.max_steps=200"], step=70)
    assert decaying.train.lr_decay_steps == 100  # the decay keeps its course: no jump
    assert lr_at(70, decaying.train) == before and lr_at(150, decaying.train) == 0.0


def test_final_val_loss_of_training_is_what_shoshin_eval_prints(tmp_path, shakespeare_like, cli):
    run = train(_tiny(shakespeare_like, "train.eval_iters=1"), tmp_path / "runs", **QUIET)
    final = run.manifest.final_val_loss
    last = run.metrics()[-1]
    assert last["step"] == 16 and last["val_loss"] == final
    result = cli("eval", str(run.path))
    assert result.returncode == 0, result.stderr
    assert f"validation loss (whole split, windows of 64 tokens): {final:.4f}" in result.stdout
    record = json.loads((run.path / "eval" / "val.json").read_text())
    assert record["metrics"]["loss"] == pytest.approx(final, abs=1e-6)
    assert record["metrics"]["bits_per_char"] == pytest.approx(last["val_bits_per_char"], abs=1e-6)
