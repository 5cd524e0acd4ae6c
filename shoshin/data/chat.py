"""Chat rendering: each message becomes `<|role|>content<|end|>`, built from token ids directly.

Role markers are special tokens, so a message's text can never be mistaken for a role change.
The mask marks the tokens an assistant-only loss trains on: the assistant's words and its `<|end|>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoshin.data.tokenizers import ASSISTANT, END, EOT, SYSTEM, USER, Tokenizer

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def is_chat_tokenizer(tokenizer: Tokenizer) -> bool:
    """True when the tokenizer has the chat role tokens (the run was trained on chat data)."""
    return all(t in tokenizer.special_tokens for t in (USER, ASSISTANT, END))


def render_chat(
    tokenizer: Tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask of the assistant's tokens.

    With add_generation_prompt, the ids end with `<|assistant|>` so the model continues as the assistant.
    """
    special = tokenizer.special_tokens
    ids: list[int] = []
    mask: list[int] = []
    for message in messages:
        content = tokenizer.encode(message["content"])
        is_assistant = int(message["role"] == "assistant")
        ids += [special[ROLE_TOKENS[message["role"]]], *content, special[END]]
        mask += [0] + [is_assistant] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(0)
    return ids, mask


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that end a reply: `<|end|>`, `<|endoftext|>`, and every role token the tokenizer has (a
    model that emits one has begun another turn; it is never part of the reply's text)."""
    names = (END, EOT, *ROLE_TOKENS.values())
    return [tokenizer.special_tokens[t] for t in names if t in tokenizer.special_tokens]
