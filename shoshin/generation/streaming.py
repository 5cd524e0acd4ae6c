"""Text at the edge of generation: incremental decoding and stop strings.

Byte-level BPE can split one character over several tokens (an emoji is four bytes), so decoding
token by token would print half characters. StreamDecoder decodes a short window of recent ids
and emits only the new text, holding back a trailing U+FFFD (an unfinished UTF-8 sequence) until
the next token completes it. It works with any tokenizer that has `decode(ids) -> str`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

from shoshin.data.tokenizers import Tokenizer
from shoshin.generation.engine import Engine
from shoshin.generation.params import SamplingParams

REPLACEMENT = "\ufffd"


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE writes each byte as a printable character; this maps them back."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """The bytes one token stands for (a byte-level BPE token may hold part of a character)."""
    hf = getattr(tokenizer, "tok", None)  # a BpeTokenizer's tokenizers.Tokenizer
    if hf is not None and type(hf.decoder).__name__ == "ByteLevel":
        piece = hf.id_to_token(token) or ""
        alphabet = _byte_level_alphabet()
        if all(c in alphabet for c in piece):
            return bytes(alphabet[c] for c in piece)
    return tokenizer.decode([token]).encode("utf-8", errors="replace")


def token_text(tokenizer: Tokenizer, token: int) -> str:
    """One token as text, or `bytes:\\xNN...` when it holds only part of a character (as vLLM)."""
    raw = token_bytes(tokenizer, token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class StreamDecoder:
    """Token ids in, text increments out; never emits part of a character.

    After vLLM's incremental detokenizer: decoding ids[prefix:] against ids[prefix:read] keeps
    the tokenizer's view of the boundary (spaces, merges) while the work per token stays small.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # decoding starts here, a little before the text not yet emitted
        self.read = 0  # text of ids[:read] has been emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly '')."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read])
        text = decode(self.ids[self.prefix :])
        if len(text) <= len(before) or text.endswith(REPLACEMENT):
            return ""  # an unfinished character (or nothing visible yet): wait for more bytes
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]

    def flush(self) -> str:
        """The text still held back (e.g. a generation cut inside a character), as decoded."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(before) :]


class StopStrings:
    """Cuts a text stream at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what is safe to show. After a stop string, always ''."""
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = max((_overlap(self.pending, s) for s in self.stops), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a beginning of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class ReplyText:
    """A reply's token ids in, the text to show out: decoded incrementally, ended unseen by a stop
    token, and cut at the first stop string. The server and `TextStream` both use it.

    After it ends, `stopped` says whether a stop token or stop string ended it.
    """

    def __init__(self, tokenizer: Tokenizer, stop_ids: Sequence[int], stop_strings: Sequence[str]):
        self.decoder = StreamDecoder(tokenizer)
        self.stops = StopStrings(stop_strings)
        self.stop_ids = set(stop_ids)
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; return the text it makes safe to show (possibly '')."""
        if self.stopped:
            return ""
        if token in self.stop_ids:
            self.stopped = True  # an end-of-reply or role token: not part of the text
            return self.flush()
        piece = self.stops.push(self.decoder.push(token))
        self.stopped = self.stops.stopped
        self.text += piece
        return piece

    def flush(self) -> str:
        """The text still held back at the end (an unfinished character, a possible stop string)."""
        piece = self.stops.push(self.decoder.flush()) + self.stops.flush()
        self.text += piece
        return piece


class TextStream:
    """Generate and decode at once: iterate for text pieces; afterwards `ids`, `text`,
    `finish_reason` ("stop" or "length") and `generation` (log-probabilities) describe the reply.

    Stop tokens end the reply without being shown; so do stop strings (cut from the text).
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        stop_strings: Sequence[str] = (),
        cache=None,
    ):
        self.engine, self.cache = engine, cache
        self.generation = engine.generation(prompt_ids, params)
        self.reply = ReplyText(tokenizer, params.stop_ids, stop_strings)
        self.finish_reason: str | None = None

    @property
    def ids(self) -> list[int]:
        """The token ids produced (a stop token included)."""
        return self.generation.tokens

    @property
    def text(self) -> str:
        return self.reply.text

    def __iter__(self) -> Iterator[str]:
        for (token,) in self.engine.run([self.generation], self.cache):
            if token is None:
                continue
            piece = self.reply.push(token)
            if piece:
                yield piece
            if self.reply.stopped:
                self.finish_reason = "stop"
                return
        piece = self.reply.flush()
        self.finish_reason = self.generation.finish_reason
        if piece:
            yield piece
