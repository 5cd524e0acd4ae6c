"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app around a BatchScheduler.

Text lives here, at the edge: requests are rendered to token ids (chat turns with role tokens),
the scheduler runs the engine's decode loop on ids, and replies are decoded back to text piece by
piece (`ReplyText`: incomplete UTF-8 held back, stop tokens unseen, stop strings cut).
Log-probabilities travel with the tokens and are formatted as OpenAI's chat and legacy
completions formats; `/tokenize` and `/detokenize` follow vLLM's.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from importlib import resources

import torch.nn as nn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoshin.data.chat import is_chat_tokenizer, stop_token_ids
from shoshin.data.tokenizers import END, EOT, CharTokenizer, Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.conversation import chat_template, fit_messages
from shoshin.generation.engine import TokenLogprob
from shoshin.generation.params import SamplingParams
from shoshin.generation.streaming import ReplyText, StreamDecoder, token_bytes, token_text
from shoshin.serving.batching import BatchScheduler
from shoshin.serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    TopLogprob,
    Trimmed,
    Usage,
)

TRIMMED_HEADER = "X-Shoshin-Dropped-Messages"
BODY_ERROR = "shoshin.body_error"  # scope key: the 413 of a body that grew too large while read
MAX_STOP_STRINGS = 4
NEAR_ZERO = 1e-4  # temperature or top_p below this is greedy
DISCONNECT_CHECK_SECONDS = 0.5  # how often a non-streamed request checks that its client is there
# Request fields copied by name into SamplingParams (the options the CLI offers too).
SAMPLING_FIELDS = [
    f.name for f in fields(SamplingParams) if f.metadata.get("cli") and f.name != "max_new_tokens"
]


