"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app around a BatchScheduler.

Text lives at this edge: requests are rendered to token ids (`translate`), the scheduler runs the
engine's decode loop on ids (`batching`), and replies come back as text piece by piece through the
thread-to-asyncio bridge (`bridge`), answered streamed or whole by one helper (`respond`). The
routes live in `completions` (chat and legacy completions), `responses` (the Responses API) and
`routes` (page, health, models, vLLM's tokenizer routes); request bodies in `schemas`,
`response_schemas` and `wire` (types, nulls, unsupported fields, fields generated from
SamplingParams); errors in OpenAI's format in `errors`; what wraps every request in `middleware`;
the OpenAPI document, with the served model's bounds, in `openapi`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import torch.nn as nn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from shoshin.data.tokenizers import Tokenizer
from shoshin.serving.completions import TRIMMED_HEADER
from shoshin.serving.completions import router as completion_routes
from shoshin.serving.errors import add_error_handlers
from shoshin.serving.middleware import BodyLimit, HeadAsGet, JsonBody
from shoshin.serving.openapi import install_openapi
from shoshin.serving.responses import router as response_routes
from shoshin.serving.routes import api as api_routes
from shoshin.serving.routes import router as open_routes
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
    # The last added runs first: CORS answers a browser's preflight before anything else.
    app.add_middleware(JsonBody)
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)
    app.add_middleware(HeadAsGet)
    if server.config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(server.config.cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["*"],
            expose_headers=[TRIMMED_HEADER],
        )
    add_error_handlers(app)
    for router in (open_routes, api_routes, completion_routes, response_routes):
        app.include_router(router)
    install_openapi(app, server.vocab_size, server.context)
    return app
