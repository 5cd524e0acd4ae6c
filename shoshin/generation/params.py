"""The one declaration of every sampling option, and the defaults each surface starts from.

`SamplingParams` declares each option once: its type, its default, its bounds and its description
(field metadata). Every surface is generated from it: the CLI's options (`cli_options`), the HTTP
request schema and the web page's settings (`shoshin/serving/`), and `validate`, which checks the
same bounds. `SURFACE_DEFAULTS` is the one table of the defaults that differ per surface (the CLI's
`sample`, `chat` and `eval`, the server, training's end-of-run sample).

Adding a sampling option touches two places: a field here (type, default, bounds, description)
and its handling in `sample_next` (`shoshin/generation/sampling.py`).

This module imports no PyTorch: the CLI builds its parser from it, and `--help` must start fast.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, NamedTuple

from shoshin.errors import ShoshinError

MAX_LOGPROBS = 20  # top alternatives per position, at most (OpenAI allows 20)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


def _option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    cli: bool = True,
    setting: bool = False,
    metavar: str | None = None,
):
    """A declared sampling option. Bounds apply to the value (to each value of a mapping); `cli`:
    the CLI offers it as `--name-with-dashes`; `setting`: the web page shows it in its settings."""
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "cli": cli,
        "setting": setting,
        "metavar": metavar,
    }
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 means greedy (argmax).

    Penalties and logit_bias change the logits before anything else, so they also steer greedy
    decoding; temperature, top_k, top_p and min_p shape the distribution that is then sampled.
    """

    max_new_tokens: int = _option(256, "tokens to generate at most (0: none)", minimum=0)
    temperature: float = _option(
        1.0, "softmax temperature; 0 is greedy", minimum=0.0, maximum=2.0, setting=True
    )
    top_k: int | None = _option(
        None, "sample among the K most likely tokens only", minimum=1, setting=True
    )
    top_p: float | None = _option(
        None,
        "nucleus: the most likely tokens that cover P of the mass",
        exclusive_minimum=0.0,
        maximum=1.0,
        setting=True,
    )
    min_p: float | None = _option(
        None,
        "drop tokens less likely than P x the most likely one",
        minimum=0.0,
        maximum=1.0,
        setting=True,
    )
    frequency_penalty: float = _option(
        0.0,
        "lower each token's logit by this x its count in the reply so far (OpenAI)",
        minimum=-2.0,
        maximum=2.0,
        setting=True,
    )
    presence_penalty: float = _option(
        0.0,
        "lower the logit of every token already in the reply by this (OpenAI)",
        minimum=-2.0,
        maximum=2.0,
        setting=True,
    )
    repetition_penalty: float = _option(
        1.0,
        "divide positive / multiply negative logits of tokens seen in prompt or reply (CTRL); "
        "1 is off",
        exclusive_minimum=0.0,
        maximum=10.0,
        setting=True,
    )
    logit_bias: Mapping[int, float] = _option(
        {},
        "token id -> bias added to its logit (OpenAI)",
        minimum=-100.0,
        maximum=100.0,
        setting=True,
        metavar="ID:BIAS",
    )
    seed: int | None = _option(
        None,
        "seed of this generation's torch.Generator (same seed, same text)",
        minimum=SEED_MIN,
        maximum=SEED_MAX,
    )
    stop_ids: Sequence[int] = _option(
        (), "a generation ends after any of these tokens (kept in its tokens)", cli=False
    )
    stop_sequences: Sequence[Sequence[int]] = _option(
        (), "... or after any of these runs of tokens", cli=False
    )
    logprobs: int | None = _option(
        None,
        "per new token: its log-probability and this many top alternatives",
        minimum=0,
        maximum=MAX_LOGPROBS,
        cli=False,
    )
    prompt_logprobs: int | None = _option(
        None,
        "the same for every prompt token (the first has none)",
        minimum=0,
        maximum=MAX_LOGPROBS,
        cli=False,
    )
    grammar: str | None = _option(
        None,
        "a Lark grammar (llguidance's dialect; `%json {SCHEMA}` is a JSON value valid against "
        "SCHEMA) that the new tokens must match: every other token is masked before sampling "
        "(see generation.constraints)",
        cli=False,
    )

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Check every value against its declared bounds; a bad one is a ShoshinError naming it.
        Returns self."""
        for f in fields(self):
            value = getattr(self, f.name)
            values = value.values() if isinstance(value, Mapping) else [value]
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ShoshinError(f"{f.name} must be a finite number, got {v}")
                if isinstance(v, (int, float)) and not in_bounds(f.name, v):
                    raise ShoshinError(f"{f.name} must be {bounds_text(f.name)}, got {v}")
        for token in self.logit_bias:
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                raise ShoshinError(
                    f"logit_bias names token {token}, which is not in the vocabulary"
                    + (f" (0..{vocab_size - 1})" if vocab_size else "")
                )
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        """True when the choice depends on the tokens so far."""
        return bool(
            self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0
        )


_FIELDS = {f.name: f for f in fields(SamplingParams)}


def bounds(name: str) -> dict[str, float]:
    """The declared bounds of option `name`, as JSON Schema names them (`minimum`, `maximum`,
    `exclusive_minimum`); only those it has."""
    meta = _FIELDS[name].metadata
    keys = ("minimum", "maximum", "exclusive_minimum")
    return {k: meta[k] for k in keys if meta[k] is not None}


def in_bounds(name: str, value: float) -> bool:
    """True when `value` lies within option `name`'s declared bounds."""
    b = bounds(name)
    return (
        ("minimum" not in b or value >= b["minimum"])
        and ("maximum" not in b or value <= b["maximum"])
        and ("exclusive_minimum" not in b or value > b["exclusive_minimum"])
    )


