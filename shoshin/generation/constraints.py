"""Grammar-constrained decoding: each row may carry a grammar its output must match.

A generation whose SamplingParams has a `grammar` (a Lark grammar in llguidance's dialect, where
`%json {SCHEMA}` stands for any JSON value valid against SCHEMA) gets a `RowConstraint` from the
engine's `Constraints`; the one decode loop (shoshin.generation.engine.Batch) asks it for the
tokens allowed next, masks every other logit to -inf before sampling, and tells it each token
chosen. So constrained rows share batches, streaming, n > 1, log-probabilities, penalties and stop
sequences with every other row; nothing here decodes.

The library is llguidance (the `structured` extra), chosen by measurement (docs/BENCHMARKS.md,
benchmarks/grammar_libraries.py): it takes any vocabulary as a list of token bytes (shoshin's char
and byte-level BPE tokenizers as well as Hugging Face ones), compiles a schema in milliseconds
without a per-vocabulary precomputation, computes a mask in tens of microseconds, and names the
JSON Schema keywords it cannot enforce instead of silently dropping them.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from shoshin.data.chat import CALL_CLOSE, CALL_OPEN
from shoshin.data.tokenizers import Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.streaming import token_bytes

EXTRA_MISSING = (
    "constrained decoding (response_format, tools) needs the `structured` extra: "
    "pip install 'shoshin[structured]'"
)
# JSON as Python's json.dumps writes it (", " and ": ", no other whitespace between tokens): the
# tool-call format's own spelling (shoshin.data.chat), and an untrained model cannot wander in
# blank space instead of closing the value.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT = {"type": "object"}
_COMPILED = 64  # distinct grammars kept compiled (a matcher is cheap to copy, slower to build)
# Byte value -> its 8 bits, lowest first: a packed mask's bytes (little-endian words) unpack to
# tokens 8 x byte + bit in one lookup.
_BYTE_BITS = (torch.arange(256)[:, None] >> torch.arange(8) & 1).bool()


def token_table(tokenizer: Tokenizer) -> list[bytes]:
    """The bytes each token id stands for; special tokens (which text never produces) are empty."""
    specials = set(tokenizer.special_tokens.values())
    return [
        b"" if i in specials else token_bytes(tokenizer, i) for i in range(tokenizer.vocab_size)
    ]


class _Wrapper:
    """What llguidance reads of a tokenizer: token bytes, an end token, and an encoder (used only
    for the fixed strings of a grammar; masks are computed on bytes, so any vocabulary works)."""

    def __init__(self, table: Sequence[bytes], eos: int, encode):
        self.tokens = list(table)
        self.eos_token_id = eos
        self.bos_token_id = None
        self.special_token_ids = [i for i, t in enumerate(table) if not t]
        self.is_tokenizer_wrapper = True
        # llguidance asks for the same few strings (a schema's keys) over and over while decoding
        self._encode = functools.lru_cache(maxsize=4096)(encode)

    def __call__(self, text: bytes | str) -> list[int]:
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        return list(self._encode(text))


def json_schema_grammar(schema: dict) -> str:
    """The grammar of one JSON value valid against `schema` (JSON Schema, draft 2020-12 subset)."""
    return "start: %json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def tool_call_grammar(
    functions: Sequence[tuple[str, dict]], parallel: bool = True, free: str | None = None
) -> str:
    """The grammar of a reply that calls one of `functions` ((name, JSON Schema of its arguments)):
    `<tool_call>{"name": NAME, "arguments": {...}}</tool_call>` lines, one or (parallel) more.

    `free` (None: a call is required) is what the model may write instead: "text" (anything not
    starting with a call) or a JSON Schema's grammar from json_schema_grammar."""
    one_of = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, arguments in functions
    ]
    call = {"anyOf": one_of} if len(one_of) > 1 else one_of[0]
    rules = [
        "calls: call" + (' ("\\n" call)*' if parallel else ""),
        f"call: {json.dumps(CALL_OPEN)} %json {json.dumps({**call, 'x-guidance': JSON_OPTIONS})}"
        f" {json.dumps(CALL_CLOSE)}",
    ]
    if free is None:
        return "\n".join(["start: calls", *rules])
    if free == "text":
        other = ['free: TEXT | ""', f"TEXT: /(?s:.+)/ & ~/(?s:{re.escape(CALL_OPEN)}.*)/"]
    else:
        other = ["free: " + free.removeprefix("start: ")]
    return "\n".join(["start: calls | free", *rules, *other])


