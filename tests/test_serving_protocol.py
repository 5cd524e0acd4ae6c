"""The OpenAI protocol's edges on a real server: /v1/responses (plain and streamed, through the same
decode core as chat), explicit nulls, bodies whatever their Content-Type, HEAD, Allow, CORS,
unsupported fields, and an OpenAPI document that states the bounds the server enforces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest
from serving_tiny import one_torch_thread, sharp_chat_model  # noqa: F401

from shoshin.generation.params import SamplingParams, bounds, settings
from shoshin.serving import ServeConfig, background_server, create_app
from shoshin.serving.openapi import range_pattern
from shoshin.serving.wire import (
    CHAT_UNSUPPORTED,
    COMPLETION_UNSUPPORTED,
    RESPONSES_UNSUPPORTED,
    UNSUPPORTED,
)

ORIGIN = "https://app.example"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sharp():
    model, tok = sharp_chat_model()
    config = ServeConfig(max_tokens=24, cors_origins=(ORIGIN,))
    with background_server(create_app(model, tok, "sharp", config)) as url:
        yield url, tok


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _greedy_chat(url: str, messages: list[dict], max_tokens: int = 24):
    return _client(url).chat.completions.create(
        model="sharp", messages=messages, max_tokens=max_tokens, temperature=0
    )


def test_responses_plain_and_streamed_equal_the_chat_reply(sharp):
    url, _ = sharp
    client = _client(url)
    chat = _greedy_chat(url, [{"role": "system", "content": "be brief"}, *HI])
    plain = client.responses.create(
        model="sharp", input="hi", instructions="be brief", temperature=0, max_output_tokens=24
    )
    assert plain.output_text == chat.choices[0].message.content
    assert plain.usage.input_tokens == chat.usage.prompt_tokens
    assert plain.usage.output_tokens == chat.usage.completion_tokens
    assert plain.status == (
        "incomplete" if chat.choices[0].finish_reason == "length" else "completed"
    )

    events = list(
        client.responses.create(
            model="sharp",
            input=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            temperature=0,
            max_output_tokens=24,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{plain.status}",
    ]
    assert set(kinds[4:-4]) <= {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == plain.output_text == events[-4].text
    assert events[-1].response.output_text == plain.output_text


def test_responses_max_output_tokens_makes_it_incomplete(sharp):
    url, _ = sharp
    reply = _client(url).responses.create(
        model="sharp", input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        temperature=0, max_output_tokens=1,
    )  # fmt: skip
    chat = _greedy_chat(url, HI, max_tokens=1)
    if chat.choices[0].finish_reason == "length":
        assert reply.status == "incomplete"
        assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 1


def test_explicit_null_means_the_default(sharp):
    url, _ = sharp
    nulls = dict.fromkeys(
        [
            "temperature", "top_p", "n", "stream", "stop", "presence_penalty",
            "frequency_penalty", "logprobs", "top_logprobs", "max_tokens", "logit_bias",
            "stream_options", "max_completion_tokens", "response_format", "tools",
            "tool_choice", "user", "top_k", "min_p", "repetition_penalty",
        ]
    )  # fmt: skip
    seeded = {"messages": HI, "seed": 3, "max_tokens": 8}
    with_nulls = httpx.post(f"{url}/v1/chat/completions", json={**nulls, **seeded}, timeout=60)
    assert with_nulls.status_code == 200, with_nulls.text
    without = httpx.post(f"{url}/v1/chat/completions", json=seeded, timeout=60)
    assert with_nulls.json()["choices"] == without.json()["choices"]
    legacy = {"prompt": "hi", "seed": 5, "max_tokens": 6}
    nulls = {"echo": None, "suffix": None, "best_of": None, "logprobs": None, "n": None}
    a = httpx.post(f"{url}/v1/completions", json={**legacy, **nulls}, timeout=60)
    b = httpx.post(f"{url}/v1/completions", json=legacy, timeout=60)
    assert a.status_code == 200, a.text
    assert a.json()["choices"] == b.json()["choices"]
    resp = httpx.post(f"{url}/v1/responses", json={"input": "hi", "temperature": None}, timeout=60)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/json"]
)
def test_a_json_body_is_json_whatever_its_content_type(sharp, content_type):
    url, _ = sharp
    body = json.dumps({"messages": HI, "max_tokens": 6, "temperature": 0})
    headers = {"content-type": content_type} if content_type else {}
    got = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=60)
    assert got.status_code == 200, got.text
    assert got.json()["choices"][0]["message"]["content"] == (
        _greedy_chat(url, HI, max_tokens=6).choices[0].message.content
    )
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"messages=hi", headers=headers)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]


def test_head_wherever_get_works_and_allow_on_405(sharp):
    url, _ = sharp
    for path in ["/", "/health", "/v1/models", "/tokenizer_info", "/openapi.json"]:
        get, head = httpx.get(f"{url}{path}"), httpx.head(f"{url}{path}")
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    wrong = httpx.get(f"{url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    wrong = httpx.post(f"{url}/health", json={})
    assert wrong.status_code == 405 and set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_cors_only_for_the_origins_given(sharp):
    url, tok = sharp
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    got = httpx.options(f"{url}/v1/chat/completions", headers=preflight)
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == ORIGIN
    got = httpx.get(f"{url}/v1/models", headers={"origin": ORIGIN})
    assert got.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{url}/v1/models", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    model, _ = sharp_chat_model()
    with background_server(create_app(model, tok, "sharp", ServeConfig(max_tokens=4))) as plain:
        got = httpx.get(f"{plain}/v1/models", headers={"origin": ORIGIN})
        assert "access-control-allow-origin" not in got.headers  # off by default


def _endpoint_bodies():
    chat = {"messages": HI, "max_tokens": 2}
    yield from (("/v1/chat/completions", chat, name) for name in CHAT_UNSUPPORTED)
    completion = {"prompt": "hi", "max_tokens": 2}
    yield from (("/v1/completions", completion, name) for name in COMPLETION_UNSUPPORTED)
    yield from (("/v1/responses", {"input": "hi"}, name) for name in RESPONSES_UNSUPPORTED)


def test_every_unsupported_field_is_listed_in_the_readme_and_refused_somewhere():
    lists = [*CHAT_UNSUPPORTED, *COMPLETION_UNSUPPORTED, *RESPONSES_UNSUPPORTED]
    assert set(lists) == set(UNSUPPORTED)
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    table = readme[readme.index("| fields shoshin does not support") :].split("\n\n")[0]
    assert [name for name in UNSUPPORTED if f"`{name}`" not in table] == []


@pytest.mark.parametrize("path,body,name", list(_endpoint_bodies()))
def test_unsupported_fields_are_a_400_naming_them(sharp, path, body, name):
    url, _ = sharp
    got = httpx.post(f"{url}{path}", json={**body, name: "x"}, timeout=60)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["param"] == name and "not supported" in error["message"]


def test_responses_text_format_constrains_the_reply():
    pytest.importorskip("llguidance")
    from test_structured_serving import untrained_app

    schema = {
        "type": "object",
        "properties": {
            "city": {"enum": ["Paris", "Oslo"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "trip", "schema": schema, "strict": True}
    with background_server(untrained_app()) as url:
        client = _client(url)
        plain = client.responses.create(input="where?", text={"format": fmt}, max_output_tokens=60)
        events = list(
            client.responses.create(
                input="where?", text={"format": fmt}, max_output_tokens=60, stream=True
            )
        )
        for reply in (plain, events[-1].response):
            assert reply.status == "completed", reply
            value = json.loads(reply.output_text)
            assert set(value) == {"city", "days"} and value["city"] in ("Paris", "Oslo")
            assert isinstance(value["days"], int)
        loose = client.responses.create(
            input="x", text={"format": {"type": "json_object"}}, max_output_tokens=60
        )
        assert loose.status != "completed" or isinstance(json.loads(loose.output_text), dict)
        bad = {"type": "json_schema", "name": "x", "schema": {"not": {"type": "string"}}}
        got = httpx.post(f"{url}/v1/responses", json={"input": "x", "text": {"format": bad}})
        assert got.status_code == 400 and got.json()["error"]["param"] == "text.format"


def test_openapi_states_the_bounds_the_server_enforces(sharp):
    url, tok = sharp
    schemas = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]
    last = tok.vocab_size - 1
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert {"type": "integer", "minimum": 0, "maximum": last} in [
        {k: v for k, v in p["items"].items() if k in ("type", "minimum", "maximum")}
        for p in prompt
        if p.get("type") == "array" and p["items"].get("type") == "integer"
    ]
    tokens = schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]
    assert (tokens["minimum"], tokens["maximum"]) == (0, last)
    bias = schemas["ChatCompletionRequest"]["properties"]["logit_bias"]["anyOf"][0]
    (pattern,) = bias["patternProperties"]
    assert bias["additionalProperties"] is False
    assert re.match(pattern, str(last)) and not re.match(pattern, str(last + 1))
    rule = schemas["TokenizeRequest"]["oneOf"]
    assert [r["required"] for r in rule] == [["prompt"], ["messages"]]
    # The sampling fields come from SamplingParams: its bounds, its descriptions, its settings.
    chat = schemas["ChatCompletionRequest"]["properties"]
    for name in settings():
        prop = chat[name]
        assert prop["x-shoshin-setting"] is True
        help = SamplingParams.__dataclass_fields__[name].metadata["help"]
        assert prop["description"].startswith(help)
    temperature = chat["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (
        bounds("temperature")["minimum"],
        bounds("temperature")["maximum"],
    )


def test_range_pattern_matches_exactly_the_token_ids():
    for last in [*range(0, 120), 999, 1000, 1001, 50256, 151935]:
        pattern = re.compile(range_pattern(last))
        for x in {*range(0, min(last, 300) + 30), last, last + 1, last + 10, 10 * last + 1}:
            assert bool(pattern.match(str(x))) == (x <= last), (last, x)
            assert not pattern.match(f"0{x}")
