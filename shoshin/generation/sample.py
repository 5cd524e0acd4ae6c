"""`shoshin sample`: text in, streamed text out, on the engine or the naive reference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch.nn as nn

from shoshin.data.chat import is_chat_tokenizer, stop_token_ids
from shoshin.data.tokenizers import EOT, Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.chat import chat_template
from shoshin.generation.engine import Engine
from shoshin.generation.params import SamplingParams
from shoshin.generation.sampling import naive_generate
from shoshin.generation.streaming import ReplyText, TextStream


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids to continue: a user message for chat models, the text itself otherwise."""
    if is_chat_tokenizer(tokenizer):
        return chat_template(tokenizer).render([{"role": "user", "content": prompt}])
    ids = tokenizer.encode(prompt)
    if ids:
        return ids
    if EOT not in tokenizer.special_tokens:
        raise ShoshinError("the prompt is empty (or all unknown characters); pass --prompt TEXT")
    return [tokenizer.special_tokens[EOT]]  # start a new document


def sample_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    params: SamplingParams,
    use_cache: bool = True,
    stop_strings: Sequence[str] = (),
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece (all at once with use_cache=False).

    Chat models answer `prompt` as a user message; the reply ends at its end token or any role
    token, which is never shown. Every model stops at `<|endoftext|>`.
    """
    ids = prompt_ids(tokenizer, prompt)
    params = replace(params, stop_ids=[*params.stop_ids, *stop_token_ids(tokenizer)])
    if use_cache:
        yield from TextStream(Engine(model), tokenizer, ids, params, stop_strings)
        return
    reply = ReplyText(tokenizer, params.stop_ids, stop_strings)
    text = "".join(reply.push(token) for token in naive_generate(model, ids, params))
    yield text + ("" if reply.stopped else reply.flush())
