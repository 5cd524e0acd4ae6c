"""Grammar-constrained decoding in the one decode loop: untrained models, real tokenizers, and
replies that must parse and validate however the model's weights fall."""

from __future__ import annotations

import functools
import json

import jsonschema_rs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoshin.config import ModelConfig
from shoshin.data.tokenizers import CHAT_TOKENS, END, EOT, BpeTokenizer, CharTokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.constraints import Constraints, json_schema_grammar
from shoshin.generation.engine import Engine
from shoshin.generation.sampling import SamplingParams, naive_generate
from shoshin.models import build_model

pytest.importorskip("llguidance")

TEXT = [
    '{"name": "ada", "age": 36, "tags": ["x", "y"], "ok": true, "n": null, "f": -1.5e3}',
    "hello there, how are you? the quick brown fox jumps over the lazy dog 0123456789",
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "tag": {"enum": ["a", "b", "c"]},
    },
    "required": ["name", "age", "ok", "tag"],
    "additionalProperties": False,
}


@functools.cache
def tokenizer(kind: str):
    if kind == "char":
        return CharTokenizer.train(TEXT, [EOT, *CHAT_TOKENS])
    return BpeTokenizer.train(TEXT * 20, 400, [EOT, *CHAT_TOKENS])


@functools.cache
def setup(kind: str = "bpe", arch: str = "gpt"):
    """(engine, tokenizer, constraints) around an untrained model of that vocabulary."""
    torch.manual_seed(0)
    tok = tokenizer(kind)
    config = ModelConfig(
        arch=arch, n_layer=1, n_head=2, n_embd=32, block_size=256, vocab_size=tok.vocab_size
    )
    constraints = Constraints(tok)
    return Engine(build_model(config).eval(), constraints=constraints), tok, constraints


def params(tok, schema, **kw) -> SamplingParams:
    return SamplingParams(
        grammar=json_schema_grammar(schema),
        stop_ids=(tok.special_tokens[END],),
        **{"max_new_tokens": 200, **kw},
    )


def check_reply(tok, generation, schema) -> None:
    """A reply that finished ("stop") parses and validates; one cut short ran out of tokens."""
    tokens = [t for t in generation.tokens if t not in generation.params.stop_ids]
    if generation.finish_reason == "length":
        assert len(generation.tokens) == generation.params.max_new_tokens
        return
    assert generation.finish_reason == "stop"
    value = json.loads(tok.decode(tokens))
    assert jsonschema_rs.is_valid(schema, value), (schema, value)


@pytest.mark.parametrize("kind,arch", [("bpe", "gpt"), ("char", "gpt"), ("bpe", "lstm")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_untrained_model_replies_validate(kind, arch, temperature):
    engine, tok, _ = setup(kind, arch)
    prompt = tok.encode("hello")
    gens = [
        engine.generation(prompt, params(tok, PERSON, seed=s, temperature=temperature))
        for s in range(3)
    ]
    for _ in engine.run(gens):
        pass
    for g in gens:
        check_reply(tok, g, PERSON)
    assert any(g.finish_reason == "stop" for g in gens)  # the bounded schema always closes


def test_engine_matches_naive_reference_under_a_grammar():
    engine, tok, constraints = setup("bpe")
    prompt = tok.encode("the quick")
    for p in (params(tok, PERSON, temperature=0.0), params(tok, PERSON, seed=7, top_k=20)):
        fast = engine.generate(prompt, p)
        slow = naive_generate(engine.model, prompt, p, constraints=constraints)
        assert fast == slow


def test_constrained_rows_share_a_batch_with_free_ones():
    engine, tok, _ = setup("bpe")
    free = SamplingParams(max_new_tokens=30, seed=1)
    alone = engine.generate(tok.encode("hello"), free)
    batch = engine.generate_batch(
        [tok.encode("hello"), tok.encode("the"), tok.encode("hello")],
        [free, params(tok, PERSON, seed=2, frequency_penalty=1.0, logprobs=2), free],
    )
    assert batch[0] == alone == batch[2]  # the constraint touched no other row


def test_length_before_the_grammar_closes_says_length():
    engine, tok, _ = setup("bpe")
    g = engine.complete(tok.encode("hi"), params(tok, {"type": "array"}, max_new_tokens=3, seed=0))
    assert g.finish_reason == "length" and len(g.tokens) == 3
    assert tok.decode(g.tokens).startswith("[")


SUPPORTED = [  # the subset the README promises
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]},
    {"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 1, "maxItems": 2},
    {"oneOf": [{"type": "integer"}, {"const": "x"}]},
    {
        "$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n",
    },
    {"type": "object", "patternProperties": {"^a": {"type": "integer"}}, "minProperties": 1},
    {"type": "string", "format": "email", "title": "t", "description": "d", "default": "x"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "pattern": "^[a-z]+$", "minLength": 1, "maxLength": 3},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5, "multipleOf": 0.5},
]


@pytest.mark.parametrize("schema", SUPPORTED)
def test_the_documented_subset_compiles(schema):
    _, _, constraints = setup("bpe")
    constraints.compile(json_schema_grammar(schema))


@pytest.mark.parametrize(
    "schema,named",
    [
        ({"not": {"type": "integer"}}, '"not"'),
        ({"if": {"type": "integer"}, "then": {"minimum": 1}}, '"if", "then"'),
        ({"type": "array", "uniqueItems": True}, '"uniqueItems"'),
    ],
)
def test_unsupported_keywords_are_named(schema, named):
    engine, tok, _ = setup("bpe")
    with pytest.raises(ShoshinError, match=f"unsupported JSON Schema keywords.*{named}"):
        engine.generation(tok.encode("hi"), params(tok, schema))


def test_a_grammar_without_a_vocabulary_is_an_error():
    engine, tok, _ = setup("bpe")
    with pytest.raises(ShoshinError, match="vocabulary"):
        Engine(engine.model).generation(tok.encode("hi"), params(tok, PERSON))


# -- property test: random schemas in the supported subset x random seeds --------------------

LEAVES = st.one_of(
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 100),
    ),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 5)),
    st.builds(
        lambda vals: {"enum": vals},
        st.lists(st.sampled_from(["a", "bb", 1, 2.5, True, None]), min_size=1, unique=True),
    ),
    st.just({"type": "string", "pattern": "^[a-c]{1,3}$"}),
)


def _object(props: dict) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": sorted(props),
        "additionalProperties": False,
    }


SCHEMAS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "k", "name"]), inner, max_size=3).map(_object),
        st.builds(
            lambda item, n: {"type": "array", "items": item, "maxItems": n},
            inner,
            st.integers(0, 3),
        ),
        st.lists(inner, min_size=2, max_size=2).map(lambda xs: {"anyOf": xs}),
    ),
    max_leaves=5,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, seed=st.integers(0, 2**31), kind=st.sampled_from(["bpe", "char"]))
def test_every_reply_validates(schema, seed, kind):
    engine, tok, _ = setup(kind)
    prompt = tok.encode("hello")
    constrained = params(tok, schema, seed=seed, max_new_tokens=80)
    gens = [
        engine.generation(prompt, constrained),
        engine.generation(prompt, SamplingParams(max_new_tokens=10, seed=seed)),
        engine.generation(prompt, params(tok, schema, seed=seed + 1, max_new_tokens=80)),
    ]
    for _ in engine.run(gens):
        pass
    check_reply(tok, gens[0], schema)
    check_reply(tok, gens[2], schema)
