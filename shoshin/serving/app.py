"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app around a BatchScheduler.

Text lives here, at the edge: requests are rendered to token ids (chat turns with role tokens),
the scheduler decodes ids, and replies are decoded back to text piece by piece, holding back
incomplete UTF-8 characters and anything that might be the start of a stop string.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import torch.nn as nn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoshin.data.chat import stop_token_ids
from shoshin.data.tokenizers import ASSISTANT, EOT, SYSTEM, USER, Tokenizer
from shoshin.generation.chat import chat_template, fit_messages
from shoshin.generation.engine import SamplingParams
from shoshin.generation.streaming import StopStrings, StreamDecoder
from shoshin.serving.batching import BatchScheduler
from shoshin.serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Trimmed,
    Usage,
)

TRIMMED_HEADER = "X-Shoshin-Dropped-Messages"
BODY_ERROR = "shoshin.body_error"  # scope key: the 413 of a body that grew too large while read
MAX_STOP_STRINGS = 4
NEAR_ZERO = 1e-4  # temperature or top_p below this is greedy
DISCONNECT_CHECK_SECONDS = 0.5  # how often a non-streamed request checks that its client is there


@dataclass
class ServeConfig:
    """Limits of one server; each is a command-line option of `shoshin serve`."""

    max_batch: int = 16  # requests decoded together (rows of the KV cache)
    max_concurrent: int = 64  # requests decoding or queued; one more gets 429
    max_tokens: int = 512  # cap on a request's max_tokens
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer KEY`


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        400: "invalid request (bad JSON, wrong types, prompt too long)",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "request body too large",
        429: "too many concurrent requests",
    }.items()
}


class _BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds `limit` bytes, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(
            413, f"request body is larger than {self.limit} bytes", code="body_too_large"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large.response()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI turns errors while reading a body into its own 400; this marks the real one.
                scope[BODY_ERROR] = too_large
                raise too_large
            return message

        try:
            await self.app(scope, limited_receive, send)
        except APIError as exc:
            await exc.response()(scope, receive, send)


class ReplyStream:
    """One request's reply as text pieces, produced while the scheduler decodes it.

    Iterate it for the pieces; afterwards `finish_reason` and `completion_tokens` are set. Stop
    tokens end the reply unseen; stop strings are cut from the text. Leaving the iteration early
    (a client that went away) cancels the generation and frees its batch slot.
    """

    def __init__(
        self,
        scheduler: BatchScheduler,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        params: SamplingParams,
        stops: list[str],
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ):
        self.decoder = StreamDecoder(tokenizer)
        self.stops = StopStrings(stops)
        self.stop_ids = set(params.stop_ids)
        self.is_disconnected = is_disconnected
        self._next_check = time.monotonic() + DISCONNECT_CHECK_SECONDS
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._queue: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def listener(token: int | None, reason: str | None) -> None:  # in the scheduler thread
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, (token, reason))
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass

        self.request = scheduler.submit(prompt_ids, params, listener)

    async def collect(self) -> str:
        """The whole reply, once generated; a generation that failed is a 500."""
        reply = "".join([piece async for piece in self])
        if self.finish_reason == "error":
            raise APIError(500, "generation failed; see the server's log", type="server_error")
        return reply

    async def _next_event(self) -> tuple[int | None, str | None]:
        if self.is_disconnected is None:
            return await self._queue.get()
        # Nothing is sent to the client until the end, so ask now and then whether it is still there.
        while True:
            if time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + DISCONNECT_CHECK_SECONDS
                if await self.is_disconnected():
                    return None, "cancelled"
            try:
                return await asyncio.wait_for(self._queue.get(), timeout=DISCONNECT_CHECK_SECONDS)
            except asyncio.TimeoutError:
                pass

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                token, reason = await self._next_event()
                if token is None:
                    self.finish_reason = reason
                    rest = self.stops.push(self.decoder.flush()) + self.stops.flush()
                    if rest:
                        yield rest
                    return
                self.completion_tokens += 1
                if token in self.stop_ids:
                    continue  # an end-of-reply token is not part of the text; "stop" follows
                piece = self.stops.push(self.decoder.push(token))
                if piece:
                    yield piece
                if self.stops.stopped:
                    self.finish_reason = "stop"
                    return
        finally:
            self.request.cancel()  # a no-op when finished; frees the slot when the client left


class Server:
    """What the endpoints share: model, tokenizer, scheduler and limits."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, model_id: str, config: ServeConfig):
        self.model, self.tokenizer, self.model_id, self.config = model, tokenizer, model_id, config
        self.created = int(time.time())
        self.context = model.config.block_size  # tokens a prompt may hold
        self.scheduler = BatchScheduler(model, config.max_batch, self.context)
        self.end_ids = tuple(stop_token_ids(tokenizer))
        self.template = chat_template(tokenizer)
        # In a chat, any role marker also ends the reply: the model has started another turn.
        roles = [tokenizer.special_tokens.get(t) for t in (SYSTEM, USER, ASSISTANT)]
        self.chat_end_ids = tuple(self.template.stop_ids) + tuple(t for t in roles if t is not None)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id:
            raise APIError(
                404,
                f"model {name!r} is not served here; this server serves {self.model_id!r} (see /v1/models)",
                param="model",
                code="model_not_found",
            )

    def check_capacity(self) -> None:
        busy = self.scheduler.active + self.scheduler.queued
        if busy >= self.config.max_concurrent:
            raise APIError(
                429,
                f"{busy} requests are in progress, the limit is {self.config.max_concurrent}; retry shortly",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )

    def params(
        self, body, max_tokens: int | None, prompt_len: int, stop_ids: tuple[int, ...]
    ) -> SamplingParams:
        """Sampling parameters of a request, with max_tokens capped by the limit and the window."""
        limit = min(max_tokens or self.config.max_tokens, self.config.max_tokens)
        if self.scheduler.max_len is not None:
            # A GPT's reply must fit the rest of its window (the last position still yields one).
            limit = min(limit, self.scheduler.max_len - prompt_len + 1)
        # Values this close to 0 mean greedy anyway, and would overflow or underflow float32 sampling.
        greedy = body.temperature < NEAR_ZERO or body.top_p < NEAR_ZERO
        seed = None if body.seed is None else body.seed % 2**64
        stops = body.stop_strings()
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(
                400, f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop"
            )
        return SamplingParams(
            max_new_tokens=max(limit, 1),
            temperature=0.0 if greedy else body.temperature,
            top_k=body.top_k or None,
            top_p=None if greedy else body.top_p,
            seed=seed,
            stop_ids=stop_ids,
        )

    def chat_prompt(self, body: ChatCompletionRequest) -> tuple[list[int], int]:
        """Token ids of the conversation, cueing the assistant's turn, and how many messages were dropped.

        The run's chat template renders it (role tokens, or plain `User:` lines for models without
        them). Oldest turns go first (the system prompt stays) while the prompt leaves no room for
        a reply of min(max_tokens, half the window) tokens.
        """
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        wanted = min(
            body.max_completion_tokens or body.max_tokens or self.config.max_tokens,
            self.config.max_tokens,
        )
        room = min(wanted, self.context // 2)
        ids, dropped = fit_messages(self.template, messages, self.context, room)
        if not ids:  # a plain-text template, and a char tokenizer that knows none of the characters
            raise APIError(400, "the messages hold no token this model knows", param="messages")
        if len(ids) + room > self.context:
            raise APIError(
                400,
                f"the last message does not fit in the model's context window of {self.context} "
                "tokens with room for a reply; shorten it",
                param="messages",
                code="context_length_exceeded",
            )
        return ids, dropped

    def completion_prompt(self, body: CompletionRequest) -> list[int]:
        ids = self.tokenizer.encode(body.prompt)
        if len(ids) > self.context:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens; this model's context window is {self.context} tokens",
                param="prompt",
                code="context_length_exceeded",
            )
        if ids:
            return ids
        if EOT not in self.tokenizer.special_tokens:
            raise APIError(
                400,
                "the prompt holds no token this model knows; send some text it was trained on",
                param="prompt",
            )
        return [self.tokenizer.special_tokens[EOT]]  # start a new document, as in training


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(
    model: nn.Module, tokenizer: Tokenizer, model_id: str, config: ServeConfig | None = None
) -> FastAPI:
    """The FastAPI app serving `model`; its batching thread runs while the app is up (lifespan)."""
    config = config or ServeConfig()
    server = Server(model, tokenizer, model_id, config)

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
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if BODY_ERROR in request.scope:
            return request.scope[BODY_ERROR].response()
        return APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return APIError(
            500, f"internal error: {type(exc).__name__}", type="server_error"
        ).response()

    async def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or incorrect API key; send `Authorization: Bearer KEY`",
                code="invalid_api_key",
            )

    v1 = {"dependencies": [Depends(authorize)], "responses": ERROR_RESPONSES}

    page = resources.files("shoshin.serving").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        s = server.scheduler
        return Health(
            model=model_id, active=s.active, queued=s.queued, slots=len(s.slots), steps=s.steps
        )

    @app.get("/v1/models", response_model=ModelList, **v1)
    async def list_models() -> ModelList:
        card = ModelCard(id=model_id, created=server.created, context_window=server.context)
        return ModelList(data=[card])

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
        dependencies=v1["dependencies"],
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.check_model(body.model)
        prompt, dropped = server.chat_prompt(body)
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = server.params(body, max_tokens, len(prompt), server.chat_end_ids)
        server.check_capacity()
        headers = {TRIMMED_HEADER: str(dropped)}
        trimmed = Trimmed(dropped_messages=dropped) if dropped else None
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id,
        }
        stops = body.stop_strings() + server.template.stop_strings
        if not body.stream:
            text = ReplyStream(
                server.scheduler, tokenizer, prompt, params, stops, request.is_disconnected
            )
            reply = server.template.reply_content(await text.collect())
            return JSONResponse(
                ChatCompletion(
                    **meta,
                    choices=[
                        ChatChoice(
                            message=AssistantMessage(content=reply),
                            finish_reason=text.finish_reason,
                        )
                    ],
                    usage=_usage(len(prompt), text.completion_tokens),
                    shoshin=trimmed,
                ).model_dump(),
                headers=headers,
            )
        text = ReplyStream(server.scheduler, tokenizer, prompt, params, stops)
        chunk = {**meta, "object": "chat.completion.chunk"}

        async def events() -> AsyncIterator[str]:
            first = {"role": "assistant", "content": ""}
            yield _sse(
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": first, "finish_reason": None}],
                    **({"shoshin": trimmed.model_dump()} if trimmed else {}),
                }
            )
            async for piece in text:
                yield _sse(
                    {
                        **chunk,
                        "choices": [
                            {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                        ],
                    }
                )
            yield _sse(
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": text.finish_reason}],
                }
            )
            if body.stream_options and body.stream_options.include_usage:
                usage = _usage(len(prompt), text.completion_tokens).model_dump()
                yield _sse({**chunk, "choices": [], "usage": usage})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
        dependencies=v1["dependencies"],
    )
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        prompt = server.completion_prompt(body)
        params = server.params(body, body.max_tokens, len(prompt), server.end_ids)
        server.check_capacity()
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        if not body.stream:
            text = ReplyStream(
                server.scheduler,
                tokenizer,
                prompt,
                params,
                body.stop_strings(),
                request.is_disconnected,
            )
            reply = await text.collect()
            return Completion(
                **meta,
                choices=[CompletionChoice(text=reply, finish_reason=text.finish_reason)],
                usage=_usage(len(prompt), text.completion_tokens),
            )
        text = ReplyStream(server.scheduler, tokenizer, prompt, params, body.stop_strings())
        chunk = {**meta, "object": "text_completion"}

        async def events() -> AsyncIterator[str]:
            async for piece in text:
                yield _sse(
                    {
                        **chunk,
                        "choices": [
                            {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
                        ],
                    }
                )
            yield _sse(
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "text": "",
                            "finish_reason": text.finish_reason,
                            "logprobs": None,
                        }
                    ],
                }
            )
            if body.stream_options and body.stream_options.include_usage:
                yield _sse(
                    {
                        **chunk,
                        "choices": [],
                        "usage": _usage(len(prompt), text.completion_tokens).model_dump(),
                    }
                )
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a request that failed validation, as one readable 400."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})",
        )
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return APIError(400, f"{where or 'body'}: {first['msg']}{more}", param=where or None)
