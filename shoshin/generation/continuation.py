"""Continuing a prompt as text (`shoshin sample`, training's end-of-run sample): text in, streamed
text out, through the engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from shoshin.data.chat import is_chat_tokenizer, stop_token_ids
from shoshin.data.tokenizers import EOT, Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.contracts import LanguageModel
from shoshin.generation.conversation import chat_template
from shoshin.generation.engine import Engine, sliding_engine
from shoshin.generation.params import SamplingParams
from shoshin.generation.streaming import TextStream


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
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    params: SamplingParams,
    sliding: bool = False,
    stop_strings: Sequence[str] = (),
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece. `sliding`: past a full window, slide it
    by one token as the naive reference does (`--no-cache`), instead of keeping half of it.

    Chat models answer `prompt` as a user message; the reply ends at its end token or any role
    token, which is never shown. Every model stops at `<|endoftext|>`.
    """
    ids = prompt_ids(tokenizer, prompt)
    params = replace(params, stop_ids=[*params.stop_ids, *stop_token_ids(tokenizer)])
    engine = sliding_engine(model) if sliding else Engine(model)
    yield from TextStream(engine, tokenizer, ids, params, stop_strings)
