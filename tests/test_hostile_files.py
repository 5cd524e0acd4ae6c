"""Hostile or damaged files a model is built from: a run's config.yaml, a checkpoint's state.json
and index.json, a Hugging Face config.json. Each ends in one line and exit status 2, before
anything big is allocated, with nothing on disk changed."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_run, run_cli
from hf_tiny import make_gpt2

import shoshin
from shoshin.cli import main
from shoshin.config import ModelConfig
from shoshin.errors import ShoshinError
from shoshin.models import ARCHITECTURES, build_model, count_parameters, fit
from shoshin.models.fit import parameter_count

# Far below what the hostile configs would allocate (5 GB to terabytes), far above what refusing
# them takes (a few hundred MB of address space for Python and torch).
ADDRESS_SPACE = 4 * 2**30


def assert_one_line_error(rc: int, stderr: str, *fragments: str) -> None:
    assert rc == 2, (rc, stderr)
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().count("\n") == 0 and stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def cli_in_process(capsys, *args: str) -> tuple[int, str]:
    """The real CLI entry point, in this process (no second torch import): (status, stderr)."""
    rc = main(list(args))
    return rc, capsys.readouterr().err


def run_limited(*args: str) -> subprocess.CompletedProcess:
    """`python -m shoshin ARGS` with its address space capped: a big allocation fails outright."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run(
        [sys.executable, "-m", "shoshin", *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
        # One thread and few malloc arenas: a many-core machine reserves less address space.
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"},
    )


def edit_yaml(path: Path, section: str, **values) -> None:
    data = yaml.safe_load(path.read_text())
    data[section].update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    for key, value in values.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def state_file(run: Path) -> Path:
    (folder,) = (run / "checkpoints").glob("step-*")
    return folder / "state.json"


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tiny_bpe_run, isolated_dirs) -> Path:
    return copy_run(tiny_bpe_run, isolated_dirs / "runs")


@pytest.mark.slow
@pytest.mark.parametrize(
    "values",
    [
        {"n_layer": 100000},
        {"vocab_size": "1e9"},
        {"n_embd": "1e6"},
        {"block_size": "1e10"},
    ],
    ids=lambda v: next(iter(v)),
)
def test_huge_config_yaml_is_refused_before_allocating(run, values):
    edit_yaml(run / "config.yaml", "model", **values)
    result = run_limited("sample", str(run), "--max-new-tokens", "2")
    assert_one_line_error(result.returncode, result.stderr, "config.yaml does not match")


