"""OpenAI's wire format to shoshin's and back: prompts and sampling parameters from a request,
log-probabilities and usage for a response.

Inference works on token ids; this is where a request's text, messages and options become ids and
a `SamplingParams`, and where tokens become OpenAI's chat and legacy-completions logprobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from shoshin.data.chat import plain_messages
from shoshin.data.tokenizers import EOT, Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.chat import fit_messages
from shoshin.generation.engine import TokenLogprob
from shoshin.generation.params import SamplingParams
from shoshin.generation.streaming import StreamDecoder, token_bytes, token_text
from shoshin.serving.errors import APIError
from shoshin.serving.schemas import (
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    CompletionLogprobs,
    CompletionRequest,
    TopLogprob,
    Usage,
)
from shoshin.serving.service import Server
from shoshin.serving.wire import SAMPLING_FIELDS

NEAR_ZERO = 1e-4  # temperature or top_p below this is greedy


def sampling_params(
    server: Server,
    body,
    max_tokens: int | None,
    stop_ids: Sequence[int],
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    grammar: str | None = None,
) -> list[SamplingParams]:
    """The sampling parameters of each of the request's n choices (choice i: seed + i), each
    generated under `grammar` when given (see serving.structured).

    Fields named like a SamplingParams field are copied by name; only values whose wire form
    differs from shoshin's are converted here.
    """
    values = {
        name: getattr(body, name)
        for name in SAMPLING_FIELDS
        if name in type(body).model_fields and getattr(body, name) is not None
    }
    # Values this close to 0 mean greedy anyway, and would overflow or underflow float32 sampling.
    if body.temperature < NEAR_ZERO or body.top_p < NEAR_ZERO:
        values.update(temperature=0.0, top_p=None)
    if "seed" in values:  # torch takes seeds modulo 2^64 too (a negative one: 2^64 + seed)
        values["seed"] %= 2**64
    if values.get("top_k", 0) <= 0:
        values.pop("top_k", None)  # 0 and -1 mean off, as in vLLM
    if getattr(body, "logit_bias", None):
        try:
            values["logit_bias"] = {int(k): v for k, v in body.logit_bias.items()}
        except ValueError:
            raise APIError(
                400, "logit_bias keys must be token ids (integers)", param="logit_bias"
            ) from None
    limit = server.config.max_tokens if max_tokens is None else max_tokens
    params = SamplingParams(
        max_new_tokens=min(limit, server.config.max_tokens),
        stop_ids=tuple(stop_ids),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        grammar=grammar,
        **values,
    )
    try:
        params.validate(server.vocab_size)
    except ShoshinError as exc:
        raise APIError(400, str(exc)) from None
    seed = params.seed
    return [
        replace(params, seed=None if seed is None else (seed + i) % 2**64)
        for i in range(getattr(body, "n", 1))
    ]


def messages(
    chat: Sequence[ChatMessage], tools: Sequence[dict] | None = None
) -> list[dict[str, str]]:
    """OpenAI messages as the chat template takes them (a developer message is a system one; tool
    calls, tool results and the tools offered are text in shoshin's tool-call format)."""
    plain = [
        {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.text(),
            "tool_calls": [c.model_dump() for c in m.tool_calls or []],
        }
        for m in chat
    ]
    return plain_messages(plain, tools)


def chat_prompt(
    server: Server,
    chat: Sequence[ChatMessage],
    max_tokens: int | None,
    tools: Sequence[dict] | None = None,
) -> tuple[list[int], int]:
    """Token ids of the conversation, cueing the assistant's turn, and how many messages were dropped.

    The run's chat template renders it (role tokens, or plain `User:` lines for models without
    them), with `tools` offered after the system prompt. Oldest turns go first (the system prompt
    stays) while the prompt leaves no room for a reply of min(max_tokens, half the window) tokens.
    """
    context = server.context
    wanted = min(max_tokens or server.config.max_tokens, server.config.max_tokens)
    room = min(wanted, context // 2) if context else 0
    ids, dropped = fit_messages(server.template, messages(chat, tools), context, room)
    if not ids:  # a plain-text template, and a char tokenizer that knows none of the characters
        raise APIError(400, "the messages hold no token this model knows", param="messages")
    if context is not None and len(ids) + room > context:
        raise APIError(
            400,
            f"the last message does not fit in the model's context window of {context} "
            "tokens with room for a reply; shorten it",
            param="messages",
            code="context_length_exceeded",
        )
    return ids, dropped


def completion_prompts(server: Server, body: CompletionRequest) -> list[list[int]]:
    """The token ids of each prompt: text is encoded, token ids are checked."""
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be an empty list", param="prompt")
    out = []
    for item in prompt:
        ids = _encode_prompt(server.tokenizer, item) if isinstance(item, str) else list(item)
        if not ids:
            raise APIError(400, "a token-id prompt must hold at least one id", param="prompt")
        server.check_tokens(ids, "prompt")
        if server.context is not None and len(ids) > server.context:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens; this model's context window is "
                f"{server.context} tokens (lm_eval cuts prompts itself when given "
                f"max_length={server.context} in --model_args)",
                param="prompt",
                code="context_length_exceeded",
            )
        out.append(ids)
    return out


def _encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if ids:
        return ids
    if EOT not in tokenizer.special_tokens:
        raise APIError(
            400,
            "the prompt holds no token this model knows; send some text it was trained on",
            param="prompt",
        )
    return [tokenizer.special_tokens[EOT]]  # start a new document, as in training


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    """OpenAI's token counts of one response."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


# -- log-probabilities in OpenAI's two formats ------------------------------------------------


def chat_logprobs(
    tokenizer: Tokenizer, tokens: list[tuple[int, TokenLogprob | None]]
) -> ChatLogprobs:
    """The chat format: each token's text, bytes and log-probability, with its alternatives."""

    def entry(token: int, logprob: float) -> dict:
        raw = token_bytes(tokenizer, token)
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
    tokenizer: Tokenizer, entries: list[tuple[int, TokenLogprob | None]], offset: int = 0
) -> CompletionLogprobs:
    """Legacy logprobs of a run of tokens; text_offset counts characters from `offset`."""
    decoder, offsets, at = StreamDecoder(tokenizer), [], offset
    for token, _ in entries:
        offsets.append(at)
        at += len(decoder.push(token))
    return CompletionLogprobs(
        tokens=[token_text(tokenizer, t) for t, _ in entries],
        token_logprobs=[None if lp is None else lp.logprob for _, lp in entries],
        top_logprobs=[
            None if lp is None else {token_text(tokenizer, a): v for a, v in lp.top}
            for _, lp in entries
        ],
        text_offset=offsets,
    )
