"""Text at the edge of generation: incremental decoding and stop strings.

Byte-level BPE can split one character over several tokens (an emoji is four bytes), so decoding
token by token would print half characters. StreamDecoder decodes a short window of recent ids
and emits only the new text, holding back a trailing U+FFFD (an unfinished UTF-8 sequence) until
the next token completes it. It works with any tokenizer that has `decode(ids) -> str`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from shoshin.data.tokenizers import Tokenizer
from shoshin.generation.engine import Engine, SamplingParams
from shoshin.generation.sampling import ends_with_stop

REPLACEMENT = "\ufffd"


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


class TextStream:
    """Generate and decode at once: iterate for text pieces; afterwards `ids`, `text` and
    `finish_reason` ("stop" or "length") describe the whole reply.

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
        self.engine, self.tokenizer = engine, tokenizer
        self.prompt_ids, self.params, self.cache = prompt_ids, params, cache
        self.stop_strings = stop_strings
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        decoder = StreamDecoder(self.tokenizer)
        stops = StopStrings(self.stop_strings)
        stop_ids = set(self.params.stop_ids)
        self.finish_reason = "length"
        for token in self.engine.stream(self.prompt_ids, self.params, self.cache):
            self.ids.append(token)
            if token in stop_ids:
                self.finish_reason = "stop"
                break
            piece = stops.push(decoder.push(token))
            if piece:
                self.text += piece
                yield piece
            if stops.stopped:
                self.finish_reason = "stop"
                break
        else:
            if ends_with_stop(self.ids, stop_ids, self.params.stop_sequences):
                self.finish_reason = "stop"
            piece = stops.push(decoder.flush()) + stops.flush()
            if piece:
                self.text += piece
                yield piece
