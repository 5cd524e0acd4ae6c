"""`/v1/chat/completions` and `/v1/completions`: each endpoint written once, streamed or whole."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request

from shoshin.serving.bridge import Choices, Delta
from shoshin.serving.errors import ERROR_RESPONSES
from shoshin.serving.middleware import authorize
from shoshin.serving.respond import Reply, generated_tokens, respond, sse
from shoshin.serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Trimmed,
)
from shoshin.serving.service import CurrentServer, Server
from shoshin.serving.structured import CallStream, Structured, reply_message, structured_output
from shoshin.serving.translate import (
    chat_logprobs,
    chat_prompt,
    completion_logprobs,
    completion_prompts,
    sampling_params,
    usage,
)

TRIMMED_HEADER = "X-Shoshin-Dropped-Messages"
STREAMED = {**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}}

router = APIRouter(dependencies=[Depends(authorize)], responses=STREAMED)


class _Chunks(Reply):
    """What both endpoints' streams end with: usage when asked for (`stream_options`), `[DONE]`."""

    body: ChatCompletionRequest | CompletionRequest
    chunk_meta: dict
    prompt_tokens: int

    def closing(self, choices: Choices):
        if self.body.stream_options and self.body.stream_options.include_usage:
            done = usage(self.prompt_tokens, generated_tokens(choices)).model_dump()
            yield sse({**self.chunk_meta, "choices": [], "usage": done})
        yield sse("[DONE]")


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request, server: CurrentServer):
    server.check_model(body.model)
    max_tokens = body.max_completion_tokens or body.max_tokens
    structured = structured_output(server, body)
    prompt, dropped = chat_prompt(server, body.messages, max_tokens, structured.tools)
    top = body.top_logprobs or 0
    params = sampling_params(
        server,
        body,
        max_tokens,
        server.template.stop_ids,
        logprobs=top if body.logprobs else None,
        grammar=structured.grammar,
    )
    server.check_capacity(len(params))
    stops = body.stop_strings() + server.template.stop_strings
    reply = ChatReply(server, body, len(prompt), dropped, structured)
    return await respond(server, request, reply, [prompt] * len(params), params, stops, body.stream)


class ChatReply(_Chunks):
    """A chat completion, or its `chat.completion.chunk`s ending in `[DONE]`."""

    def __init__(
        self,
        server: Server,
        body: ChatCompletionRequest,
        prompt_tokens: int,
        dropped: int,
        structured: Structured,
    ):
        self.server, self.body, self.prompt_tokens = server, body, prompt_tokens
        self.structured = structured
        self.headers = {TRIMMED_HEADER: str(dropped)}
        self.trimmed = Trimmed(dropped_messages=dropped) if dropped else None
        self.meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": server.model_id,
        }
        self.chunk_meta = {**self.meta, "object": "chat.completion.chunk"}

    def opening(self, choices: Choices):
        extra = {"shoshin": self.trimmed.model_dump()} if self.trimmed else {}
        for i in range(len(choices.items)):
            first = {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            yield sse({**self.chunk_meta, "choices": [first], **extra})

    def chunk(self, choices: Choices, delta: Delta):
        if self.structured.calls:  # text that may be a tool call waits until it is known
            stream = self.structured.streams.setdefault(delta.index, CallStream())
            pieces = stream.push(delta.text, delta.finish_reason)
        else:
            pieces = [{"content": delta.text}] if delta.text else []
            if delta.finish_reason is not None:
                pieces.append({"finish_reason": delta.finish_reason})
        if self.body.logprobs and delta.tokens and not pieces:
            pieces = [{}]  # the tokens' log-probabilities go out with them, text or not
        for k, piece in enumerate(pieces):
            choice = {
                "index": delta.index,
                "delta": {} if "finish_reason" in piece else piece,
                "finish_reason": piece.get("finish_reason"),
            }
            if self.body.logprobs and k == 0:
                choice["logprobs"] = chat_logprobs(self.server.tokenizer, delta.tokens).model_dump()
            yield sse({**self.chunk_meta, "choices": [choice]})

    def whole(self, choices: Choices, texts: list[str]) -> ChatCompletion:
        server = self.server

        def logprobs(c):
            kept = [t for t in c.tokens if t[0] not in c.stop_ids]
            return chat_logprobs(server.tokenizer, kept) if self.body.logprobs else None

        return ChatCompletion(
            **self.meta,
            choices=[
                self.choice(i, server.template.reply_content(text), c.finish_reason, logprobs(c))
                for i, (text, c) in enumerate(zip(texts, choices.items, strict=True))
            ],
            usage=usage(self.prompt_tokens, generated_tokens(choices)),
            shoshin=self.trimmed,
        )

    def choice(self, index: int, text: str, finish_reason: str, logprobs) -> ChatChoice:
        """One whole choice: its text, or the tool calls it holds."""
        content, calls, reason = reply_message(self.structured, text, finish_reason)
        return ChatChoice(
            index=index,
            message=AssistantMessage(content=content, tool_calls=calls),
            finish_reason=reason,
            logprobs=logprobs,
        )


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request, server: CurrentServer):
    server.check_model(body.model)
    prompts = completion_prompts(server, body)
    echo_logprobs = body.logprobs if body.echo else None
    params = sampling_params(
        server, body, body.max_tokens, server.stop_ids, body.logprobs, echo_logprobs
    )
    n = len(params)
    server.check_capacity(n * len(prompts))
    all_prompts = [p for p in prompts for _ in range(n)]  # choice k: prompt k // n
    reply = CompletionReply(server, body, all_prompts, sum(len(p) for p in prompts))
    return await respond(
        server, request, reply, all_prompts, params * len(prompts), body.stop_strings(), body.stream
    )


