"""The bridge between the scheduler's thread and asyncio: each choice's tokens become text deltas.

The BatchScheduler calls a listener from its own thread for every token; `Choices` hands those
events to the event loop (`call_soon_threadsafe`), turns each choice's tokens into text as it comes
(`ReplyText`: incomplete UTF-8 held back, stop tokens unseen, stop strings cut) and cancels every
choice when its reader goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shoshin.data.tokenizers import Tokenizer
from shoshin.generation.engine import TokenLogprob
from shoshin.generation.params import SamplingParams
from shoshin.generation.streaming import ReplyText
from shoshin.serving.errors import APIError

if TYPE_CHECKING:
    from shoshin.serving.service import Server

DISCONNECT_CHECK_SECONDS = 0.5  # how often a non-streamed request checks that its client is there


@dataclass
class Delta:
    """What one choice added: text to show, the tokens behind it (token, TokenLogprob or None;
    stop tokens left out) and, on its last delta, why it finished."""

    index: int
    text: str
    tokens: list[tuple[int, TokenLogprob | None]] = field(default_factory=list)
    finish_reason: str | None = None


class Choice:
    """One choice's reply as it is generated: its text, its tokens and how it finished."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, stops: list[str]):
        self.reply = ReplyText(tokenizer, params.stop_ids, stops)
        self.stop_ids = set(params.stop_ids)
        self.tokens: list[tuple[int, TokenLogprob | None]] = []  # every token, a final stop one too
        self.unsent: list[tuple[int, TokenLogprob | None]] = []
        self.finish_reason: str | None = None
        self.request = None  # its BatchScheduler.Request

    def on_token(self, index: int, token: int, logprob: TokenLogprob | None) -> Delta | None:
        self.tokens.append((token, logprob))
        if token not in self.stop_ids:
            self.unsent.append((token, logprob))
        piece = self.reply.push(token)
        if self.reply.stopped:  # a stop token or stop string: this reply is over
            self.request.cancel()
            return self.on_finish(index, "stop", piece)
        if not piece:
            return None
        delta, self.unsent = Delta(index, piece, self.unsent), []
        return delta

    def on_finish(self, index: int, reason: str, piece: str = "") -> Delta:
        if self.finish_reason is None:
            self.finish_reason = reason
            if not self.reply.stopped:
                piece += self.reply.flush()
        delta, self.unsent = Delta(index, piece, self.unsent, self.finish_reason), []
        return delta


class Choices:
    """The choices of one request (each prompt, n times), each decoded in its own batch row.

    Iterate `deltas()` for text as it comes; leaving early (a client that went away) cancels every
    choice and frees its row. `generations[i]` holds choice i's prompt log-probabilities.
    """

    def __init__(
        self,
        server: Server,
        prompts: Sequence[list[int]],
        params: Sequence[SamplingParams],
        stops: list[str],
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ):
        self.is_disconnected = is_disconnected
        self._next_check = time.monotonic() + DISCONNECT_CHECK_SECONDS
        self.items = [Choice(server.tokenizer, p, stops) for p in params]
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def listener(i: int):
            def hear(token: int | None, logprob: TokenLogprob | None, reason: str | None) -> None:
                try:  # (in the scheduler thread)
                    loop.call_soon_threadsafe(self._queue.put_nowait, (i, token, logprob, reason))
                except RuntimeError:  # the event loop has closed: nobody is listening any more
                    pass

            return hear

        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            self.items[i].request = server.scheduler.submit(prompt, p, listener(i))
        self.generations = [c.request.generation for c in self.items]

    async def _next_event(self):
        if self.is_disconnected is None:
            return await self._queue.get()
        # Nothing is sent to the client until the end, so ask now and then whether it is still there.
        while True:
            if time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + DISCONNECT_CHECK_SECONDS
                if await self.is_disconnected():
                    return None
            try:
                return await asyncio.wait_for(self._queue.get(), timeout=DISCONNECT_CHECK_SECONDS)
            except asyncio.TimeoutError:
                pass

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text pieces of every choice as they are produced, each choice ending with its finish."""
        open_choices = len(self.items)
        try:
            while open_choices:
                event = await self._next_event()
                if event is None:  # the client left
                    return
                i, token, logprob, reason = event
                choice = self.items[i]
                if choice.finish_reason is not None:
                    continue  # tokens that raced with a stop we already made
                if token is None:
                    delta = choice.on_finish(i, reason)
                else:
                    delta = choice.on_token(i, token, logprob)
                if delta is None:
                    continue
                if delta.finish_reason is not None:
                    open_choices -= 1
                yield delta
        finally:
            for choice in self.items:
                choice.request.cancel()  # a no-op when finished; frees the row when not

    async def collect(self) -> list[str]:
        """Every choice's whole text, once generated; a generation that failed is a 500."""
        texts = [""] * len(self.items)
        async for delta in self.deltas():
            texts[delta.index] += delta.text
        if any(c.finish_reason is None for c in self.items):
            raise APIError(499, "the client closed the connection", code="client_closed")
        if any(c.finish_reason == "error" for c in self.items):
            raise APIError(500, "generation failed; see the server's log", type="server_error")
        return texts
