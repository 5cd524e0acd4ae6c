"""Run configuration: plain dataclasses, loaded from YAML presets or files, changed by dotted overrides.

A config is saved beside the weights as YAML and loaded back by field name; an unknown key is an
error that suggests the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shoshin.data.text import read_text_file
from shoshin.errors import ShoshinError


@dataclass
class ModelConfig:
    arch: str = "gpt"  # a name in shoshin.models.ARCHITECTURES: gpt | lstm
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128  # context length in tokens
    dropout: float = 0.0
    bias: bool = True
    norm: str = "pre"  # pre: GPT-2 layout (LayerNorm before each sublayer); post: GPT-1 layout
    activation: str = "gelu_tanh"  # gelu_tanh (GPT-2 and GPT-1 checkpoints) | gelu (exact)
    layer_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    vocab_size: int = 0  # set from the tokenizer when training starts

    def validate(self) -> None:
        from shoshin.models import architecture  # the registry of known architectures

        architecture(self.arch)
        _choice("model.norm", self.norm, ("pre", "post"))
        _choice("model.activation", self.activation, ("gelu", "gelu_tanh"))
        for name in ("n_layer", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise ShoshinError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.arch == "gpt" and self.n_head < 1:
            raise ShoshinError(f"model.n_head must be at least 1, got {self.n_head}")
        if self.arch == "gpt" and self.n_embd % self.n_head:
            raise ShoshinError(
                f"model.n_embd ({self.n_embd}) must be a multiple of model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ShoshinError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not self.layer_norm_eps > 0:  # LayerNorm divides by sqrt(variance + eps)
            raise ShoshinError(f"model.layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.vocab_size < 0:
            raise ShoshinError(f"model.vocab_size must not be negative, got {self.vocab_size}")


@dataclass
class DataConfig:
    source: str = "chitchat"  # .txt file or folder, .jsonl chat file, chitchat, hf:NAME, hf:/folder
    hf_split: str = "train"  # hf: sources: the split to read (slices such as train[:10%] too)
    hf_column: str = ""  # hf: sources: a text or OpenAI-format messages column; "" = detect
    hf_revision: str = ""  # hf: hub datasets: a branch, tag or commit; "" = the newest
    tokenizer: str = "bpe"  # char | bpe | pretrained (the checkpoint's; set by shoshin finetune)
    vocab_size: int = 2048  # bpe only
    val_fraction: float = 0.1
    split_seed: int = 1337
    loss_on: str = "all"  # all | assistant (chat data only)
    max_documents: int = 0  # 0 = all; otherwise keep the first N documents / conversations
    dedupe: bool = False  # drop exact duplicate documents / conversations before splitting

    def validate(self) -> None:
        _choice("data.tokenizer", self.tokenizer, ("char", "bpe", "pretrained"))
        _choice("data.loss_on", self.loss_on, ("all", "assistant"))
        if not 0.0 < self.val_fraction < 1.0:
            raise ShoshinError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.tokenizer == "bpe" and self.vocab_size < 260:
            raise ShoshinError(
                f"data.vocab_size must be at least 260 for bpe, got {self.vocab_size}"
            )
        if self.max_documents < 0:
            raise ShoshinError(
                f"data.max_documents must be 0 (all) or positive, got {self.max_documents}"
            )


@dataclass
class TrainConfig:
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0 = no time budget
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = off
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 500
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 1337
    sample_prompt: str = ""
    sample_tokens: int = 100  # length of the sample printed at the end; 0 = none

    def validate(self) -> None:
        _choice("train.dtype", self.dtype, ("float32", "bfloat16"))
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ShoshinError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_interval", "checkpoint_interval", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ShoshinError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ShoshinError("train.lr must be positive and train.min_lr not negative")


@dataclass
class TrackingConfig:
    mlflow: bool = False  # mirror the run to MLflow (pip install 'shoshin[mlflow]')
    mlflow_uri: str = "sqlite:///mlflow.db"
    mlflow_experiment: str = "shoshin"

    def validate(self) -> None:
        if self.mlflow and importlib.util.find_spec("mlflow") is None:
            raise ShoshinError(
                "tracking.mlflow=true needs MLflow: pip install 'shoshin[mlflow]' "
                "(or set tracking.mlflow=false)"
            )


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self, environment: bool = True) -> Config:
        """Check every value; `environment=False` skips what depends on this machine (whether
        MLflow is installed), so that a saved run's config can be read anywhere."""
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if environment:
            self.tracking.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ShoshinError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def preset_names() -> list[str]:
    """Names of the presets shipped with shoshin."""
    folder = resources.files("shoshin") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ShoshinError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ShoshinError(
            f"{where} must hold a mapping of config sections, not {type(data).__name__}"
        )
    return data


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a config from a preset name or YAML path (or defaults), then apply `key=value` overrides."""
    config = Config()
    if source:
        path = Path(source)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise ShoshinError(f"config file {source} does not exist")
            data = _read_yaml(read_text_file(path), str(path))
        else:
            names = preset_names()
            if source not in names:
                hint = difflib.get_close_matches(source, names, n=1)
                extra = f"; did you mean {hint[0]}?" if hint else f" (presets: {', '.join(names)})"
                raise ShoshinError(f"no preset or config file named {source!r}{extra}")
            text = (resources.files("shoshin") / "presets" / f"{source}.yaml").read_text("utf-8")
            data = _read_yaml(text, f"preset {source}")
            data.setdefault("name", source)
        apply_mapping(config, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ShoshinError(f"override {item!r} must look like section.key=value")
        set_value(config, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return config.validate()


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved config (e.g. a run's config.yaml)."""
    config = Config()
    apply_mapping(config, data)
    return config


def apply_mapping(config: Config, data: dict[str, Any], prefix: str = "") -> None:
    """Set every leaf of a nested mapping onto the config, checking keys and types."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        # Only a section is descended into: anything else (an unknown key, a mapping given to a
        # value, a YAML alias that contains itself) ends in set_value's one-line error.
        if isinstance(value, dict) and any(k.startswith(f"{dotted}.") for k in all_keys()):
            apply_mapping(config, value, prefix=f"{dotted}.")
        else:
            set_value(config, dotted, value)


def all_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. model.n_layer."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix=f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Set one dotted key, e.g. set_value(cfg, "train.lr", 3e-4); unknown keys suggest a close match."""
    if dotted not in all_keys():
        hint = difflib.get_close_matches(dotted, all_keys(), n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        raise ShoshinError(f"unknown config key {dotted!r}{suggestion}")
    *parents, leaf = dotted.split(".")
    target: Any = config
    for part in parents:
        target = getattr(target, part)
    hints = typing.get_type_hints(type(target))
    setattr(target, leaf, _coerce(dotted, value, hints[leaf]))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation in (int, float) and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; numbers written that way are still numbers.
        try:
            value = float(value)
        except ValueError:
            pass
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ShoshinError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif annotation is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    raise ShoshinError(f"{key} expects {expected.get(annotation, annotation)}, got {value!r}")


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from shoshin.runs.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config(path: Path) -> Config:
    """Read a config.yaml written by save_config, checking every value as `load_config` does.

    The file may have been edited or damaged since (a shared run folder is untrusted input): any
    problem is a one-line error naming the file, before anything is built from it.
    """
    data = _read_yaml(read_text_file(path), str(path))
    try:
        return config_from_dict(data).validate(environment=False)
    except ShoshinError as exc:
        raise ShoshinError(f"{path}: {exc}") from None