@pytest.mark.slow
def test_huge_hf_config_json_is_refused_before_allocating(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    edit_json(folder / "config.json", n_layer=100000)
    result = run_limited("sample", str(folder), "--max-new-tokens", "2")
    assert_one_line_error(result.returncode, result.stderr, "config.json does not match")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"n_head": 0}, "model.n_head must be at least 1"),
        ({"block_size": 0}, "model.block_size must be at least 1"),
        ({"layer_norm_eps": -5}, "model.layer_norm_eps must be positive"),
        ({"layer_norm_eps": ".nan"}, "model.layer_norm_eps must be a finite number"),
        ({"n_layer": "many"}, "model.n_layer expects an integer"),
        ({"n_layer": 3}, "missing tensor h.2."),
    ],
)
def test_bad_config_yaml_values(run, capsys, values, message):
    config = run / "config.yaml"
    text = config.read_text()
    for key, value in values.items():  # as a person editing the file would write them
        text = text.replace(f"  {key}: ", f"  {key}: {value} #", 1)
    config.write_text(text)
    before = snapshot(run)
    for command in (["sample", str(run), "--max-new-tokens", "2"], ["train", "--resume", str(run)]):
        rc, err = cli_in_process(capsys, *command)
        assert_one_line_error(rc, err, "config.yaml", message)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "values, message",
    [
        ({"n_head": 0}, "n_head must be a whole number of at least 1"),
        ({"n_head": 5}, "n_embd (32) must be a multiple of n_head (5)"),
        ({"n_positions": 0}, "n_positions must be a whole number of at least 1"),
        ({"layer_norm_epsilon": -5}, "layer_norm_epsilon must be a positive number"),
        ({"vocab_size": "many"}, "vocab_size must be a whole number"),
        ({"n_layer": KeyError}, "missing the field 'n_layer'"),
        ({"n_positions": 32}, "wpe.weight of shape (64, 32), but"),
    ],
)
def test_bad_hf_config_json_values(tmp_path, values, message):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    edit_json(folder / "config.json", **values)
    with pytest.raises(ShoshinError, match="config.json") as info:
        shoshin.load(folder)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_json_with_byte_order_mark_loads(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    config = folder / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    model, _ = shoshin.load(folder)
    assert model.config.n_layer == 2


@pytest.mark.parametrize(
    "values, message",
    [
        ({"step": "abc"}, "step must be a whole number of steps, 0 or more; got 'abc'"),
        ({"step": KeyError}, "step must be a whole number of steps, 0 or more; it is missing"),
        ({"step": -5}, "got -5"),
        ({"step": 1e18}, "got 1e+18"),
        ({"step": 11}, "step must be 10, the step of its folder step-0000010"),
        ({"elapsed": "x"}, "elapsed must be a number of seconds"),
        ({"tokens_seen": -1}, "tokens_seen must be a whole number"),
        ({"best_val_loss": "low"}, "best_val_loss must be a finite number or null"),
        ({"param_groups": "abc"}, "param_groups must be a list"),
    ],
)
def test_bad_state_json(run, capsys, values, message):
    edit_json(state_file(run), **values)
    before = snapshot(run)
    for command in (["train", "--resume", str(run)], ["sample", str(run), "--max-new-tokens", "1"]):
        rc, err = cli_in_process(capsys, *command)
        assert_one_line_error(rc, err, "state.json", message)
    # Nothing was retrained or recorded: metrics.jsonl and the manifest are as they were.
    assert snapshot(run) == before
    rc, _ = cli_in_process(capsys, "show", str(run))
    assert rc == 0


def test_negative_step_through_the_real_cli_keeps_the_metrics(run):
    """The data-loss case end to end: `step: -5` used to retrain and delete the earlier metrics."""
    edit_json(state_file(run), step=-5)
    metrics = (run / "metrics.jsonl").read_bytes()
    result = run_cli("train", "--resume", str(run))
    assert_one_line_error(result.returncode, result.stderr, "state.json", "got -5")
    assert (run / "metrics.jsonl").read_bytes() == metrics
    show = run_cli("show", str(run))
    assert show.returncode == 0 and "Traceback" not in show.stderr


def test_optimizer_setting_of_the_wrong_type(run, capsys):
    state = json.loads(state_file(run).read_text())
    state["param_groups"][0]["lr"] = "fast"
    state_file(run).write_text(json.dumps(state))
    rc, err = cli_in_process(capsys, "train", "--resume", str(run))
    assert_one_line_error(rc, err, "optimizer setting lr='fast'")


@pytest.mark.parametrize(
    "index, message",
    [
        ("[]", "index.json is corrupt"),
        ('{"latest": "../../elsewhere"}', "index.json is corrupt"),
        ('{"latest": "step-0000099"}', "names latest checkpoint step-0000099, which is missing"),
    ],
)
def test_bad_index_json(run, capsys, index, message):
    (run / "checkpoints" / "index.json").write_text(index)
    for command in (["train", "--resume", str(run)], ["sample", str(run)]):
        rc, err = cli_in_process(capsys, *command)
        assert_one_line_error(rc, err, message)


def test_rng_state_of_the_wrong_shape(run, capsys):
    from safetensors.torch import load_file, save_file

    path = state_file(run).parent / "trainer.safetensors"
    tensors = load_file(path)
    tensors["rng.torch"] = tensors["rng.torch"][:10].clone()
    save_file(tensors, path)
    rc, err = cli_in_process(capsys, "train", "--resume", str(run))
    assert_one_line_error(rc, err, "trainer.safetensors has no valid torch RNG state")


def test_a_model_too_big_for_memory_is_refused_before_building(run, monkeypatch):
    # The machine's free memory cannot be made small for a test; the one number it feeds is.
    monkeypatch.setattr(fit, "available_memory", lambda: 0)
    with pytest.raises(ShoshinError, match=r"needs about \d+ MiB of memory .* only 0 MiB is"):
        shoshin.load(run)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(
    "extra", [{}, {"norm": "post", "bias": False}, {"tie_embeddings": False}], ids=str
)
def test_parameter_count_matches_the_built_model(arch, extra):
    """parameter_count extrapolates from one and two layers: for every registered architecture it
    must equal the real count."""
    for n_layer in (1, 3, 5):
        config = ModelConfig(
            arch=arch, n_layer=n_layer, n_head=2, n_embd=16, block_size=24, vocab_size=40, **extra
        )
        assert parameter_count(config) == count_parameters(build_model(config))


def test_parameter_count_of_an_impossible_model_is_an_error():
    config = ModelConfig(n_layer=2, n_head=1, n_embd=10**6, vocab_size=10**30)
    with pytest.raises(ShoshinError, match="beyond any machine"):
        parameter_count(config)
    assert torch.get_default_device() == torch.device("cpu")  # the meta device did not leak
