"""What the endpoints share: the model, its tokenizer, the scheduler and the server's limits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import torch.nn as nn
from fastapi import Depends, Request

from shoshin.data.chat import stop_token_ids
from shoshin.data.tokenizers import Tokenizer
from shoshin.generation.chat import chat_template
from shoshin.serving.batching import BatchScheduler
from shoshin.serving.errors import APIError


@dataclass
class ServeConfig:
    """Limits of one server; each is a command-line option of `shoshin serve`."""

    max_batch: int = 16  # requests decoded together (rows of the KV cache)
    max_concurrent: int = 64  # choices decoding or queued; one more gets 429
    max_tokens: int = 512  # cap on a request's max_tokens
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer KEY`
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (CORS); none: off


class Server:
    """What the endpoints share: model, tokenizer, scheduler and limits."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, model_id: str, config: ServeConfig):
        self.model, self.tokenizer, self.model_id, self.config = model, tokenizer, model_id, config
        self.created = int(time.time())
        self.context: int | None = model.context_window  # tokens a prompt may hold (None: any)
        self.vocab_size: int = model.config.vocab_size
        self.scheduler = BatchScheduler(model, config.max_batch)
        self.template = chat_template(tokenizer)
        self.stop_ids = tuple(stop_token_ids(tokenizer))  # completions end where chat replies do

    def check_model(self, name: str | None) -> None:
        """A 404 unless `name` is the served model (or unset)."""
        if name is not None and name != self.model_id:
            raise APIError(
                404,
                f"model {name!r} is not served here; this server serves {self.model_id!r} (see /v1/models)",
                param="model",
                code="model_not_found",
            )

    def check_capacity(self, choices: int) -> None:
        """A 400 when one request asks for more choices than the server runs; a 429 when busy."""
        if choices > self.config.max_concurrent:
            raise APIError(
                400,
                f"this request asks for {choices} choices; the server runs at most "
                f"{self.config.max_concurrent} at once",
                param="n",
            )
        busy = self.scheduler.active + self.scheduler.queued
        if busy + choices > self.config.max_concurrent:
            raise APIError(
                429,
                f"{busy} requests are in progress, the limit is {self.config.max_concurrent}; retry shortly",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )

    def check_tokens(self, ids: list[int], param: str) -> None:
        """A 400 naming the first token id outside the vocabulary."""
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise APIError(
                400,
                f"token id {bad[0]} is not in the vocabulary (0..{self.vocab_size - 1})",
                param=param,
            )


def current_server(request: Request) -> Server:
    """A route dependency: the Server of the app handling the request."""
    return request.app.state.server


CurrentServer = Annotated[Server, Depends(current_server)]  # a route parameter's type
