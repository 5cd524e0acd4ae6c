"""Continuous batching for the server: what is the server's own around the engine's decode loop.

The engine's `Batch` (shoshin.generation.engine) does the decoding: prompts prefilled into rows of
one cache, one batched forward pass per step, each row sampled with its own parameters and
generator. This scheduler adds only what serving needs: a queue of waiting requests admitted into
free rows at step boundaries, cancellation (a client that went away), telling each request's
listener about its tokens, keeping the server alive if a step fails, and prefix reuse: a prompt
that starts like an earlier prompt or conversation starts from its keys and values
(shoshin.generation.prefix). It runs in one background thread and knows only token ids; text
lives in the server.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

import torch.nn as nn

from shoshin.generation.engine import Engine, Generation, TokenLogprob
from shoshin.generation.params import SamplingParams
from shoshin.generation.prefix import DEFAULT_MAX_BYTES, PrefixCache

log = logging.getLogger(__name__)

# Called from the scheduler thread: (token, its TokenLogprob or None, None) for each new token,
# then (None, None, finish_reason) once, where finish_reason is "stop" (a stop token or
# sequence), "length" (max_new_tokens), "cancelled" or "error".
Listener = Callable[[int | None, TokenLogprob | None, str | None], None]


class Request:
    """One request inside the scheduler: its Generation, its listener, and whether it was cancelled.

    After the finish event, `generation` holds the prompt's log-probabilities (if asked for)."""

    def __init__(self, generation: Generation, listener: Listener):
        self.generation = generation
        self.listener = listener
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        """Stop generating; the scheduler frees the request's row at the next step boundary."""
        self.cancelled = True


class BatchScheduler:
    """Runs every submitted request to completion in a background thread, `slots` rows at a time.

    Requests beyond the free slots wait in a queue (first come, first served).
    """

    def __init__(
        self,
        model: nn.Module,
        slots: int = 16,
        prefix_cache_bytes: int = DEFAULT_MAX_BYTES,
        decode: str = "eager",
    ):
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.engine = Engine(model.eval(), decode=decode)
        self.batch = self.engine.new_batch(slots)
        # keys/values of earlier prompts and conversations (None: off, or a recurrent model)
        self.prefixes = (
            PrefixCache(prefix_cache_bytes)
            if prefix_cache_bytes > 0 and PrefixCache.supports(self.batch.cache)
            else None
        )
        self.requests: list[Request | None] = [None] * slots  # by row
        self.waiting: deque[Request] = deque()
        self.steps = 0  # batched decode steps taken, for /health and benchmarks
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="shoshin-batching", daemon=True)

    # -- the outside world (any thread) ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Cancel everything still running or waiting, and end the background thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, listener: Listener
    ) -> Request:
        """Queue a generation; `listener` hears each token, then the finish reason."""
        request = Request(self.engine.generation(prompt_ids, params), listener)
        with self._wake:
            self.waiting.append(request)
            self._wake.notify()
        return request

    @property
    def active(self) -> int:
        """Requests holding a slot now."""
        return sum(r is not None for r in self.requests)

    @property
    def queued(self) -> int:
        """Requests waiting for a free slot."""
        return len(self.waiting)

    @property
    def slots(self) -> int:
        return len(self.requests)

    # -- the scheduler thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and self.active == 0:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception:  # a bug must not kill the server: fail the batch, keep serving
                log.exception("generation step failed; ending every request in the batch")
                for b, request in enumerate(self.requests):
                    if request is not None:
                        self._end(b, "error")
        for b, request in enumerate(self.requests):
            if request is not None:
                self._end(b, "cancelled")
        while self.waiting:
            self._tell_end(self.waiting.popleft(), "cancelled")

    def step(self) -> None:
        """Free cancelled rows, admit waiting requests into free rows, then one decode step."""
        for b, request in enumerate(self.requests):
            if request is not None and request.cancelled:
                self._end(b, "cancelled")
        joined = self._admit()
        for b, token in self.batch.sample():
            request = self.requests[b]
            logprobs = request.generation.logprobs
            request.listener(token, logprobs[-1] if logprobs else None, None)
        for b, request in enumerate(self.requests):  # scoring passes finish without a token
            if request is not None and request.generation.done:
                self._end(b, request.generation.finish_reason)
        if self.prefixes is not None:  # after the first tokens went out: not on their path
            for b, generation in joined.items():  # e.g. a system prompt shared by what follows
                request = self.requests[b]
                if request is not None and request.generation is generation:
                    self.prefixes.store(self.batch.cache, b, generation.prompt)
        self.batch.advance()
        self.steps += 1

    def _admit(self) -> dict[int, Generation]:
        """Move waiting requests into the lowest free rows and prefill them together; returns
        them by row."""
        joining: dict[int, Generation] = {}
        with self._wake:
            for b in self.batch.free_rows():
                while self.waiting and self.waiting[0].cancelled:
                    self._tell_end(self.waiting.popleft(), "cancelled")
                if not self.waiting:
                    break
                self.requests[b] = request = self.waiting.popleft()
                joining[b] = request.generation
        if not joining:
            return joining
        for b, generation in joining.items():
            self.batch.cache.reset(b)
            if self.prefixes is not None and generation.params.prompt_logprobs is None:
                self.prefixes.restore(self.batch.cache, b, generation.prompt)
        self.batch.add(joining, cached=True)  # rows hold a reused prefix, or nothing
        return joining

    def _end(self, b: int, reason: str) -> None:
        request = self.requests[b]
        self.requests[b] = None
        held = int(self.batch.cache.lengths[b])
        if self.batch.rows[b] is not None:
            self.batch.release(b)  # only forgets the row's length: its keys/values stay
        self._tell_end(request, reason)  # the client first: storing is not on its path
        if self.prefixes is not None and reason in ("stop", "length"):
            self._keep_conversation(b, request.generation, held)

    def _keep_conversation(self, b: int, generation: Generation, held: int) -> None:
        """Store the `held` positions row b's cache holds: prompt and reply but the last token
        (never fed), which a chat client sends back as the start of its next turn. Not after an
        overflow refilled the row (its positions no longer start at the prompt's first token)."""
        ids, window = generation.history.ids, self.batch.cache.max_len
        if len(ids) <= window:
            self.prefixes.store(self.batch.cache, b, ids[:held])

    @staticmethod
    def _tell_end(request: Request, reason: str) -> None:
        if not request.done:
            request.done = True
            request.listener(None, None, reason)
