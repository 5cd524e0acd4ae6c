"""The wire types of the API's requests: what a value may be in JSON, and the fields that are
generated rather than written.

- `Int`, `Float`, `Bool`: numbers and booleans as JSON Schema means them (pydantic's lax mode would
  also take `true` or `"5"` as an integer), so that /openapi.json and the server agree on every value.
- `TokenId`, `TokenIds` and logit_bias's keys are marked, and the app writes its model's
  vocabulary and context window into the document (openapi.py).
- `Request`: an explicit null means the field's default, as OpenAI's fields are nullable.
- `UNSUPPORTED`: fields OpenAI defines that shoshin does not serve; each may only be null.
- `sampling_fields`: the sampling options' request fields, generated from `SamplingParams`
  (shoshin/generation/params.py), the one declaration of each option's type, default, bounds and
  description; `WIRE_FORMS` says where OpenAI's wire form of an option differs.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shoshin.generation.params import SamplingParams, bounds, settings, surface_defaults


# Numbers and booleans as JSON Schema means them, so that the schema and the server agree on every
# value: pydantic's lax mode would also take `true` and `"5"` as integers, `"yes"` as a boolean.
def _not_bool_or_text(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value  # 3.0 is an integer in JSON Schema, and pydantic takes it; 3.5 is not


def Int(**bounds: int) -> Any:  # noqa: N802 (a type, as the annotations read)
    """An integer as JSON Schema means it, within `bounds` (ge, le, gt)."""
    # The bounds go inside the validator so that the schema shows them as minimum/maximum.
    return Annotated[int, Field(**bounds), BeforeValidator(_not_bool_or_text)]


Float = Annotated[float, Strict()]  # an integer is a number too
Bool = Annotated[bool, Strict()]

TOKEN_ID = "x-shoshin-token-id"  # marks token ids; the app adds its vocabulary's bound
TOKEN_KEYS = "x-shoshin-token-id-keys"  # marks objects keyed by token ids (logit_bias)
TOKEN_LIST = "x-shoshin-token-ids"  # marks a prompt of token ids; the app adds its context's bound
TokenId = Annotated[Int(ge=0), Field(json_schema_extra={TOKEN_ID: True})]
TokenIds = Annotated[list[TokenId], Field(min_length=1, json_schema_extra={TOKEN_LIST: True})]

# Fields of OpenAI's API that shoshin accepts only as absent or null: anything else is a 400
# naming the field (README: "Fields shoshin does not support"), never silently ignored.
UNSUPPORTED: dict[str, str] = {
    "functions": "OpenAI's deprecated form of tools; send tools",
    "function_call": "OpenAI's deprecated form of tool_choice; send tool_choice",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "this is not a reasoning model",
    "verbosity": "verbosity is not supported",
    "suffix": "insertion (text after the completion) is not supported",
    "best_of": "best_of is not supported; use n and pick yourself",
    "previous_response_id": "responses are not stored; send the conversation as input",
    "conversation": "responses are not stored; send the conversation as input",
    "reasoning": "this is not a reasoning model",
    "background": "background responses are not supported",
    "prompt": "stored prompt templates are not supported",
    "include": "extra output (include) is not supported",
    "tools": "tool calls are served on /v1/chat/completions",
    "tool_choice": "tool calls are served on /v1/chat/completions",
    "max_tool_calls": "tool calls are served on /v1/chat/completions",
}
CHAT_UNSUPPORTED = [
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "verbosity",
]
COMPLETION_UNSUPPORTED = ["suffix", "best_of"]
RESPONSES_UNSUPPORTED = [
    "previous_response_id",
    "conversation",
    "tools",
    "tool_choice",
    "reasoning",
    "background",
    "prompt",
    "include",
    "max_tool_calls",
]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Request(Lenient):
    """A request body: an explicit null means the field's default, for every field whose type
    admits null (in /openapi.json too), as OpenAI declares its optional fields nullable."""

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nullable = _nullable(cls)
            return {k: v for k, v in data.items() if v is not None or k not in nullable}
        return data


@functools.cache
def _nullable(cls: type[BaseModel]) -> frozenset[str]:
    """The names (as sent) of the fields of `cls` that have a default and admit null."""
    names = set()
    for name, f in cls.model_fields.items():
        if not f.is_required() and (
            f.annotation is None or type(None) in typing.get_args(f.annotation)
        ):
            names.add(f.alias or name)
    return frozenset(names)


def unsupported_fields(names: list[str]) -> dict[str, Any]:
    """Request fields that may only be absent or null, each saying why in the schema."""
    return {
        name: (
            None,
            Field(None, description=f"not supported by shoshin ({UNSUPPORTED[name]}): send null"),
        )
        for name in names
    }


def reject_unsupported(cls, value: Any, info) -> Any:
    if value is not None:
        raise PydanticCustomError(
            "unsupported",
            "not supported by shoshin: {why}; leave it out or send null",
            {"why": UNSUPPORTED[info.field_name]},
        )
    return value


# Where OpenAI's wire form of a declared option differs from shoshin's value: other bounds (the
# wire's extra values are translated in `translate.sampling_params`), another default, a note.
WIRE_FORMS: dict[str, dict[str, Any]] = {
    "top_p": {"bounds": {"minimum": 0.0, "maximum": 1.0}, "default": 1.0, "note": "0 is greedy"},
    "top_k": {"bounds": {"minimum": -1}, "note": "0 and -1 mean off (vLLM)"},
    "seed": {"bounds": {}, "note": "any integer, taken modulo 2^64"},
}
# Request fields copied by name into SamplingParams: the options the CLI offers too.
SAMPLING_FIELDS = [
    f.name for f in fields(SamplingParams) if f.metadata["cli"] and f.name != "max_new_tokens"
]


def _sampling_field(name: str, hint: Any, declared: Any) -> tuple[Any, Any]:
    """A request field for the declared sampling option `name`: its type, default, bounds and
    description from SamplingParams, in the wire form (`WIRE_FORMS`); nullable, as OpenAI's are."""
    meta = SamplingParams.__dataclass_fields__[name].metadata
    wire = WIRE_FORMS.get(name, {})
    limits = wire.get("bounds", bounds(name))
    constraint = {
        "ge": limits.get("minimum"),
        "le": limits.get("maximum"),
        "gt": limits.get("exclusive_minimum"),
    }
    constraint = {k: v for k, v in constraint.items() if v is not None}
    extra = {"x-shoshin-setting": True} if name in settings() else None
    description = meta["help"] + (f"; {wire['note']}" if "note" in wire else "")
    if typing.get_origin(hint) is Mapping:  # logit_bias: JSON object keys are strings of token ids
        return _token_map(constraint), Field(
            None, description=f"{description}; keys are token ids", json_schema_extra=extra
        )
    kind = next(k for k in typing.get_args(hint) or (hint,) if k is not type(None))
    default = wire.get("default", declared)
    if kind is int:  # bounds inside the type, see Int
        return Int(**constraint) | None, Field(
            default, description=description, json_schema_extra=extra
        )
    wire_kind = {float: Float, bool: Bool}.get(kind, kind)
    return wire_kind | None, Field(
        default, description=description, json_schema_extra=extra, **constraint
    )


def _token_map(constraint: dict[str, float]) -> Any:
    """A JSON object from token ids (as decimal strings) to bounded numbers; the app narrows the
    key pattern to its vocabulary."""
    pattern = r"^(0|[1-9][0-9]*)$"
    key = Annotated[str, Field(pattern=pattern)]
    value = Annotated[Float, Field(**constraint)]
    names = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum"}
    bound = {names[k]: v for k, v in constraint.items()}
    schema = {
        "type": "object",
        "patternProperties": {pattern: {"type": "number", **bound}},
        "additionalProperties": False,
        TOKEN_KEYS: True,
    }
    return Annotated[dict[key, value], WithJsonSchema(schema)] | None


def sampling_fields(names: list[str] = SAMPLING_FIELDS) -> dict[str, Any]:
    """Request fields (for `create_model`) of the declared sampling options `names`."""
    hints = typing.get_type_hints(SamplingParams)
    server = surface_defaults("server")
    return {name: _sampling_field(name, hints[name], getattr(server, name)) for name in names}