def check_installed() -> None:
    """A ShoshinError naming the extra to install when llguidance is missing."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        raise ShoshinError(EXTRA_MISSING) from None


class Constraints:
    """Compiles grammars against one tokenizer's vocabulary and starts a RowConstraint per row.

    `end_id` is the token llguidance offers when the grammar may end (the row's own stop tokens
    stand in for it, see RowConstraint.allowed).
    """

    def __init__(self, tokenizer: Tokenizer, end_id: int | None = None):
        check_installed()
        import llguidance

        self.table = token_table(tokenizer)
        self.vocab_size = len(self.table)
        specials = [i for i, t in enumerate(self.table) if not t]
        if end_id is None:
            end_id = specials[0] if specials else self.vocab_size - 1
        self.end_id = end_id
        wrapper = _Wrapper(self.table, end_id, tokenizer.encode)
        self.lltok = llguidance.LLTokenizer(wrapper, slices=llguidance.LLTokenizer.json_slices())
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, grammar: str):
        """A fresh matcher for `grammar`; an invalid or unsupported one is a ShoshinError naming
        what the library refused (e.g. an unsupported JSON Schema keyword)."""
        import llguidance

        with self._lock:  # requests' threads and the scheduler's compile and share the cache
            matcher = self._compiled.get(grammar)
            if matcher is None:
                try:
                    text = llguidance.LLMatcher.grammar_from_lark(grammar)
                except ValueError as exc:  # not a grammar at all
                    raise ShoshinError(_plain_error(str(exc))) from None
                matcher = llguidance.LLMatcher(self.lltok, text, log_level=0)
                if matcher.is_error():
                    raise ShoshinError(_plain_error(matcher.get_error()))
                self._compiled[grammar] = matcher
                if len(self._compiled) > _COMPILED:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(grammar)
            return matcher.deep_copy()

    def start(self, grammar: str, stop_ids: Sequence[int]) -> RowConstraint:
        """The constraint state of one new row generating under `grammar`."""
        return RowConstraint(self, self.compile(grammar), stop_ids)

    def allowed(self, rows: Sequence[RowConstraint | None]) -> torch.Tensor | None:
        """A (rows, vocab) bool mask of the tokens each row may choose next: its grammar's, or
        every token for a row without one (None when no row has one).

        Where a grammar may end, the row's stop tokens are allowed (it then ends as any reply
        does); they never are before, and a row whose matcher failed may only stop. The masks are
        written row by row into one packed buffer (llguidance's thread pool costs more than it
        saves at these sizes, measured), adjusted through a numpy view, and unpacked by one
        table lookup: a handful of tensor operations per step, whatever the number of rows.
        """
        live = [i for i, r in enumerate(rows) if r is not None]
        if not live:
            return None
        words = (self.vocab_size + 31) // 32
        bits = torch.full((len(rows), words), -1, dtype=torch.int32)  # -1: every token
        packed = bits.numpy().view(np.uint32)  # shares the memory; cheap scalar access
        base, stride = bits.data_ptr(), words * 4
        for i in live:
            matcher, stops = rows[i].matcher, rows[i].stop_ids
            matcher.unsafe_compute_mask_ptr(base + i * stride, stride)
            if matcher.is_error():
                packed[i] = 0
            _set_bit(packed[i], self.end_id, False)
            if matcher.is_accepting() or matcher.is_error():
                for token in stops or [self.end_id]:
                    _set_bit(packed[i], token, True)
        masks = _BYTE_BITS[bits.view(torch.uint8).long()]  # (rows, words x 4, 8)
        return masks.view(len(rows), -1)[:, : self.vocab_size]


def _set_bit(words: np.ndarray, token: int, value: bool) -> None:
    """Allow (True) or forbid (False) `token` in one row of a packed mask (bit t % 32 of word
    t // 32, as llguidance writes it)."""
    bit = np.uint32(1 << (token % 32))
    if value:
        words[token // 32] |= bit
    else:
        words[token // 32] &= ~bit


class RowConstraint:
    """One row's place in its grammar: whether it is complete, and telling it each token chosen
    (the mask of what may come next is computed for all rows at once: Constraints.allowed)."""

    def __init__(self, constraints: Constraints, matcher, stop_ids: Sequence[int]):
        self.constraints, self.matcher = constraints, matcher
        self.stop_ids = list(stop_ids)

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more: the row ends here ("stop")."""
        return self.matcher.is_stopped()

    def advance(self, token: int) -> None:
        """Tell the grammar the token chosen (a stop token ends the row and is not its text)."""
        if token not in self.stop_ids:
            self.matcher.consume_token(token)


def _plain_error(message: str) -> str:
    """llguidance's error, on one line, without its internal location prefixes."""
    line = " ".join(message.split()).split(" 1 | ")[0]  # the rest quotes the grammar
    line = line.split("failed to compile JSON schema:")[-1].strip()
    line = line.replace("Unimplemented keys:", "unsupported JSON Schema keywords")
    return f"the grammar cannot be enforced: {line}"
