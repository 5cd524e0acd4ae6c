"""The tool-call chat format: one text format in training data, the server and the exported
template (transformers renders exactly what shoshin renders)."""

from __future__ import annotations

import json

import pytest

from shoshin.data.chat import parse_tool_calls, plain_messages, tool_call_text
from shoshin.data.sources import load_corpus
from shoshin.errors import ShoshinError
from shoshin.interop.export import CHAT_TEMPLATE

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Wetter «heute»",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
LOOP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 degrees."},
]
CONVERSATIONS = [
    (LOOP, TOOLS),
    (LOOP[1:], TOOLS),
    (
        [LOOP[1], {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, CALL]}],
        TOOLS,
    ),
    (LOOP[:2], None),
]


def _shoshin_text(messages, tools) -> str:
    plain = plain_messages(messages, tools)
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in plain) + "<|assistant|>"


@pytest.mark.parametrize("messages,tools", CONVERSATIONS)
def test_exported_template_renders_what_shoshin_renders(messages, tools):
    compile_template = pytest.importorskip(
        "transformers.utils.chat_template_utils"
    )._compile_jinja_template
    text = compile_template(CHAT_TEMPLATE).render(
        messages=messages, tools=tools, add_generation_prompt=True
    )
    assert text == _shoshin_text(messages, tools)


def test_format_round_trips():
    plain = plain_messages(LOOP, TOOLS)
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user", "assistant"]
    assert '"name": "get_weather"' in plain[0]["content"] and "Be brief." in plain[0]["content"]
    assert plain[2]["content"] == tool_call_text("get_weather", {"city": "Paris"})
    assert plain[3]["content"] == '<tool_response>{"temp": 21}</tool_response>'
    content, calls = parse_tool_calls("Sure.\n" + plain[2]["content"] + "\n" + plain[2]["content"])
    assert content == "Sure." and calls == [("get_weather", '{"city": "Paris"}')] * 2
    assert parse_tool_calls("<tool_call>{broken</tool_call>") == (
        "<tool_call>{broken</tool_call>",
        [],
    )


def test_training_data_carries_tool_calls(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": LOOP, "tools": TOOLS}) + "\n", encoding="utf-8")
    (conversation,) = load_corpus(str(path)).documents
    assert conversation == plain_messages(LOOP, TOOLS)
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": None, "tool_calls": [CALL]}]})
    )
    with pytest.raises(ShoshinError, match="tool_calls belong to assistant"):
        load_corpus(str(path))
