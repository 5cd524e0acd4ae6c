"""Structured output and tool calls through the real `openai` client against a real server on
loopback, from an untrained model: every reply that finishes parses and validates because the
decode loop allows nothing else."""

from __future__ import annotations

import json
import sys
import threading
from typing import Literal

import httpx
import jsonschema_rs
import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from serving_tiny import one_torch_thread  # noqa: F401
from test_constraints import SCHEMAS, tokenizer

from shoshin.config import ModelConfig
from shoshin.models import build_model
from shoshin.serving import ServeConfig, background_server, create_app

pytest.importorskip("llguidance")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "today's weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": None}}


class Forecast(BaseModel):
    city: Literal["Paris", "Oslo"]
    temperature: int = Field(ge=-40, le=45)
    sunny: bool
    note: str = Field(max_length=4)


def untrained_app(**config):
    torch.manual_seed(0)
    tok = tokenizer("bpe")
    model_config = ModelConfig(
        arch="gpt", n_layer=1, n_head=2, n_embd=32, block_size=1024, vocab_size=tok.vocab_size
    )
    model = build_model(model_config).eval()
    return create_app(model, tok, "untrained", ServeConfig(max_tokens=200, **config))


@pytest.fixture(scope="module")
def server():
    with background_server(untrained_app()) as url:
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_parse_returns_a_pydantic_object_from_an_untrained_model(server):
    client = _client(server)
    for seed in range(3):
        completion = client.chat.completions.parse(
            model="untrained", messages=ASK, response_format=Forecast, seed=seed, max_tokens=200
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Forecast)


