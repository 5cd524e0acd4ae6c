"""Run configuration: plain dataclasses, loaded from YAML presets or files, changed by dotted overrides.

Every field says what it does where it is declared, `setting(default, "description", minimum=...)`,
and a field with a fixed set of values declares them as a `Literal`; `shoshin config` and the
validation below read both from here. A config is saved beside the weights as YAML and loaded back
by field name; an unknown key is an error that suggests the closest valid key.
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
from typing import Any, Literal

import yaml

from shoshin.data.text import read_text_file
from shoshin.errors import ShoshinError


def setting(default: Any, help: str, minimum: float | None = None) -> Any:
    """A config field with its one-line description and, for numbers, its smallest allowed value."""
    return field(default=default, metadata={"help": help, "minimum": minimum})


@dataclass
class ModelConfig:
    """The network: which architecture and what shape."""

    arch: str = setting(
        "gpt", "architecture, a name in shoshin.models.ARCHITECTURES: gpt, llama or lstm"
    )
    n_layer: int = setting(4, "Transformer blocks or LSTM layers", minimum=1)
    n_head: int = setting(
        4, "attention heads (gpt, llama); n_embd must be a multiple of it unless head_dim is set"
    )
    n_embd: int = setting(128, "width: embedding and hidden size", minimum=1)
    block_size: int = setting(128, "context length in tokens", minimum=1)
    dropout: float = setting(0.0, "dropout probability in training, in [0, 1)")
    bias: bool = setting(
        True, "biases in the linear layers and LayerNorms (gpt; llama has none: set it false)"
    )
    norm: Literal["pre", "post"] = setting(
        "pre", "pre: LayerNorm before each sublayer (GPT-2); post: after it (GPT-1); gpt only"
    )
    activation: Literal["gelu_tanh", "gelu"] = setting(
        "gelu_tanh", "gpt's MLP activation: gelu_tanh (GPT-1/GPT-2 checkpoints) or exact gelu"
    )
    layer_norm_eps: float = setting(
        1e-5, "epsilon of the LayerNorms (gpt) or RMSNorms (llama): added to the variance"
    )
    tie_embeddings: bool = setting(True, "the output head shares the token embedding's weights")
    n_kv_head: int = setting(
        0,
        "llama: key/value heads, grouped-query attention (a divisor of n_head); 0 = n_head",
        minimum=0,
    )
    head_dim: int = setting(
        0, "llama: width of one attention head (even); 0 = n_embd // n_head", minimum=0
    )
    intermediate_size: int = setting(
        0,
        "llama: MLP hidden width; 0 = 8/3 n_embd rounded up to 32 (swiglu), 4 n_embd (relu2)",
        minimum=0,
    )
    rope_theta: float = setting(
        10000.0, "llama: base of the rotary position embedding's frequencies", minimum=1
    )
    qk_norm: bool = setting(
        False, "llama: RMSNorm each head's queries and keys before rotary (Qwen3's QK-norm)"
    )
    mlp: Literal["swiglu", "relu2"] = setting(
        "swiglu",
        "llama MLP: swiglu (Llama/Qwen3) or relu2, squared ReLU (beyond Llama: "
        "transformers cannot run it)",
    )
    logit_softcap: float = setting(
        0.0,
        "llama: cap the logits smoothly at +-this, cap * tanh(logits / cap); 0 = off "
        "(beyond Llama: transformers cannot run it)",
        minimum=0,
    )
    vocab_size: int = setting(0, "set from the tokenizer when training starts", minimum=0)

    def validate(self) -> None:
        from shoshin.models import architecture  # the registry of known architectures

        check = architecture(self.arch).check_config
        if check is not None:
            check(self)  # the rules of this architecture's shape
        if not 0.0 <= self.dropout < 1.0:
            raise ShoshinError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not self.layer_norm_eps > 0:  # LayerNorm divides by sqrt(variance + eps)
            raise ShoshinError(f"model.layer_norm_eps must be positive, got {self.layer_norm_eps}")


@dataclass
class DataConfig:
    """The corpus, its tokenizer and its train/validation split."""

    source: str = setting(
        "chitchat",
        "a .txt file or folder, a .jsonl chat file, chitchat, hf:NAME or hf:/folder",
    )
    hf_split: str = setting("train", "hf: sources: the split to read (slices like train[:10%] too)")
    hf_column: str = setting(
        "", "hf: sources: a text or OpenAI-format messages column; empty = detect it"
    )
    hf_revision: str = setting("", "hf: hub datasets: a branch, tag or commit; empty = the newest")
    tokenizer: Literal["char", "bpe", "pretrained"] = setting(
        "bpe",
        "char, bpe (trained on the corpus), or pretrained (set by shoshin finetune)",
    )
    vocab_size: int = setting(2048, "BPE vocabulary size (bpe only)")
    val_fraction: float = setting(0.1, "share of documents or conversations held out, in (0, 1)")
    split_seed: int = setting(1337, "seed of the train/validation split")
    loss_on: Literal["all", "assistant"] = setting(
        "all", "tokens the loss covers: all, or only the assistant's replies (chat data)"
    )
    max_documents: int = setting(
        0, "keep only the first N documents or conversations; 0 = all", minimum=0
    )
    dedupe: bool = setting(
        False, "drop exact duplicate documents or conversations before splitting"
    )

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ShoshinError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.tokenizer == "bpe" and self.vocab_size < 260:
            raise ShoshinError(
                f"data.vocab_size must be at least 260 for bpe, got {self.vocab_size}"
            )


@dataclass
class TrainConfig:
    """The optimisation: budget, batch, optimizer, schedule, evaluation, checkpoints."""

    max_steps: int = setting(1000, "optimizer steps; the schedule decays over them", minimum=1)
    max_minutes: float = setting(0.0, "time budget in minutes; 0 = none", minimum=0)
    batch_size: int = setting(
        16, "sequences per micro-batch (per process under torchrun)", minimum=1
    )
    grad_accum: int = setting(1, "micro-batches accumulated into one optimizer step", minimum=1)
    lr: float = setting(1e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay", minimum=0)
    warmup_steps: int = setting(100, "steps of linear warmup to lr", minimum=0)
    lr_decay_steps: int = setting(
        0,
        "step where the cosine reaches min_lr, then held there; 0 = max_steps "
        "(a resume that changes max_steps sets it, so the schedule does not jump)",
        minimum=0,
    )
    weight_decay: float = setting(0.1, "AdamW weight decay of the weight matrices", minimum=0)
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.99, "AdamW beta2")
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0 = off", minimum=0)
    eval_interval: int = setting(
        250, "evaluate every N steps (and at the end); 0 = at the end", minimum=0
    )
    eval_iters: int = setting(
        20,
        "validation batches per evaluation, spread evenly over the split; 0 = all of it",
        minimum=0,
    )
    log_interval: int = setting(10, "log the training loss every N steps", minimum=1)
    checkpoint_interval: int = setting(
        500,
        "checkpoint every N steps (and at the end and at a new best); 0 = not periodically",
        minimum=0,
    )
    dtype: Literal["float32", "bfloat16"] = setting(
        "float32", "float32, or bfloat16 autocast for the forward pass"
    )
    compile: bool = setting(False, "torch.compile the model")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto (CUDA if present), cpu or cuda")
    seed: int = setting(1337, "seed of the initial weights, dropout and the batch order")
    calibrate: bool = setting(
        True, "time a few steps first to predict the run's duration (see shoshin show)"
    )
    sample_prompt: str = setting("", "prompt of the sample printed at the end")
    sample_tokens: int = setting(
        100, "length of the sample printed at the end; 0 = none", minimum=0
    )

    def validate(self) -> None:
        if self.lr <= 0:
            raise ShoshinError(f"train.lr must be positive, got {self.lr}")


@dataclass
class LoraConfig:
    """LoRA fine-tuning through peft: train small low-rank adapters, the base weights stay frozen."""

    rank: int = setting(
        0,
        "rank of the LoRA adapters; 0 = off (every weight trains); needs shoshin[lora]",
        minimum=0,
    )
    alpha: float = setting(16.0, "LoRA scaling numerator: the update is scaled by alpha / rank")
    dropout: float = setting(0.0, "dropout on the adapters' input in training, in [0, 1)")
    targets: Literal["attention", "mlp", "both"] = setting(
        "both",
        "layers that get adapters: attention (gpt: c_attn, c_proj; llama: q/k/v/o_proj), "
        "mlp (gpt: c_fc, c_proj; llama: gate/up/down_proj) or both",
    )

    def validate(self, environment: bool = True) -> None:
        """`environment=False`: the values only, not whether peft is installed here."""
        if not self.rank:
            return
        if self.alpha <= 0:
            raise ShoshinError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ShoshinError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if environment and importlib.util.find_spec("peft") is None:
            raise ShoshinError(
                "lora.rank > 0 needs peft: pip install 'shoshin[lora]' (or set lora.rank=0)"
            )


@dataclass
class TrackingConfig:
    """Where else the run is recorded."""

    mlflow: bool = setting(False, "mirror the run to MLflow (pip install 'shoshin[mlflow]')")
    mlflow_uri: str = setting("sqlite:///mlflow.db", "MLflow tracking URI")
    mlflow_experiment: str = setting("shoshin", "MLflow experiment name")

    def validate(self) -> None:
        if self.mlflow and importlib.util.find_spec("mlflow") is None:
            raise ShoshinError(
                "tracking.mlflow=true needs MLflow: pip install 'shoshin[mlflow]' "
                "(or set tracking.mlflow=false)"
            )


@dataclass
class Config:
    """A whole run's configuration: one section per stage."""

    name: str = setting("", "a label for the run; part of its id (default: the preset's name)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": ModelConfig.__doc__})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": DataConfig.__doc__})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": TrainConfig.__doc__})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": LoraConfig.__doc__})
    tracking: TrackingConfig = field(
        default_factory=TrackingConfig, metadata={"help": TrackingConfig.__doc__}
    )

    def validate(self, environment: bool = True) -> Config:
        """Check every value (choices and minimums from the fields, then each section's rules);
        `environment=False` skips what depends on this machine (whether MLflow is installed), so
        that a saved run's config can be read anywhere."""
        for key, annotation, metadata, value in _leaves(self):
            _check_declared(key, annotation, metadata, value)
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.lora.validate(environment)
        if self.lora.rank:
            from shoshin.models import architecture

            if architecture(self.model.arch).lora_targets is None:
                raise ShoshinError(f"lora.rank does not apply to model.arch={self.model.arch}")
        if environment:
            self.tracking.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any, Any, Any]]:
    """(dotted key, type, field metadata, value) of every leaf setting of a config or section."""
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _leaves(value, prefix=f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hints[f.name], f.metadata, value))
    return out