@dataclass
class ServeConfig:
    """Limits of one server; each is a command-line option of `shoshin serve`."""

    max_batch: int = 16  # requests decoded together (rows of the KV cache)
    max_concurrent: int = 64  # choices decoding or queued; one more gets 429
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
        if name is not None and name != self.model_id:
            raise APIError(
                404,
                f"model {name!r} is not served here; this server serves {self.model_id!r} (see /v1/models)",
                param="model",
                code="model_not_found",
            )

    def check_capacity(self, choices: int) -> None:
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

    def params(
        self,
        body,
        max_tokens: int | None,
        stop_ids: Sequence[int],
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
    ) -> list[SamplingParams]:
        """The sampling parameters of each of the request's n choices (choice i: seed + i).

        Fields named like a SamplingParams field are copied by name; only values whose wire form
        differs from shoshin's are converted here.
        """
        if len(body.stop_strings()) > MAX_STOP_STRINGS:
            raise APIError(
                400, f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop"
            )
        values = {
            name: getattr(body, name)
            for name in SAMPLING_FIELDS
            if name in type(body).model_fields and getattr(body, name) is not None
        }
        # Values this close to 0 mean greedy anyway, and would overflow or underflow float32 sampling.
        if body.temperature < NEAR_ZERO or body.top_p < NEAR_ZERO:
            values.update(temperature=0.0, top_p=None)
        if values.get("top_k", 0) <= 0:
            values.pop("top_k", None)  # 0 and -1 mean off, as in vLLM
        if body.logit_bias:
            try:
                values["logit_bias"] = {int(k): v for k, v in body.logit_bias.items()}
            except ValueError:
                raise APIError(
                    400, "logit_bias keys must be token ids (integers)", param="logit_bias"
                ) from None
        limit = self.config.max_tokens if max_tokens is None else max_tokens
        params = SamplingParams(
            max_new_tokens=min(limit, self.config.max_tokens),
            stop_ids=tuple(stop_ids),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            **values,
        )
        try:
            params.validate(self.vocab_size)
        except ShoshinError as exc:
            raise APIError(400, str(exc)) from None
        seed = params.seed
        return [
            replace(params, seed=None if seed is None else (seed + i) % 2**64)
            for i in range(body.n)
        ]

    def chat_prompt(self, body: ChatCompletionRequest) -> tuple[list[int], int]:
        """Token ids of the conversation, cueing the assistant's turn, and how many messages were dropped.

        The run's chat template renders it (role tokens, or plain `User:` lines for models without
        them). Oldest turns go first (the system prompt stays) while the prompt leaves no room for
        a reply of min(max_tokens, half the window) tokens.
        """
        messages = _messages(body.messages)
        wanted = min(
            body.max_completion_tokens or body.max_tokens or self.config.max_tokens,
            self.config.max_tokens,
        )
        room = min(wanted, self.context // 2) if self.context else 0
        ids, dropped = fit_messages(self.template, messages, self.context, room)
        if not ids:  # a plain-text template, and a char tokenizer that knows none of the characters
            raise APIError(400, "the messages hold no token this model knows", param="messages")
        if self.context is not None and len(ids) + room > self.context:
            raise APIError(
                400,
                f"the last message does not fit in the model's context window of {self.context} "
                "tokens with room for a reply; shorten it",
                param="messages",
                code="context_length_exceeded",
            )
        return ids, dropped

    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        """The token ids of each prompt: text is encoded, token ids are checked."""
        prompt = body.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        out = []
        for item in prompt:
            ids = self._encode_prompt(item) if isinstance(item, str) else list(item)
            if not ids:
                raise APIError(400, "a token-id prompt must hold at least one id", param="prompt")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(
                    400,
                    f"token id {bad[0]} is not in the vocabulary (0..{self.vocab_size - 1})",
                    param="prompt",
                )
            if self.context is not None and len(ids) > self.context:
                raise APIError(
                    400,
                    f"the prompt is {len(ids)} tokens; this model's context window is "
                    f"{self.context} tokens (lm_eval cuts prompts itself when given "
                    f"max_length={self.context} in --model_args)",
                    param="prompt",
                    code="context_length_exceeded",
                )
            out.append(ids)
        return out

    def _encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if ids:
            return ids
        if EOT not in self.tokenizer.special_tokens:
            raise APIError(
                400,
                "the prompt holds no token this model knows; send some text it was trained on",
                param="prompt",
            )
        return [self.tokenizer.special_tokens[EOT]]  # start a new document, as in training

    # -- log-probabilities in OpenAI's two formats ------------------------------------------

    def chat_logprobs(self, tokens: list[tuple[int, TokenLogprob | None]]) -> ChatLogprobs:
        def entry(token: int, logprob: float) -> dict:
            raw = token_bytes(self.tokenizer, token)
            text = raw.decode("utf-8", errors="replace")
            return {"token": text, "logprob": logprob, "bytes": list(raw)}

        content = [
            ChatTokenLogprob(
                **entry(t, lp.logprob), top_logprobs=[TopLogprob(**entry(*a)) for a in lp.top]
            )
            for t, lp in tokens
            if lp is not None
        ]
        return ChatLogprobs(content=content)

    def completion_logprobs(
        self, entries: list[tuple[int, TokenLogprob | None]], offset: int = 0
    ) -> CompletionLogprobs:
        """Legacy logprobs of a run of tokens; text_offset counts characters from `offset`."""
        decoder, offsets, at = StreamDecoder(self.tokenizer), [], offset
        for token, _ in entries:
            offsets.append(at)
            at += len(decoder.push(token))
        return CompletionLogprobs(
            tokens=[token_text(self.tokenizer, t) for t, _ in entries],
            token_logprobs=[None if lp is None else lp.logprob for _, lp in entries],
            top_logprobs=[
                None if lp is None else {token_text(self.tokenizer, a): v for a, v in lp.top}
                for _, lp in entries
            ],
            text_offset=offsets,
        )


def encode_with_special_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of text in which the names of special tokens (`<|endoftext|>`) stand for those tokens.

    This is what vLLM's /tokenize does (Hugging Face tokenizers split added tokens out of text), and
    what its clients rely on: the lm-evaluation-harness learns the id of the end-of-text token by
    tokenizing its name. Everywhere else text stays text (`Tokenizer.encode`).
    """
    specials = tokenizer.special_tokens
    if not specials:
        return tokenizer.encode(text)
    names = sorted(specials, key=len, reverse=True)  # the longest name wins where two overlap
    ids: list[int] = []
    for i, piece in enumerate(re.split("(" + "|".join(map(re.escape, names)) + ")", text)):
        if i % 2:
            ids.append(specials[piece])
        elif piece:
            ids += tokenizer.encode(piece)
    return ids


def tokenizer_info(server: Server) -> TokenizerInfo:
    """The special tokens and chat template of the served tokenizer, as vLLM's /tokenizer_info.

    They match what `shoshin export` writes for transformers: a document starts after
    `<|endoftext|>` (bos, also the padding), and a chat model's turn ends at `<|end|>` (eos).
    """
    from shoshin.interop.export import CHAT_TEMPLATE

    tok = server.tokenizer
    specials = tok.special_tokens
    chat = is_chat_tokenizer(tok)
    eot = EOT if EOT in specials else None
    return TokenizerInfo(
        tokenizer_class="CharTokenizer" if isinstance(tok, CharTokenizer) else "BpeTokenizer",
        bos_token=eot,
        eos_token=END if chat else eot,
        pad_token=eot,
        unk_token="<unk>" if "<unk>" in specials else None,
        chat_template=CHAT_TEMPLATE if chat else None,
        model_max_length=server.context,
        vocab_size=server.vocab_size,
        special_tokens=dict(specials),
    )


def _messages(messages) -> list[dict[str, str]]:
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


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
    streamed = {**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}}

    page = resources.files("shoshin.serving").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        s = server.scheduler
        return Health(
            model=model_id, active=s.active, queued=s.queued, slots=s.slots, steps=s.steps
        )

    @app.get("/v1/models", response_model=ModelList, **v1)
    async def list_models() -> ModelList:
        card = ModelCard(
            id=model_id,
            created=server.created,
            context_window=server.context,
            max_model_len=server.context,
        )
        return ModelList(data=[card])

    @app.post("/tokenize", response_model=TokenizeResponse, **v1)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        server.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "send either prompt (text) or messages (a chat)", param="prompt")
        if body.messages is not None:
            ids = server.template.render(_messages(body.messages), body.add_generation_prompt)
        else:
            ids = encode_with_special_tokens(tokenizer, body.prompt)
        return TokenizeResponse(count=len(ids), max_model_len=server.context, tokens=ids)

    @app.get("/tokenizer_info", response_model=TokenizerInfo, **v1)
    async def get_tokenizer_info() -> TokenizerInfo:
        return tokenizer_info(server)

    @app.post("/detokenize", response_model=DetokenizeResponse, **v1)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        server.check_model(body.model)
        bad = [t for t in body.tokens if not 0 <= t < server.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is not in the vocabulary", param="tokens")
        return DetokenizeResponse(prompt=tokenizer.decode(body.tokens))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=streamed,
        dependencies=v1["dependencies"],
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.check_model(body.model)
        prompt, dropped = server.chat_prompt(body)
        top = body.top_logprobs or 0
        params = server.params(
            body,
            body.max_completion_tokens or body.max_tokens,
            server.template.stop_ids,
            logprobs=top if body.logprobs else None,
        )
        server.check_capacity(len(params))
        headers = {TRIMMED_HEADER: str(dropped)}
        trimmed = Trimmed(dropped_messages=dropped) if dropped else None
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id,
        }
        stops = body.stop_strings() + server.template.stop_strings
        if not body.stream:
            choices = Choices(
                server, [prompt] * len(params), params, stops, request.is_disconnected
            )
            texts = await choices.collect()
            result = ChatCompletion(
                **meta,
                choices=[
                    ChatChoice(
                        index=i,
                        message=AssistantMessage(content=server.template.reply_content(text)),
                        finish_reason=c.finish_reason,
                        logprobs=server.chat_logprobs(
                            [t for t in c.tokens if t[0] not in c.stop_ids]
                        )
                        if body.logprobs
                        else None,
                    )
                    for i, (text, c) in enumerate(zip(texts, choices.items, strict=True))
                ],
                usage=_usage(len(prompt), sum(len(c.tokens) for c in choices.items)),
                shoshin=trimmed,
            )
            return JSONResponse(result.model_dump(), headers=headers)
        choices = Choices(server, [prompt] * len(params), params, stops)
        chunk = {**meta, "object": "chat.completion.chunk"}

        async def events() -> AsyncIterator[str]:
            for i in range(len(params)):
                first = {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                }
                yield _sse(
                    {
                        **chunk,
                        "choices": [first],
                        **({"shoshin": trimmed.model_dump()} if trimmed else {}),
                    }
                )
            async for delta in choices.deltas():
                choice = {
                    "index": delta.index,
                    "delta": {"content": delta.text} if delta.text else {},
                    "finish_reason": delta.finish_reason,
                }
                if body.logprobs:
                    choice["logprobs"] = server.chat_logprobs(delta.tokens).model_dump()
                yield _sse({**chunk, "choices": [choice]})
            if body.stream_options and body.stream_options.include_usage:
                done = sum(len(c.tokens) for c in choices.items)
                yield _sse(
                    {**chunk, "choices": [], "usage": _usage(len(prompt), done).model_dump()}
                )
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses=streamed,
        dependencies=v1["dependencies"],
    )
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        prompts = server.completion_prompts(body)
        echo_logprobs = body.logprobs if body.echo else None
        params = server.params(
            body, body.max_tokens, server.stop_ids, body.logprobs, prompt_logprobs=echo_logprobs
        )
        n = len(params)
        server.check_capacity(n * len(prompts))
        all_prompts = [p for p in prompts for _ in range(n)]  # choice k: prompt k // n
        all_params = params * len(prompts)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        usage_prompt = sum(len(p) for p in prompts)
        echoed = [tokenizer.decode(p) if body.echo else "" for p in all_prompts]

        def logprobs_of(k: int, tokens, with_prompt: bool) -> CompletionLogprobs | None:
            if body.logprobs is None:
                return None
            entries = list(tokens)
            if with_prompt:
                generation = choices.generations[k]
                entries = [
                    *zip(generation.prompt, generation.prompt_logprobs, strict=True),
                    *entries,
                ]
            return server.completion_logprobs(entries, 0 if with_prompt else len(echoed[k]))

        if not body.stream:
            choices = Choices(
                server, all_prompts, all_params, body.stop_strings(), request.is_disconnected
            )
            texts = await choices.collect()
            return Completion(
                **meta,
                choices=[
                    CompletionChoice(
                        index=k,
                        text=echoed[k] + texts[k],
                        finish_reason=c.finish_reason,
                        logprobs=logprobs_of(k, c.tokens, body.echo),
                    )
                    for k, c in enumerate(choices.items)
                ],
                usage=_usage(usage_prompt, sum(len(c.tokens) for c in choices.items)),
            )
        choices = Choices(server, all_prompts, all_params, body.stop_strings())
        chunk = {**meta, "object": "text_completion"}

        async def events() -> AsyncIterator[str]:
            started = [False] * len(all_prompts)
            async for delta in choices.deltas():
                k, text, with_prompt = delta.index, delta.text, False
                if (
                    body.echo and not started[k]
                ):  # the prompt first (its log-probabilities are ready)
                    text, with_prompt = echoed[k] + text, True
                started[k] = True
                choice = {
                    "index": k,
                    "text": text,
                    "finish_reason": delta.finish_reason,
                    "logprobs": None,
                }
                lp = logprobs_of(k, delta.tokens, with_prompt)
                if lp is not None:
                    choice["logprobs"] = lp.model_dump()
                yield _sse({**chunk, "choices": [choice]})
            if body.stream_options and body.stream_options.include_usage:
                done = sum(len(c.tokens) for c in choices.items)
                yield _sse(
                    {**chunk, "choices": [], "usage": _usage(usage_prompt, done).model_dump()}
                )
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


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
