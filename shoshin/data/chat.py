"""Chat rendering: each message becomes `<|role|>content<|end|>`, built from token ids directly.

Role markers are special tokens, so a message's text can never be mistaken for a role change.
The mask marks the tokens an assistant-only loss trains on: the assistant's words and its `<|end|>`.

Tool calls are text inside those turns, so a model learns them from a fine-tuning corpus like any
other reply (`plain_messages` turns OpenAI's messages into this format; the server, the training
data and the exported chat template all use it):

- the functions on offer follow the system message: a `# Tools` section with one JSON object per
  function (`{"name": ..., "description": ..., "parameters": {JSON Schema}}`, one per line);
- an assistant's calls follow its text (if any), one per line:
  `<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>`;
- a tool's result is a user turn: `<tool_response>{"temp": 21}</tool_response>`.

JSON is written as Python's `json.dumps` writes it (`", "` and `": "`), which is also what
transformers' `tojson` writes in the exported template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from shoshin.data.tokenizers import ASSISTANT, END, EOT, SYSTEM, USER, Tokenizer

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_HEADER = (
    f'# Tools (to call one: {CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{CALL_CLOSE})\n'
)
_CALL = re.compile(re.escape(CALL_OPEN) + "(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


def is_chat_tokenizer(tokenizer: Tokenizer) -> bool:
    """True when the tokenizer has the chat role tokens (the run was trained on chat data)."""
    return all(t in tokenizer.special_tokens for t in (USER, ASSISTANT, END))


def render_chat(
    tokenizer: Tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask of the assistant's tokens.

    With add_generation_prompt, the ids end with `<|assistant|>` so the model continues as the assistant.
    """
    special = tokenizer.special_tokens
    ids: list[int] = []
    mask: list[int] = []
    for message in messages:
        content = tokenizer.encode(message["content"])
        is_assistant = int(message["role"] == "assistant")
        ids += [special[ROLE_TOKENS[message["role"]]], *content, special[END]]
        mask += [0] + [is_assistant] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(0)
    return ids, mask


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that end a reply: `<|end|>`, `<|endoftext|>`, and every role token the tokenizer has (a
    model that emits one has begun another turn; it is never part of the reply's text)."""
    names = (END, EOT, *ROLE_TOKENS.values())
    return [tokenizer.special_tokens[t] for t in names if t in tokenizer.special_tokens]


def tools_text(tools: Sequence[dict]) -> str:
    """The `# Tools` section offering OpenAI-format tools ({"type": "function", "function": ...})."""
    lines = [json.dumps(t.get("function", t), ensure_ascii=False) for t in tools]
    return TOOLS_HEADER + "".join(line + "\n" for line in lines)


def tool_call_text(name: str, arguments: str | dict) -> str:
    """One call as the assistant writes it; `arguments` is a JSON object or its text (kept as is)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f'{CALL_OPEN}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}{CALL_CLOSE}'


def plain_messages(messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[dict]:
    """OpenAI-format messages (assistant `tool_calls`, `tool` results, null content) and tools as
    system / user / assistant messages whose content is text in the format above."""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            out.append({"role": "user", "content": RESULT_OPEN + content + RESULT_CLOSE})
        elif role == "assistant" and m.get("tool_calls"):
            calls = [
                tool_call_text(c["function"]["name"], c["function"]["arguments"])
                for c in m["tool_calls"]
            ]
            out.append(
                {"role": role, "content": "\n".join([content, *calls] if content else calls)}
            )
        else:
            out.append({**m, "role": role, "content": content})
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + tools_text(tools)}
        else:
            out.insert(0, {"role": "system", "content": tools_text(tools)})
    return out


def parse_tool_calls(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments as JSON text)]) of an assistant reply in the format above.

    Only well-formed calls count (a JSON object with a string "name" and an object "arguments");
    the content is the text before the first call.
    """
    calls = []
    for match in _CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            arguments = call.get("arguments", {})
            if isinstance(arguments, dict):
                calls.append((call["name"], json.dumps(arguments, ensure_ascii=False)))
    content = text.split(CALL_OPEN, 1)[0].rstrip("\n") if calls else text
    return content, calls
