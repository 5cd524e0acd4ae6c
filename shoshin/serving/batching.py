"""Continuous batching for the server: what is the server's own around the engine's decode loop.

The engine's `Batch` (shoshin.generation.engine) does the decoding: prompts prefilled into rows of
one cache, one batched forward pass per step, each row sampled with its own parameters and
generator. This scheduler adds only what serving needs: a queue of waiting requests admitted into
free rows at step boundaries, cancellation (a client that went away), telling each request's
listener about its tokens, and keeping the server alive if a step fails. It runs in one background
thread and knows only token ids; text lives in the server.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

import torch.nn as nn

from shoshin.generation.engine import Engine, Generation, TokenLogprob
from shoshin.generation.params import SamplingParams

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

    def __init__(self, model: nn.Module, slots: int = 16):
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.engine = Engine(model.eval())
        self.batch = self.engine.new_batch(slots)
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
        self._admit()
        for b, token in self.batch.sample():
            request = self.requests[b]
            logprobs = request.generation.logprobs
            request.listener(token, logprobs[-1] if logprobs else None, None)
        for b, request in enumerate(self.requests):  # scoring passes finish without a token
            if request is not None and request.generation.done:
                self._end(b, request.generation.finish_reason)
        self.batch.advance()
        self.steps += 1

    def _admit(self) -> None:
        """Move waiting requests into the lowest free rows and prefill them together."""
        joining: dict[int, Generation] = {}
        with self._wake:
            for b in self.batch.free_rows():
                while self.waiting and self.waiting[0].cancelled:
                    self._tell_end(self.waiting.popleft(), "cancelled")
                if not self.waiting:
                    break
                self.requests[b] = request = self.waiting.popleft()
                joining[b] = request.generation
        if joining:
            self.batch.add(joining)

    def _end(self, b: int, reason: str) -> None:
        request = self.requests[b]
        self.requests[b] = None
        if self.batch.rows[b] is not None:
            self.batch.release(b)
        self._tell_end(request, reason)

    @staticmethod
    def _tell_end(request: Request, reason: str) -> None:
        if not request.done:
            request.done = True
            request.listener(None, None, reason)