def test_forced_tool_call_arguments_validate(server):
    client = _client(server)
    for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        completion = client.chat.completions.create(
            model="untrained",
            messages=ASK,
            tools=[WEATHER, CLOCK],
            tool_choice=tool_choice,
            parallel_tool_calls=False,
            seed=1,
            max_tokens=200,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.id and call.type == "function"
        if call.function.name == "get_weather":
            arguments = json.loads(call.function.arguments)
            assert jsonschema_rs.is_valid(WEATHER["function"]["parameters"], arguments)
        else:
            assert tool_choice == "required" and call.function.name == "get_time"
            assert json.loads(call.function.arguments) == {}


def test_streamed_tool_calls_arrive_as_deltas(server):
    stream = _client(server).chat.completions.create(
        model="untrained",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        n=2,
        seed=3,
        max_tokens=200,
        stream=True,
    )
    calls: dict[int, dict[int, dict]] = {0: {}, 1: {}}
    finish = {}
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls[choice.index].setdefault(delta.index, {"arguments": ""})
                if delta.function.name:
                    call["name"] = delta.function.name
                call["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    for index in (0, 1):
        assert finish[index] in ("tool_calls", "length")
        if finish[index] == "tool_calls":
            for call in calls[index].values():
                assert call["name"] == "get_weather"
                schema = WEATHER["function"]["parameters"]
                assert jsonschema_rs.is_valid(schema, json.loads(call["arguments"]))


def test_two_step_tool_loop(server):
    client = _client(server)
    first = client.chat.completions.create(
        model="untrained", messages=ASK, tools=[WEATHER], tool_choice="required", seed=4
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    messages = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": '{"temp": 21}'},
    ]
    second = client.chat.completions.create(
        model="untrained", messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=5
    )
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result are in it


def test_json_object_streamed_beside_free_requests(server):
    client = _client(server)
    free: list[str] = []

    def unconstrained(i: int) -> None:
        reply = client.chat.completions.create(
            model="untrained", messages=ASK, max_tokens=20, seed=i
        )
        free.append(reply.choices[0].finish_reason)

    threads = [threading.Thread(target=unconstrained, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    texts = {0: "", 1: ""}
    finish = {}
    for chunk in client.chat.completions.create(
        model="untrained",
        messages=ASK,
        response_format={"type": "json_object"},
        n=2,
        seed=5,
        max_tokens=200,
        stream=True,
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
    for t in threads:
        t.join()
    assert len(free) == 3
    for index, text in texts.items():
        if finish[index] == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert finish[index] == "length"


def test_unenforceable_requests_are_400s_naming_the_problem(server):
    def post(**body):
        return httpx.post(
            f"{server}/v1/chat/completions", json={"messages": ASK, **body}, timeout=60
        )

    schema = {"name": "x", "schema": {"not": {"type": "integer"}}}
    r = post(response_format={"type": "json_schema", "json_schema": schema})
    assert r.status_code == 400 and "not" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "response_format"
    r = post(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
    r = post(tool_choice="required")
    assert r.status_code == 400 and "tools" in r.json()["error"]["message"]
    assert post(max_tokens=2).status_code == 200  # and the server goes on serving


def test_a_server_without_the_extra_says_which_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # as if it were not installed
    with background_server(untrained_app()) as url:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": ASK, "response_format": {"type": "json_object"}},
            timeout=60,
        )
        assert r.status_code == 400 and "shoshin[structured]" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
        assert r.status_code == 200


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS, seed=st.integers(0, 2**31), stream=st.booleans())
def test_every_served_reply_validates(server, schema, seed, stream):
    body = {
        "messages": ASK,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        "n": 2,
        "seed": seed,
        "max_tokens": 80,
        "stream": stream,
    }
    texts, finish = {0: "", 1: ""}, {}
    free = threading.Thread(  # an unconstrained request decoding in the same batch
        target=httpx.post,
        args=(f"{server}/v1/chat/completions",),
        kwargs={"json": {"messages": ASK, "max_tokens": 40, "seed": seed}, "timeout": 120},
    )
    free.start()
    if stream:
        with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        texts[choice["index"]] += choice["delta"].get("content", "")
                        finish[choice["index"]] = choice["finish_reason"] or finish.get(
                            choice["index"]
                        )
    else:
        reply = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120).json()
        for choice in reply["choices"]:
            texts[choice["index"]] = choice["message"]["content"]
            finish[choice["index"]] = choice["finish_reason"]
    free.join()
    for index in (0, 1):
        if finish[index] == "stop":
            assert jsonschema_rs.is_valid(schema, json.loads(texts[index])), texts[index]
        else:
            assert finish[index] == "length"


def test_auto_tool_choice_replies_are_text_or_valid_calls(server):
    client = _client(server)
    for seed in range(4):
        completion = client.chat.completions.create(
            model="untrained", messages=ASK, tools=[WEATHER], seed=seed, max_tokens=60
        )
        choice = completion.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                schema = WEATHER["function"]["parameters"]
                assert jsonschema_rs.is_valid(schema, json.loads(call.function.arguments))
        else:  # free text never begins a call it does not finish
            assert choice.finish_reason in ("stop", "length")
            content = choice.message.content or ""
            assert not content.startswith("<tool_call>") or choice.finish_reason == "length"


def test_responses_parse_with_text_format(server):
    client = _client(server)
    for stream in (False, True):
        if stream:
            with client.responses.stream(
                model="untrained", input="Weather?", text_format=Forecast, max_output_tokens=200
            ) as events:
                for _ in events:
                    pass
                response = events.get_final_response()
        else:
            response = client.responses.parse(
                model="untrained", input="Weather?", text_format=Forecast, max_output_tokens=200
            )
        assert response.status == "completed"
        assert isinstance(response.output_parsed, Forecast)
    r = httpx.post(
        f"{server}/v1/responses",
        json={
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"not": {}}}},
        },
        timeout=60,
    )
    assert r.status_code == 400 and "not" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "text.format"
    anything = {"type": "json_schema", "name": "x", "schema": {}}  # any JSON value
    body = {"input": "hi", "max_output_tokens": 30, "text": {"format": anything}}
    assert httpx.post(f"{server}/v1/responses", json=body, timeout=60).status_code == 200
