"""Config is discoverable: every key described where it is declared, choices declared once."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import yaml
from conftest import run_cli

from shoshin.cli import main
from shoshin.config import Config, key_reference, load_config, preset_names
from shoshin.errors import ShoshinError


def _fields(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}{f.name}", f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")


def test_every_config_field_has_a_description():
    undescribed = [key for key, f in _fields(Config) if not f.metadata.get("help", "").strip()]
    assert undescribed == [], f"give these fields a description with setting(): {undescribed}"


def test_choices_are_declared_once_and_validation_reads_them():
    declared = {k.key: k.choices for k in key_reference() if k.choices}
    assert set(declared) >= {"model.norm", "data.tokenizer", "data.loss_on", "train.dtype"}
    for key, allowed in declared.items():
        with pytest.raises(ShoshinError, match=f"{key} must be one of {', '.join(allowed)};"):
            load_config(None, [f"{key}=nonsense"])
        section, leaf = key.split(".")
        for value in allowed:
            assert getattr(getattr(load_config(None, [f"{key}={value}"]), section), leaf) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=0", "train.max_steps must be at least 1, got 0"),
        ("train.eval_interval=-1", "train.eval_interval must not be negative, got -1"),
        ("model.n_layer=0", "model.n_layer must be at least 1, got 0"),
        ("train.calibrate=maybe", "train.calibrate expects true or false"),
    ],
)
def test_declared_minimums_and_types_are_checked(override, message):
    with pytest.raises(ShoshinError, match=message):
        load_config("tiny", [override])


def test_shoshin_config_lists_every_key_with_type_default_and_description(capsys):
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for info in key_reference():
        (line,) = [x for x in lines if x.split()[:1] == [info.key]]
        assert info.type in line and info.help in line
    assert (
        "train.calibrate" in "\n".join(lines)
        and f"presets: {', '.join(preset_names())}" in lines[-1]
    )


def test_shoshin_config_preset_prints_it_resolved(tmp_path):
    result = run_cli("config", "tiny", "train.lr=0.01")
    assert result.returncode == 0, result.stderr
    (tmp_path / "resolved.yaml").write_text(result.stdout)
    assert yaml.safe_load(result.stdout)["train"]["lr"] == 0.01
    assert load_config(str(tmp_path / "resolved.yaml")) == load_config("tiny", ["train.lr=0.01"])


@pytest.mark.parametrize("command", ["train", "finetune", "estimate", "lr-find", "config"])
def test_help_lists_the_presets_from_the_preset_folder(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "finetune" in preset_names()
    assert f"a preset ({', '.join(preset_names())})" in text and "shoshin config" in text


def test_overrides_may_follow_options(capsys):
    """`shoshin estimate tiny --json model.n_layer=3`: the override after the option counts."""
    assert main(["estimate", "tiny", "--calibration-steps", "0", "model.n_layer=3", "--json"]) == 0
    three = json.loads(capsys.readouterr().out)["params"]
    assert main(["estimate", "tiny", "--calibration-steps", "0", "--json", "model.n_layer=2"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] < three
    with pytest.raises(SystemExit):
        main(["estimate", "tiny", "--json", "not-an-override"])