def choices(annotation: Any) -> tuple[str, ...]:
    """The allowed values of a `Literal[...]` field, or () for any other type."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _check_declared(key: str, annotation: Any, metadata: Any, value: Any) -> None:
    allowed = choices(annotation)
    if allowed and value not in allowed:
        raise ShoshinError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    minimum = metadata.get("minimum")
    if minimum is not None and value < minimum:
        bound = "must not be negative" if minimum == 0 else f"must be at least {minimum:g}"
        raise ShoshinError(f"{key} {bound}, got {value}")


def type_name(annotation: Any) -> str:
    """How `shoshin config` shows a field's type: int, float, bool, str, or pre|post for choices."""
    if choices(annotation):
        return "|".join(choices(annotation))
    return getattr(annotation, "__name__", str(annotation))


@dataclass
class KeyInfo:
    """One line of `shoshin config`: a dotted key, its type, default and description."""

    key: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()


def key_reference() -> list[KeyInfo]:
    """Every config key with its type, default and description, in declaration order."""
    return [
        KeyInfo(key, type_name(annotation), value, metadata.get("help", ""), choices(annotation))
        for key, annotation, metadata, value in _leaves(Config())
    ]


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. model.n_layer."""
    return [leaf[0] for leaf in _leaves(Config())]


def preset_names() -> list[str]:
    """Names of the presets shipped with shoshin (the YAML files in shoshin/presets/)."""
    folder = resources.files("shoshin") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset."""
    return Path(str(resources.files("shoshin") / "presets" / f"{name}.yaml"))


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
            data = _read_yaml(preset_path(source).read_text("utf-8"), f"preset {source}")
            data.setdefault("name", source)
        apply_mapping(config, data)
    return apply_overrides(config, overrides)


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Set `key=value` overrides (values read as YAML) on `config`, then validate it."""
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


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Set one dotted key, e.g. set_value(cfg, "train.lr", 3e-4); unknown keys suggest a close match."""
    keys = all_keys()
    if dotted not in keys:
        hint = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
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
    if choices(annotation):
        annotation = str  # the allowed values are checked by Config.validate
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


def to_yaml(config: Config) -> str:
    """The config as the YAML that save_config writes and load_config reads back."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from shoshin.runs.files import atomic_write_text

    atomic_write_text(path, to_yaml(config))


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
