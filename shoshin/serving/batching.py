"""Continuous batching: concurrent requests decoded together, one batched forward pass per step.

The rows of one KV cache (or LSTM state) are the batch's slots. A request joins at a step
boundary: its prompt is prefilled into the lowest free row (requests joining together share one
prefill pass), which also gives its first token. Every step then feeds one token per busy row
through the model at once, and each request samples from its own row with its own temperature,
top-k, top-p and torch.Generator, so its tokens do not depend on who else is in the batch. A
finished or cancelled request frees its row.

The scheduler runs in one background thread and knows only token ids; text lives in the server.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from shoshin.generation.engine import SamplingParams
from shoshin.generation.sampling import ends_with_stop, make_generator, sample_next

log = logging.getLogger(__name__)

# Called from the scheduler thread: (token, None) for each new token, then (None, finish_reason)
# once, where finish_reason is "stop" (a stop token), "length" (max_new_tokens or a full context
# window), "cancelled" or "error".
Listener = Callable[[int | None, str | None], None]


class Request:
    """One generation inside the scheduler: prompt, parameters, progress and the listener to tell."""

    def __init__(
        self, prompt_ids: Sequence[int], params: SamplingParams, listener: Listener, device
    ):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.listener = listener
        self.stop_ids = set(params.stop_ids)
        self.generated: list[int] = []
        self.generator = make_generator(params.seed, device)
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        """Stop generating; the scheduler frees the request's slot at the next step boundary."""
        self.cancelled = True


class BatchScheduler:
    """Runs every submitted request to completion in a background thread, `slots` rows at a time.

    Requests beyond the free slots wait in a queue (first come, first served).
    """

    def __init__(self, model: nn.Module, slots: int = 16, max_len: int | None = None):
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(slots, max_len)
        self.max_len: int | None = self.cache.max_len  # None: no position limit (LSTM)
        self.slots: list[Request | None] = [None] * slots
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
        if not prompt_ids:
            raise ValueError("prompt_ids must hold at least one token")
        if self.max_len is not None and len(prompt_ids) > self.max_len:
            raise ValueError(f"{len(prompt_ids)} prompt tokens do not fit in {self.max_len}")
        request = Request(prompt_ids, params, listener, self.device)
        with self._wake:
            self.waiting.append(request)
            self._wake.notify()
        return request

    @property
    def active(self) -> int:
        """Requests holding a slot now."""
        return sum(r is not None for r in self.slots)

    @property
    def queued(self) -> int:
        """Requests waiting for a free slot."""
        return len(self.waiting)

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
                for b, request in enumerate(self.slots):
                    if request is not None:
                        self._finish(b, "error")
        for b, request in enumerate(self.slots):
            if request is not None:
                self._finish(b, "cancelled")
        while self.waiting:
            self._end(self.waiting.popleft(), "cancelled")

    @torch.no_grad()
    def step(self) -> None:
        """Free cancelled rows, prefill the requests that fit, then decode one token for every busy row."""
        for b, request in enumerate(self.slots):
            if request is not None and request.cancelled:
                self._finish(b, "cancelled")
        self._admit()
        busy = [b for b, r in enumerate(self.slots) if r is not None]
        if not busy:
            return
        # Decode rows 0..n-1 only: slots are taken lowest first, so busy rows cluster at the top.
        # A free row among them reads a dummy token and is reset right after.
        n = busy[-1] + 1
        tokens = torch.zeros(n, 1, dtype=torch.long, device=self.device)
        for b in busy:
            tokens[b, 0] = self.slots[b].generated[-1]
        logits = self.model(tokens, cache=self.cache.rows(0, n))[:, -1, :]  # (n, vocab)
        self.steps += 1
        for b in range(n):
            if self.slots[b] is None:
                self.cache.reset(b)
            else:
                self._emit(b, logits[b : b + 1])

    def _admit(self) -> None:
        """Move waiting requests into the lowest free rows and prefill their prompts.

        Requests that land in consecutive rows are prefilled by one forward pass: a GPT pads
        shorter prompts on the right (a token never attends to later positions, and the padding
        is forgotten by setting the row's length back); an LSTM state would read the padding, so
        there only prompts of equal length share a pass.
        """
        joined: list[int] = []
        with self._wake:
            for b, request in enumerate(self.slots):
                if request is not None:
                    continue
                while self.waiting and self.waiting[0].cancelled:
                    self._end(self.waiting.popleft(), "cancelled")
                if not self.waiting:
                    break
                self.slots[b] = self.waiting.popleft()
                self.cache.reset(b)
                joined.append(b)
        group: list[int] = []
        for b in joined:
            if group and not (b == group[-1] + 1 and self._can_share(group[0], b)):
                self._prefill(group)
                group = []
            group.append(b)
        if group:
            self._prefill(group)

    def _can_share(self, a: int, b: int) -> bool:
        if self.max_len is not None:  # a GPT: padding on the right is harmless
            return True
        return len(self.slots[a].prompt_ids) == len(self.slots[b].prompt_ids)

    def _prefill(self, rows: list[int]) -> None:
        """One forward pass over the prompts of consecutive rows; each then samples its first token."""
        prompts = [self.slots[b].prompt_ids for b in rows]
        T = max(len(p) for p in prompts)
        ids = torch.zeros(len(rows), T, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        logits = self.model(ids, cache=self.cache.rows(rows[0], rows[-1] + 1))  # (n, T, vocab)
        for i, (b, p) in enumerate(zip(rows, prompts, strict=True)):
            self.cache.lengths[b] = len(p)  # forget the padding
            self._emit(b, logits[i : i + 1, len(p) - 1])

    def _emit(self, b: int, logits: torch.Tensor) -> None:
        """Sample row b's next token, tell its listener, and finish it when it is done."""
        request = self.slots[b]
        p = request.params
        try:
            token = int(sample_next(logits, p.temperature, p.top_k, p.top_p, request.generator)[0])
        except RuntimeError:  # e.g. parameters that make the probabilities NaN: end this one only
            log.exception("sampling failed for one request")
            self._finish(b, "error")
            return
        request.generated.append(token)
        request.listener(token, None)
        if ends_with_stop(request.generated, request.stop_ids, p.stop_sequences):
            self._finish(b, "stop")
        elif len(request.generated) >= p.max_new_tokens:
            self._finish(b, "length")
        elif self.max_len is not None and int(self.cache.lengths[b]) >= self.max_len:
            self._finish(b, "length")  # the window is full: the new token has no position to go

    def _finish(self, b: int, reason: str) -> None:
        request = self.slots[b]
        self.slots[b] = None
        self.cache.reset(b)
        self._end(request, reason)

    @staticmethod
    def _end(request: Request, reason: str) -> None:
        if not request.done:
            request.done = True
            request.listener(None, reason)