class CompletionReply(_Chunks):
    """A legacy text completion (with `echo`, the prompt first), or its chunks ending in `[DONE]`."""

    def __init__(
        self, server: Server, body: CompletionRequest, prompts: list[list[int]], prompt_tokens: int
    ):
        self.server, self.body, self.prompt_tokens = server, body, prompt_tokens
        self.meta = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": server.model_id,
        }
        self.chunk_meta = {**self.meta, "object": "text_completion"}
        self.echoed = [server.tokenizer.decode(p) if body.echo else "" for p in prompts]
        self.started = [False] * len(prompts)

    def logprobs(self, choices: Choices, k: int, tokens, with_prompt: bool):
        """Choice k's legacy logprobs of `tokens`, after its prompt's when `with_prompt`."""
        if self.body.logprobs is None:
            return None
        entries = list(tokens)
        if with_prompt:
            generation = choices.generations[k]
            entries = [*zip(generation.prompt, generation.prompt_logprobs, strict=True), *entries]
        offset = 0 if with_prompt else len(self.echoed[k])
        return completion_logprobs(self.server.tokenizer, entries, offset)

    def chunk(self, choices: Choices, delta: Delta):
        k, text, with_prompt = delta.index, delta.text, False
        if self.body.echo and not self.started[k]:  # the prompt first (its logprobs are ready)
            text, with_prompt = self.echoed[k] + text, True
        self.started[k] = True
        lp: CompletionLogprobs | None = self.logprobs(choices, k, delta.tokens, with_prompt)
        choice = {
            "index": k,
            "text": text,
            "finish_reason": delta.finish_reason,
            "logprobs": None if lp is None else lp.model_dump(),
        }
        yield sse({**self.chunk_meta, "choices": [choice]})

    def whole(self, choices: Choices, texts: list[str]) -> Completion:
        return Completion(
            **self.meta,
            choices=[
                CompletionChoice(
                    index=k,
                    text=self.echoed[k] + texts[k],
                    finish_reason=c.finish_reason,
                    logprobs=self.logprobs(choices, k, c.tokens, self.body.echo),
                )
                for k, c in enumerate(choices.items)
            ],
            usage=usage(self.prompt_tokens, generated_tokens(choices)),
        )
