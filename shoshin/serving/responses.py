"""`/v1/responses`, OpenAI's Responses API, through the same decode core as chat completions.

The input (text, or a list of messages, after `instructions` as a system message) is rendered
with the run's chat template; the reply is one output message. Streamed, it is the Responses
API's typed events: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done, response.output_item.done, then response.completed (or
response.incomplete when max_output_tokens cut it short).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request

from shoshin.generation.constraints import json_schema_grammar
from shoshin.serving.bridge import Choices, Delta
from shoshin.serving.completions import STREAMED
from shoshin.serving.middleware import authorize
from shoshin.serving.respond import Reply, generated_tokens, respond, sse
from shoshin.serving.response_schemas import (
    IncompleteDetails,
    OutputMessage,
    OutputText,
    Response,
    ResponseError,
    ResponseRequest,
    ResponseUsage,
)
from shoshin.serving.schemas import ChatMessage
from shoshin.serving.service import CurrentServer, Server
from shoshin.serving.structured import checked, format_schema
from shoshin.serving.translate import chat_prompt, sampling_params

FAILED = ResponseError(code="server_error", message="generation failed; see the server's log")
STATUS = {"stop": "completed", "length": "incomplete"}  # by finish reason; any other: failed

router = APIRouter(dependencies=[Depends(authorize)], responses=STREAMED)


@router.post("/v1/responses", response_model=Response)
async def create_response(body: ResponseRequest, request: Request, server: CurrentServer):
    server.check_model(body.model)
    prompt, _ = chat_prompt(server, conversation(body), body.max_output_tokens)
    fmt = body.text.format if body.text else None
    schema = None
    if fmt is not None:
        schema = format_schema(fmt.type, getattr(fmt, "schema_", None), "text.format")
    grammar = None if schema is None else json_schema_grammar(schema)
    grammar = checked(server, grammar, "text.format")
    params = sampling_params(
        server, body, body.max_output_tokens, server.template.stop_ids, grammar=grammar
    )
    server.check_capacity(len(params))
    reply = ResponseReply(server, body, len(prompt))
    stops = server.template.stop_strings
    return await respond(server, request, reply, [prompt], params, stops, bool(body.stream))


def conversation(body: ResponseRequest) -> list[ChatMessage]:
    """The request's input as chat messages, after its instructions as a system message."""
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else []
    if not isinstance(body.input, str):
        items = [{"role": m.role, "content": m.text()} for m in body.input]
    if body.instructions:
        items.insert(0, {"role": "system", "content": body.instructions})
    return [ChatMessage(**item) for item in items]


class ResponseReply(Reply):
    """One Response object, or the Responses API's stream of typed events."""

    def __init__(self, server: Server, body: ResponseRequest, prompt_tokens: int):
        self.server, self.body, self.prompt_tokens = server, body, prompt_tokens
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sequence = 0
        self.text = ""

    def event(self, kind: str, **fields) -> str:
        """One typed event, numbered in order (`sequence_number`)."""
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(data, event=kind)

    def response(self, status: str, text: str | None, choices: Choices | None) -> Response:
        """The Response object: in progress (no output yet), or finished with `text`."""
        output = [] if text is None else [self.message(status, text)]
        used = None
        if choices is not None:
            done = generated_tokens(choices)
            used = ResponseUsage(
                input_tokens=self.prompt_tokens,
                output_tokens=done,
                total_tokens=self.prompt_tokens + done,
            )
        body = self.body
        return Response(
            id=self.id,
            created_at=self.created,
            status=status,
            model=self.server.model_id,
            output=output,
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            error=FAILED if status == "failed" else None,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            text={"format": fmt.model_dump(by_alias=True, exclude_none=True)}
            if (fmt := body.text and body.text.format)
            else {"format": {"type": "text"}},
            usage=used,
        )

    def message(self, status: str, text: str) -> OutputMessage:
        return OutputMessage(id=self.item_id, status=status, content=[OutputText(text=text)])

    def opening(self, choices: Choices):
        started = self.response("in_progress", None, None).model_dump()
        yield self.event("response.created", response=started)
        yield self.event("response.in_progress", response=started)
        item = self.message("in_progress", "").model_copy(update={"content": []})
        yield self.event("response.output_item.added", output_index=0, item=item.model_dump())
        part = OutputText(text="").model_dump()
        yield self.event("response.content_part.added", **self.where(), part=part)

    def where(self) -> dict:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def chunk(self, choices: Choices, delta: Delta):
        self.text += delta.text
        if delta.text:
            yield self.event(
                "response.output_text.delta", **self.where(), delta=delta.text, logprobs=[]
            )
        if delta.finish_reason is None:
            return
        status = STATUS.get(delta.finish_reason, "failed")
        text = self.server.template.reply_content(self.text)
        yield self.event("response.output_text.done", **self.where(), text=text, logprobs=[])
        part = OutputText(text=text).model_dump()
        yield self.event("response.content_part.done", **self.where(), part=part)
        item = self.message("incomplete" if status == "failed" else status, text).model_dump()
        yield self.event("response.output_item.done", output_index=0, item=item)
        final = self.response(status, text, choices).model_dump()
        yield self.event(f"response.{status}", response=final)

    def whole(self, choices: Choices, texts: list[str]) -> Response:
        status = STATUS[choices.items[0].finish_reason]  # (collect raised on any other)
        return self.response(status, self.server.template.reply_content(texts[0]), choices)
