"""Tokenizers: `char` (one id per character) and byte-level `bpe` (Hugging Face `tokenizers`).

Both map text to a list of ids and back, carry a dict of special tokens (document and chat-role
markers), and save to / load from a folder as JSON.

`encode` treats its input as text only: a message that contains `<|end|>` or `<|user|>` is encoded
as those characters, never as the special token, so text cannot inject a role change or end a
document. Special-token ids are only ever placed by code (see shoshin.data.chat). Text that is not
valid Unicode (lone surrogates, escaped invalid bytes) is cleaned first, see shoshin.storage.text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from shoshin.errors import ShoshinError
from shoshin.storage.files import atomic_write_json, atomic_write_text
from shoshin.storage.text import clean_text

EOT = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)

CHAR_FILE = "char_tokenizer.json"
BPE_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int
    special_tokens: dict[str, int]

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def save(self, folder: Path) -> None: ...


class CharTokenizer:
    """One id per character seen in the corpus, then the special tokens.

    Characters never seen in the corpus are dropped when encoding (a char model cannot represent them).
    """

    def __init__(self, chars: Sequence[str], specials: Sequence[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {s: len(self.chars) + i for i, s in enumerate(specials)}
        self.itos = self.chars + list(specials)
        self.vocab_size = len(self.itos)

    @classmethod
    def train(cls, texts: Iterable[str], specials: Sequence[str]) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(sorted(chars), specials)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        return [stoi[c] for c in clean_text(text) if c in stoi]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def save(self, folder: Path) -> None:
        atomic_write_json(
            Path(folder) / CHAR_FILE,
            {"type": "char", "chars": self.chars, "special_tokens": list(self.special_tokens)},
        )


class BpeTokenizer:
    """Byte-level BPE trained with Hugging Face `tokenizers`; any text round-trips exactly."""

    def __init__(self, tokenizer):  # a tokenizers.Tokenizer
        self.tok = tokenizer
        # Split special tokens found in text like any other text (a runtime setting, not saved).
        self.tok.encode_special_tokens = True
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {
            t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special
        }

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, specials: Sequence[str]) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(specials),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(clean_text(text), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / BPE_FILE, self.tok.to_str())

    def with_special_tokens(self, tokens: Sequence[str]) -> BpeTokenizer:
        """A copy with `tokens` added as special tokens (those already present keep their ids)."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_str(self.tok.to_str())
        missing = [t for t in tokens if t not in self.special_tokens]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        return BpeTokenizer(tok)

    def sha256(self) -> str:
        """Fingerprint of the whole tokenizer (vocabulary, merges, special tokens, normalisation)."""
        return hashlib.sha256(self.tok.to_str().encode("utf-8")).hexdigest()


def train_tokenizer(
    kind: str, texts: list[str], vocab_size: int, specials: Sequence[str]
) -> Tokenizer:
    """Train a `char` or `bpe` tokenizer on `texts` with the given special tokens."""
    if kind == "char":
        return CharTokenizer.train(texts, specials)
    return BpeTokenizer.train(texts, vocab_size, specials)


def load_tokenizer(folder: Path) -> Tokenizer:
    """Load the tokenizer saved in `folder` (a run or checkpoint directory)."""
    folder = Path(folder)
    if (folder / CHAR_FILE).exists():
        data = json.loads((folder / CHAR_FILE).read_text(encoding="utf-8"))
        return CharTokenizer(data["chars"], data["special_tokens"])
    if (folder / BPE_FILE).exists():
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return BpeTokenizer(HFTokenizer.from_file(str(folder / BPE_FILE)))
        except Exception as exc:
            raise ShoshinError(
                f"{folder / BPE_FILE} is not a valid tokenizer file ({exc})"
            ) from None
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return _from_vocab_and_merges(folder)
    raise ShoshinError(f"no tokenizer in {folder} (expected {CHAR_FILE} or {BPE_FILE})")


def _from_vocab_and_merges(folder: Path) -> BpeTokenizer:
    """A Hugging Face GPT-2 or GPT-1 tokenizer saved as vocab.json + merges.txt (no tokenizer.json).

    GPT-1's BPE marks word ends with `</w>` and lowercases like BERT; GPT-2's is byte-level.
    The pipelines match those `transformers` builds for `GPT2Tokenizer` and `OpenAIGPTTokenizer`.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        if any(len(m) != 2 for m in merges):
            raise ValueError("each merges.txt line must hold two symbols")
        if "</w>" in "".join(vocab):
            tok = HFTokenizer(
                models.BPE(vocab, merges, unk_token="<unk>", end_of_word_suffix="</w>")
            )
            tok.normalizer = normalizers.BertNormalizer(lowercase=True)
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tok.decoder = decoders.BPEDecoder(suffix="</w>")
            specials = ["<unk>"]
        else:
            tok = HFTokenizer(models.BPE(vocab, merges))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            specials = [EOT]
    except Exception as exc:
        raise ShoshinError(
            f"{folder}/vocab.json + merges.txt are not a valid BPE tokenizer ({exc})"
        ) from None
    # Only tokens the vocabulary already has become special: that keeps every id where it was.
    tok.add_special_tokens([s for s in specials if s in vocab])
    return BpeTokenizer(tok)
