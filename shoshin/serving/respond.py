"""One way to answer a generation request, streamed or whole, so each endpoint is written once.

An endpoint checks its request, renders prompts and sampling parameters, and describes its answer
as a `Reply`: the events of a stream (`opening`, one `chunk` per delta, `closing`) and the body of
a whole response (`whole`). `respond` runs the choices through the scheduler and answers with one
or the other, depending on `stream`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from shoshin.generation.params import SamplingParams
from shoshin.serving.bridge import Choices, Delta
from shoshin.serving.service import Server


def sse(data: dict | str, event: str | None = None) -> str:
    """One server-sent event: `data: JSON` (after `event: NAME` when named)."""
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


class Reply(ABC):
    """How one endpoint shapes its answer; each endpoint's subclass defines `chunk` and `whole`."""

    headers: dict[str, str] | None = None

    def opening(self, choices: Choices) -> Iterable[str]:
        """Events sent before any text (say, each choice's role)."""
        return ()

    @abstractmethod
    def chunk(self, choices: Choices, delta: Delta) -> Iterable[str]:
        """Events for one delta of one choice."""

    def closing(self, choices: Choices) -> Iterable[str]:
        """Events after every choice has finished (usage, `[DONE]`)."""
        return ()

    @abstractmethod
    def whole(self, choices: Choices, texts: list[str]) -> BaseModel:
        """The body of the non-streamed response, once every choice is done."""


async def respond(
    server: Server,
    request: Request,
    reply: Reply,
    prompts: Sequence[list[int]],
    params: Sequence[SamplingParams],
    stops: list[str],
    stream: bool,
):
    """Generate choice k from prompts[k] with params[k]; answer as a stream of events or whole."""
    if stream:
        choices = Choices(server, prompts, params, stops)

        async def events() -> AsyncIterator[str]:
            for event in reply.opening(choices):
                yield event
            async for delta in choices.deltas():
                for event in reply.chunk(choices, delta):
                    yield event
            for event in reply.closing(choices):
                yield event

        return StreamingResponse(events(), media_type="text/event-stream", headers=reply.headers)
    choices = Choices(server, prompts, params, stops, request.is_disconnected)
    texts = await choices.collect()
    return JSONResponse(reply.whole(choices, texts).model_dump(), headers=reply.headers)


def generated_tokens(choices: Choices) -> int:
    """Tokens generated over every choice (a final stop token counts, as in OpenAI's usage)."""
    return sum(len(c.tokens) for c in choices.items)
