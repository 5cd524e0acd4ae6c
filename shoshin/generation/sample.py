"""`shoshin sample`: text in, streamed text out, on the engine or the naive reference."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch.nn as nn

from shoshin.data.chat import is_chat_tokenizer, render_chat, stop_token_ids
from shoshin.data.tokenizers import EOT, Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.engine import Engine, SamplingParams
from shoshin.generation.sampling import naive_generate
from shoshin.generation.streaming import StopStrings, TextStream


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids to continue: a user message for chat models, the text itself otherwise."""
    if is_chat_tokenizer(tokenizer):
        return render_chat(tokenizer, [{"role": "user", "content": prompt}], True)[0]
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

    Chat models answer `prompt` as a user message and stop at the end of their reply.
    """
    ids = prompt_ids(tokenizer, prompt)
    params = replace(params, stop_ids=[*params.stop_ids, *stop_token_ids(tokenizer)]).validate()
    if use_cache:
        yield from TextStream(Engine(model), tokenizer, ids, params, stop_strings)
        return
    new = naive_generate(
        model, ids, params.max_new_tokens, params.temperature, params.top_k, params.top_p,
        params.seed, params.stop_ids, params.stop_sequences,
    )  # fmt: skip
    if new and new[-1] in params.stop_ids:
        new = new[:-1]
    stops = StopStrings(stop_strings)
    yield stops.push(tokenizer.decode(new)) + stops.flush()
