"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app around a BatchScheduler.

Text lives at this edge: requests are rendered to token ids (`translate`), the scheduler runs the
engine's decode loop on ids (`batching`), and replies come back as text piece by piece through the
thread-to-asyncio bridge (`bridge`), answered streamed or whole by one helper (`respond`). Errors
are OpenAI's format (`errors`); the routes live in `completions` (generation) and `routes` (page,
health, models, vLLM's tokenizer routes).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import torch.nn as nn
from fastapi import FastAPI

from shoshin.data.tokenizers import Tokenizer
from shoshin.serving import completions, routes
from shoshin.serving.errors import add_error_handlers
from shoshin.serving.middleware import BodyLimit
from shoshin.serving.service import ServeConfig, Server

__all__ = ["ServeConfig", "create_app"]


def create_app(
    model: nn.Module, tokenizer: Tokenizer, model_id: str, config: ServeConfig | None = None
) -> FastAPI:
    """The FastAPI app serving `model`; its batching thread runs while the app is up (lifespan)."""
    server = Server(model, tokenizer, model_id, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.scheduler.start()
        yield
        server.scheduler.stop()

    app = FastAPI(
        title="shoshin",
        version="1",
        description="An OpenAI-compatible API for a language model trained with shoshin.",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)
    add_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(routes.api)
    app.include_router(completions.router)
    return app