def bounds_text(name: str) -> str:
    """Option `name`'s bounds for a person: "in [0, 2]", "in (0, 1]", "at least 1"."""
    b = bounds(name)
    low = b.get("minimum", b.get("exclusive_minimum"))
    opening = "[" if "minimum" in b else "("
    if low is not None and "maximum" in b:
        return f"in {opening}{low:g}, {b['maximum']:g}]"
    if low is not None:
        return f"at least {low:g}" if "minimum" in b else f"more than {low:g}"
    return f"at most {b['maximum']:g}" if "maximum" in b else "any value"


def describe(name: str) -> str:
    """Option `name`'s description followed by its bounds, as the CLI and the schema show it."""
    text = _FIELDS[name].metadata["help"]
    return text if not bounds(name) else f"{text} ({bounds_text(name)})"


class CliOption(NamedTuple):
    """A sampling option as the CLI offers it: `--name-with-dashes VALUE` of type `kind`."""

    name: str
    kind: type  # the non-None type of an optional field; `dict` for a mapping
    default: Any
    help: str  # the description with its bounds
    metavar: str | None


def cli_options() -> list[CliOption]:
    """The options the CLI offers, in declaration order, each with its declared description and
    bounds; the defaults are the declared ones (a command overrides them from SURFACE_DEFAULTS)."""
    hints = typing.get_type_hints(SamplingParams)
    out = []
    for f in fields(SamplingParams):
        if not f.metadata["cli"]:
            continue
        hint = hints[f.name]
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        kind = dict if typing.get_origin(hint) is Mapping else (kinds or [hint])[0]
        default = None if f.default is MISSING else f.default
        out.append(CliOption(f.name, kind, default, describe(f.name), f.metadata["metavar"]))
    return out


def settings() -> list[str]:
    """The options the web page shows in its settings, in declaration order."""
    return [f.name for f in fields(SamplingParams) if f.metadata["setting"]]


# The defaults that differ per surface, over the declared ones; every surface reads them here.
SURFACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sample": {"max_new_tokens": 200, "temperature": 0.8},  # `shoshin sample`
    "chat": {"max_new_tokens": 256, "temperature": 0.8},  # `shoshin chat`, ChatSession
    "eval": {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "seed": 0},  # `shoshin eval`
    # The HTTP API keeps OpenAI's defaults, which are the declared ones; its token limit per
    # request is the server's setting (`--max-tokens`), not a sampling default.
    "server": {},
    # Training's end-of-run sample (its length and seed come from the training config).
    "training": {"temperature": 0.8, "top_k": 50},
}


def surface_defaults(surface: str, **overrides: Any) -> SamplingParams:
    """SamplingParams with `surface`'s defaults (SURFACE_DEFAULTS) and then `overrides`."""
    if surface not in SURFACE_DEFAULTS:
        raise KeyError(f"no sampling defaults for surface {surface!r}")
    return replace(SamplingParams(), **{**SURFACE_DEFAULTS[surface], **overrides})
