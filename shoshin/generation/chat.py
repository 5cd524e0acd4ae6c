"""Multi-turn chat on top of the engine: templates, a session with history trimming and cache
reuse, and the terminal loop behind `shoshin chat`.

The session keeps the conversation's KV cache (or LSTM state) between turns: the next prompt
starts with everything already in the cache, so only the new user message is prefilled. When the
conversation outgrows the model's window, the oldest turns are dropped (the system prompt stays);
the rendering then changes from the first dropped turn on and the cache is rebuilt from there.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TextIO

from shoshin.data.chat import ROLE_TOKENS, is_chat_tokenizer, stop_token_ids
from shoshin.data.tokenizers import ASSISTANT, END, EOT, Tokenizer
from shoshin.errors import Terminated
from shoshin.generation.engine import Engine
from shoshin.generation.params import SamplingParams, surface_defaults
from shoshin.generation.streaming import TextStream


class ChatTemplate(ABC):
    """How a conversation becomes token ids, and what ends the assistant's reply."""

    stop_ids: list[int]
    stop_strings: list[str]

    @abstractmethod
    def render(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Ids of the conversation, followed (by default) by the cue for the assistant to answer."""

    def reply_content(self, text: str) -> str:
        """The assistant message to record for a generated reply."""
        return text


class RoleTokenTemplate(ChatTemplate):
    """Runs trained on chat data: `<|role|>content<|end|>` with role special tokens. A reply ends at
    `<|end|>` or at any role token (the model has begun another turn)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self.stop_strings = []

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # As data.chat.render_chat, except that a reply may carry the exact "ids" the model produced:
        # re-encoding its text could tokenize differently (or drop special tokens it emitted),
        # which would break the cache reuse between turns.
        special = self.tokenizer.special_tokens
        ids: list[int] = []
        for m in messages:
            content = m["ids"] if "ids" in m else self.tokenizer.encode(m["content"])
            ids += [special[ROLE_TOKENS[m["role"]]], *content, special[END]]
        return ids + [special[ASSISTANT]] if add_generation_prompt else ids


class PlainTextTemplate(ChatTemplate):
    """Models without role tokens (plain-text runs, GPT-2): `User: ...` / `Assistant: ...` lines;
    a reply ends at the end of its line."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = [tokenizer.special_tokens[EOT]] if EOT in tokenizer.special_tokens else []
        self.stop_strings = ["\n"]

    def render(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        parts = []
        for m in messages:
            if m["role"] == "system":
                parts.append(m["content"] + "\n\n")
            else:
                parts.append(f"{m['role'].capitalize()}: {m['content']}\n")
        cue = "Assistant:" if add_generation_prompt else ""
        ids = self.tokenizer.encode("".join(parts) + cue)
        return ids or self.stop_ids[:1]  # a char tokenizer may know none of these characters

    def reply_content(self, text: str) -> str:
        return text.strip()


def chat_template(tokenizer: Tokenizer) -> ChatTemplate:
    """The run's chat template: role tokens when the tokenizer has them, plain text otherwise."""
    return (
        RoleTokenTemplate(tokenizer)
        if is_chat_tokenizer(tokenizer)
        else PlainTextTemplate(tokenizer)
    )


def fit_messages(
    template: ChatTemplate, messages: list[dict], window: int | None, room: int
) -> tuple[list[int], int]:
    """Render messages, dropping the oldest turns while the ids plus `room` exceed the window.

    A leading system message and the newest message always stay; turns go a user message and the
    reply to it at a time. Returns the ids (still too long if even that is not enough) and how many
    messages were dropped. Used by ChatSession and by the server.
    """
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head) :]

    def render(dropped: int) -> list[int]:
        return template.render(head + turns[dropped:])

    ids = render(0)
    if window is None or len(ids) + room <= window or len(turns) < 2:
        return ids, 0
    # Fewer messages render shorter: binary-search the fewest exchanges to drop (O(log n) renders,
    # so a client sending thousands of turns cannot make the server re-render them thousands of times).
    choices = sorted({min(2 * k, len(turns) - 1) for k in range(1, len(turns) // 2 + 1)})
    lo, hi = 0, len(choices) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(render(choices[mid])) + room <= window:
            hi = mid
        else:
            lo = mid + 1
    return render(choices[lo]), choices[lo]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ChatSession:
    """One conversation: send a user message, stream the reply; history and cache carried over."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        system: str | None = None,
        params: SamplingParams | None = None,
        template: ChatTemplate | None = None,
    ):
        self.engine, self.tokenizer = engine, tokenizer
        self.template = template or chat_template(tokenizer)
        self.params = params or surface_defaults("chat")
        self.system = system
        self.turns: list[
            dict
        ] = []  # user and assistant messages (with the reply's "ids"), oldest first
        self.cache = engine.new_cache(1)
        self.cache_ids: list[int] = []  # the tokens the cache holds, position by position
        self.dropped = 0  # messages dropped from the history so far to fit the window
        self.prefilled = 0  # prompt tokens the last reply had to run (the rest came from the cache)
        self.replies = 0
        self.last_prompt: list[int] = []  # the ids the last reply continued

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as the model sees it: system prompt (if any), then the kept turns."""
        return [{"role": m["role"], "content": m["content"]} for m in self._history()]

    def _history(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.turns = []
        self.replies = 0
        self.cache.reset()
        self.cache_ids = []

    def reply(self, text: str) -> str:
        """Send `text` and return the whole reply."""
        return "".join(self.send(text))

    def send(self, text: str) -> Iterator[str]:
        """Send a user message; yield the reply's text as it is generated."""
        self.turns.append({"role": "user", "content": text})
        ids = self.last_prompt = self._fit()
        self._reuse_cache(ids)
        seed = self.params.seed
        params = replace(
            self.params,
            stop_ids=[*self.params.stop_ids, *self.template.stop_ids],
            seed=None if seed is None else seed + self.replies,  # a fresh draw for every reply
        )
        self.replies += 1
        stream = TextStream(
            self.engine, self.tokenizer, ids, params, self.template.stop_strings, self.cache
        )
        try:
            yield from stream
        finally:  # also when the reader stops early (Ctrl-C): keep history and cache consistent
            said = stream.ids
            if said and said[-1] in params.stop_ids:
                said = said[:-1]
            content = self.template.reply_content(stream.text)
            self.turns.append({"role": "assistant", "content": content, "ids": said})
            held = int(self.cache.lengths[0])
            if stream.ids:  # the last token produced is never fed to the model
                fed = ids + stream.ids[:-1]
                self.cache_ids = fed if self.engine.window is None else fed[len(fed) - held :]
            else:  # stopped during the prefill (or max_new_tokens=0)
                window = self.engine.window
                cropped = window is not None and len(ids) > window  # the engine kept the end
                self.cache_ids = ids[len(ids) - held :] if cropped else ids[:held]

    def _fit(self) -> list[int]:
        """Render the conversation, dropping the oldest turns while it does not leave room for a
        reply in the window. The system prompt and the newest user message always stay."""
        window = self.engine.window
        room = min(self.params.max_new_tokens, window // 2) if window else 0
        ids, dropped = fit_messages(self.template, self._history(), window, room)
        del self.turns[
            :dropped
        ]  # the system prompt is not in self.turns: drops come from its front
        self.dropped += dropped
        return ids  # still too long: the engine keeps its last `window` tokens

    def _reuse_cache(self, ids: list[int]) -> None:
        """Keep the cached positions that match the new prompt; the engine prefills the rest."""
        n = _common_prefix(self.cache_ids, ids)
        if self.engine.window is None:
            if n < len(self.cache_ids) or n >= len(ids):
                n = 0  # an LSTM state cannot be rewound: start again
                self.cache.reset()
        else:
            n = min(n, len(ids) - 1)
            self.cache.lengths[0] = n  # rewinding a KV cache is just forgetting its tail
        self.prefilled = len(ids) - n


HELP = "commands: /reset (forget the conversation), /temperature X, /help, /quit"


def run_terminal_chat(
    session: ChatSession, read: Callable[[str], str] = input, out: TextIO | None = None
) -> None:
    """The `shoshin chat` loop: read a line, stream the reply; slash commands control the session.

    Ends on /quit or end of input (Ctrl-D); Ctrl-C stops the current reply only.
    """

    out = out or sys.stdout

    def say(text: str) -> None:
        out.write(text)
        out.flush()

    say(f"{HELP}\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            say("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command == "/quit":
                return
            if command == "/reset":
                session.reset()
                say("(conversation cleared)\n")
            elif command == "/temperature":
                try:
                    value = float(arg)
                    if value < 0:
                        raise ValueError
                except ValueError:
                    say("(usage: /temperature X with X >= 0; 0 is greedy)\n")
                    continue
                session.params = replace(session.params, temperature=value)
                say(f"(temperature {value:g})\n")
            elif command == "/help":
                say(HELP + "\n")
            else:
                say(f"(unknown command {command}; {HELP})\n")
            continue
        dropped = session.dropped
        say("bot> ")
        try:
            for piece in session.send(line):
                say(piece)
        except Terminated:  # SIGTERM ends the chat; Ctrl-C only stops the reply
            raise
        except KeyboardInterrupt:
            say(" (interrupted)")
        say("\n")
        if session.dropped > dropped:
            say(
                f"(dropped the {session.dropped - dropped} oldest messages to fit the context window)\n"
            )
