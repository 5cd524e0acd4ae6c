"""Structured output and tool calls of a chat request: `response_format`, `tools`, `tool_choice`.

A request becomes a `Structured`: the grammar its replies are generated under (see
shoshin.generation.constraints: the engine masks every token the grammar does not allow, so a
reply that finishes always parses and validates) and the tools its prompt offers. Replies come back
as OpenAI messages: text in the tool-call format (shoshin.data.chat) becomes `tool_calls`, whole or
streamed as deltas, and a reply that called a tool finishes with "tool_calls".
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from shoshin.data.chat import CALL_OPEN, parse_tool_calls
from shoshin.errors import ShoshinError
from shoshin.generation.constraints import (
    ANY_JSON_OBJECT,
    Constraints,
    json_schema_grammar,
    tool_call_grammar,
)
from shoshin.serving.errors import APIError
from shoshin.serving.schemas import ChatCompletionRequest, FunctionCall, ToolCall

NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
_BUILD = threading.Lock()


@dataclass
class Structured:
    """What a chat request asks of its replies' shape."""

    grammar: str | None = None  # the replies' grammar (None: free text)
    tools: list[dict] | None = None  # OpenAI tools offered in the prompt
    calls: bool = False  # replies may hold tool calls: parse them into tool_calls
    streams: dict[int, CallStream] = field(default_factory=dict)  # per choice, when streamed


def format_schema(kind: str | None, schema: dict | None, param: str) -> dict | None:
    """The JSON Schema a reply must match for an output format (chat's `response_format`, the
    Responses API's `text.format`): None for text, any object for json_object."""
    if kind == "json_object":
        return ANY_JSON_OBJECT
    if kind == "json_schema":
        if schema is None:
            raise APIError(400, "a json_schema format needs its schema", param=param)
        return schema
    return None


def checked(server, grammar: str | None, param: str) -> str | None:
    """`grammar`, compiled once against the served vocabulary: a 400 naming `param` when it
    cannot be enforced (an unsupported schema keyword, say)."""
    if grammar is not None:
        try:
            constraints(server).compile(grammar)
        except ShoshinError as exc:
            raise APIError(400, f"{param}: {exc}", param=param) from None
    return grammar


def structured_output(server, body: ChatCompletionRequest) -> Structured:
    """The chat request's Structured; a 400 for an unknown tool, a schema shoshin cannot enforce,
    or a server without the `structured` extra."""
    fmt = body.response_format
    answer = None
    if fmt is not None:
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else None
        answer = format_schema(fmt.type, schema, "response_format")
    choice = body.tool_choice or "auto"
    if not body.tools:  # auto with nothing to call is plain text
        if choice not in ("auto", "none"):
            raise APIError(400, "tool_choice needs tools to choose from", param="tool_choice")
        choice = "none"
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    if choice == "none":
        grammar = None if answer is None else json_schema_grammar(answer)
        return Structured(checked(server, grammar, "response_format"), tools)
    functions = [(t.function.name, t.function.parameters or NO_ARGUMENTS) for t in body.tools]
    if not isinstance(choice, str):  # a named function
        functions = [f for f in functions if f[0] == choice.function.name]
        if not functions:
            raise APIError(
                400,
                f"tool_choice names {choice.function.name!r}, which is not among the tools",
                param="tool_choice",
            )
    free = None
    if choice == "auto":
        free = "text" if answer is None else json_schema_grammar(answer)
    parallel = body.parallel_tool_calls is not False
    grammar = tool_call_grammar(functions, parallel, free)
    return Structured(checked(server, grammar, "tools"), tools, calls=True)


def constraints(server) -> Constraints:
    """The server's Constraints (its vocabulary compiled for grammars), made on first use; a 400
    naming the extra to install when llguidance is missing."""
    with _BUILD:
        engine = server.scheduler.engine
        if engine.constraints is None:
            try:
                engine.constraints = Constraints(server.tokenizer)
            except ShoshinError as exc:
                raise APIError(400, str(exc), code="structured_output_unavailable") from None
        return engine.constraints


def tool_calls(calls: list[tuple[str, str]]) -> list[ToolCall]:
    """OpenAI ToolCalls of parsed (name, arguments) pairs, each with a fresh id."""
    return [
        ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=n, arguments=a))
        for n, a in calls
    ]


def reply_message(structured: Structured, text: str, finish_reason: str):
    """(content, tool_calls or None, finish_reason) of a whole reply."""
    if not structured.calls:
        return text, None, finish_reason
    content, calls = parse_tool_calls(text)
    if not calls:
        return text, None, finish_reason
    reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return content or None, tool_calls(calls), reason


class CallStream:
    """One streamed choice of a request that may call tools: text is sent as it comes unless it
    may begin a call, which is held back and sent as `tool_calls` deltas once the reply is done."""

    def __init__(self):
        self.held = ""
        self.passing = False  # the reply is plain text: no call can follow (see tool_call_grammar)

    def push(self, text: str, finish_reason: str | None) -> list[dict]:
        """The chat deltas ({"content"} / {"tool_calls"}) to send for a piece of text, and
        (finish_reason set) the reason to finish with as a last entry {"finish_reason": ...}."""
        out: list[dict] = []
        if self.passing:
            if text:
                out.append({"content": text})
        else:
            self.held += text
            if not (CALL_OPEN.startswith(self.held) or self.held.startswith(CALL_OPEN)):
                self.passing = True
                out.append({"content": self.held})
        if finish_reason is None:
            return out
        if not self.passing:
            content, calls = parse_tool_calls(self.held)
            if calls:
                if finish_reason == "stop":
                    finish_reason = "tool_calls"
                if content:
                    out.append({"content": content})
                for i, call in enumerate(tool_calls(calls)):
                    out.append({"tool_calls": [{"index": i, **call.model_dump()}]})
            elif self.held:
                out.append({"content": self.held})
        return out + [{"finish_reason": finish_reason}]
