"""From corpus to training batches: split, tokenize, cache as numpy memmaps, sample windows.

The split is by document (or conversation), seeded; a corpus of a single text document is split
contiguously (first part train, last part validation), as the classic char-LM benchmarks do.
Tokenized data is cached under a fingerprint of the source bytes, tokenizer settings and split
settings, so a second run with the same data does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shoshin.config import DataConfig
from shoshin.data import IGNORE_INDEX
from shoshin.data.chat import render_chat
from shoshin.data.leakage import dedupe, overlap_report, split_digest
from shoshin.data.sources import Corpus, load_corpus
from shoshin.data.tokenizers import (
    CHAT_TOKENS,
    EOT,
    BpeTokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from shoshin.errors import ShoshinError
from shoshin.progress import SlowWork, format_bytes, format_seconds
from shoshin.storage.files import cache_dir

CACHE_VERSION = 3  # 2: meta.json holds the split digest and the leakage report
# 3: text is tokenized as text (a literal <|end|> is not the special token); BOMs are skipped

# A training split beyond this many bytes of text makes learning BPE merges and the overlap check
# take a noticeable time: the user is told what is happening.
NOTICEABLE_BYTES = 1_000_000


@dataclass
class Split:
    tokens: np.ndarray  # (N,) token ids
    mask: np.ndarray  # (N,) 1 where the token is a training target, 0 where the loss skips it


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: Split
    val: Split
    kind: str  # "text" or "chat"
    fingerprint: str
    meta: dict


def cache_root() -> Path:
    """Where tokenized data is cached: $SHOSHIN_CACHE_DIR or ~/.cache/shoshin."""
    return cache_dir() / "data"


def data_fingerprint(
    source_sha256: str, cfg: DataConfig, tokenizer_sha256: str | None = None
) -> str:
    settings = {
        "version": CACHE_VERSION,
        "source_sha256": source_sha256,
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed,
        "loss_on": cfg.loss_on,
        "max_documents": cfg.max_documents,
        "dedupe": cfg.dedupe,
    }
    if tokenizer_sha256:  # a pretrained tokenizer: its own content decides the token ids
        settings["tokenizer_sha256"] = tokenizer_sha256
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def prepare_data(cfg: DataConfig, log=print, tokenizer: BpeTokenizer | None = None) -> PreparedData:
    """Load, split, tokenize and cache the corpus named by `cfg.source` (or reuse the cache).

    With `tokenizer` (a pretrained one), the corpus is tokenized with it instead of a newly trained
    one, after adding the special tokens the corpus needs (`<|endoftext|>`, and the chat roles for
    chat data); the returned PreparedData.tokenizer is that extended tokenizer.
    """
    corpus = load_corpus(
        cfg.source, cfg.max_documents, cfg.hf_split, cfg.hf_column, cfg.hf_revision
    )
    if tokenizer is not None:
        tokenizer = tokenizer.with_special_tokens(_specials(corpus.kind))
    fingerprint = data_fingerprint(corpus.sha256, cfg, tokenizer.sha256() if tokenizer else None)
    folder = cache_root() / fingerprint[:16]
    if not (folder / "meta.json").exists():
        unit = "documents" if corpus.kind == "text" else "conversations"
        size = sum(len(t.encode()) for t in _texts(corpus.kind, corpus.documents))
        log(
            f"tokenizing {corpus.description} ({len(corpus.documents):,} {unit}, "
            f"{format_bytes(size)} of text); later runs reuse the result ..."
        )
        started = time.monotonic()
        _build_cache(corpus, cfg, folder, fingerprint, tokenizer, log)
        if time.monotonic() - started > 2:
            log(f"tokenized in {format_seconds(time.monotonic() - started)}")
    meta = json.loads((folder / "meta.json").read_text())
    if corpus.origin:  # this load's dataset identity (the cache is keyed by content only)
        meta["hf"] = corpus.origin
    dtype = np.dtype(meta["dtype"])

    def split(name: str) -> Split:
        return Split(
            np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r"),
            np.memmap(folder / f"{name}_mask.bin", dtype=np.uint8, mode="r"),
        )

    return PreparedData(
        load_tokenizer(folder), split("train"), split("val"), corpus.kind, fingerprint, meta
    )


def split_documents(corpus: Corpus, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split by document; a single text document is split contiguously."""
    docs = corpus.documents
    if corpus.kind == "text" and len(docs) == 1:
        text = docs[0]
        cut = int(len(text) * (1 - val_fraction))
        return [text[:cut]], [text[cut:]]
    if len(docs) < 2:
        raise ShoshinError(
            f"corpus {corpus.description} has a single conversation; it needs at least 2 to split"
        )
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    val_ids = sorted(order[:n_val])
    train_ids = sorted(order[n_val:])
    return [docs[i] for i in train_ids], [docs[i] for i in val_ids]


def _texts(kind: str, documents: list) -> list[str]:
    if kind == "text":
        return documents
    return [m["content"] for conversation in documents for m in conversation]


def _encode(
    kind: str, documents: list, tokenizer: Tokenizer, loss_on: str, progress: SlowWork
) -> Split:
    eot = tokenizer.special_tokens[EOT]
    ids: list[int] = []
    mask: list[int] = []
    for doc in documents:
        progress.advance()
        if kind == "text":
            doc_ids = tokenizer.encode(doc)
            doc_mask = [1] * len(doc_ids)
        else:
            doc_ids, doc_mask = render_chat(tokenizer, doc)
            if loss_on == "all":
                doc_mask = [1] * len(doc_ids)
        ids += doc_ids + [eot]
        mask += doc_mask + [int(loss_on == "all")]
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    return Split(np.asarray(ids, dtype=dtype), np.asarray(mask, dtype=np.uint8))


def _specials(kind: str) -> list[str]:
    return [EOT] + (list(CHAT_TOKENS) if kind == "chat" else [])


def _build_cache(
    corpus: Corpus,
    cfg: DataConfig,
    folder: Path,
    fingerprint: str,
    tokenizer: Tokenizer | None = None,
    log=print,
) -> None:
    removed = 0
    if cfg.dedupe:
        corpus.documents, removed = dedupe(corpus.kind, corpus.documents)
    train_docs, val_docs = split_documents(corpus, cfg.val_fraction, cfg.split_seed)
    texts = {"train": _texts(corpus.kind, train_docs), "val": _texts(corpus.kind, val_docs)}
    sizes = {name: sum(len(t.encode()) for t in part) for name, part in texts.items()}
    noticeable = sizes["train"] > NOTICEABLE_BYTES
    if tokenizer is None:
        # The char vocabulary covers the whole corpus so validation text is representable;
        # BPE merges are learned from the training split only.
        vocab_texts = texts["train"] + texts["val"] if cfg.tokenizer == "char" else texts["train"]
        if cfg.tokenizer == "bpe" and noticeable:
            size = format_bytes(sizes["train"])
            log(f"  learning {cfg.vocab_size:,} BPE tokens from {size} of text ...")
        specials = _specials(corpus.kind)
        tokenizer = train_tokenizer(cfg.tokenizer, vocab_texts, cfg.vocab_size, specials)
    progress = SlowWork("  encoding", len(train_docs) + len(val_docs), log)
    train = _encode(corpus.kind, train_docs, tokenizer, cfg.loss_on, progress)
    val = _encode(corpus.kind, val_docs, tokenizer, cfg.loss_on, progress)
    if noticeable:
        log("  checking the validation split for text the training split holds ...")

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tokenizer.save(tmp)
        tokenizer_sha256 = _folder_sha256(tmp)  # only the tokenizer's files are there yet
        for name, split in (("train", train), ("val", val)):
            split.tokens.tofile(tmp / f"{name}.bin")
            split.mask.tofile(tmp / f"{name}_mask.bin")
        meta = {
            "fingerprint": fingerprint,
            "source": cfg.source,
            "source_sha256": corpus.sha256,
            "kind": corpus.kind,
            "dtype": train.tokens.dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_sha256": tokenizer_sha256,
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            "split": {
                "method": "contiguous" if len(corpus.documents) == 1 else "by-document",
                "val_fraction": cfg.val_fraction,
                "seed": cfg.split_seed,
                "max_documents": cfg.max_documents,
                "dedupe": cfg.dedupe,
                "duplicates_removed": removed,
                "sha256": split_digest(corpus.kind, train_docs, val_docs),
            },
            "overlap": overlap_report(corpus.kind, train_docs, val_docs),
            "tokens": {"train": int(train.tokens.size), "val": int(val.tokens.size)},
            "characters": {name: sum(len(t) for t in part) for name, part in texts.items()},
            "bytes": sizes,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process built the same cache first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _folder_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def check_fits(data: PreparedData, block_size: int, source: str) -> None:
    """Refuse a corpus that cannot fill one training and one validation window."""
    for name, split in (("training", data.train), ("validation", data.val)):
        if split.tokens.size < block_size + 2:
            raise ShoshinError(
                f"corpus {source} is too small: its {name} split has {split.tokens.size} tokens, "
                f"fewer than one window of model.block_size={block_size} (+1); "
                "use more data or a smaller model.block_size"
            )


def get_batch(split: Split, batch_size: int, block_size: int, generator: torch.Generator):
    """Random windows: x (B, T) inputs and y (B, T) next-token targets, IGNORE_INDEX where masked."""
    ix = torch.randint(
        split.tokens.size - block_size - 1, (batch_size,), generator=generator
    ).tolist()
    return _windows(split, ix, block_size)


def _windows(split: Split, starts: list[int], block_size: int):
    """x (B, T) = tokens[s : s + T] and y (B, T) = tokens[s + 1 : s + 1 + T] for every start s."""
    x = np.stack([split.tokens[i : i + block_size] for i in starts]).astype(np.int64)
    y = np.stack([split.tokens[i + 1 : i + 1 + block_size] for i in starts]).astype(np.int64)
    m = np.stack([split.mask[i + 1 : i + 1 + block_size] for i in starts])
    y[m == 0] = IGNORE_INDEX
    return torch.from_numpy(x), torch.from_numpy(y)


def eval_batches(split: Split, batch_size: int, block_size: int, max_batches: int = 0):
    """Evaluation batches (x, y) of windows that tile the split: every target is scored once.

    max_batches=0 covers the whole split: consecutive non-overlapping windows, the last one ending
    at the split's end with the targets already scored set to IGNORE_INDEX. Otherwise at most
    max_batches batches of windows spread evenly over the split: the same windows every time, and a
    steadier estimate than as many random windows (no overlaps, no region left out by chance).
    Average the loss over targets, not batches: batches can differ in their number of targets.
    """
    n_targets = split.tokens.size - 1
    starts, tail = _eval_windows(n_targets, batch_size, block_size, max_batches)
    for b in range(0, len(starts), batch_size):
        yield _windows(split, starts[b : b + batch_size], block_size)
    if tail:
        x, y = _windows(split, [n_targets - block_size], block_size)
        y[:, : block_size - tail] = IGNORE_INDEX  # scored by the previous window already
        yield x, y


def eval_batch_count(n_tokens: int, batch_size: int, block_size: int, max_batches: int = 0) -> int:
    """How many batches eval_batches yields for a split of n_tokens tokens."""
    starts, tail = _eval_windows(n_tokens - 1, batch_size, block_size, max_batches)
    return -(-len(starts) // batch_size) + (tail > 0)


def _eval_windows(n_targets: int, batch_size: int, block_size: int, max_batches: int):
    """Start of every evaluation window, and how many targets a last, partial window scores."""
    starts = list(range(0, n_targets - block_size + 1, block_size))
    tail = n_targets - (starts[-1] + block_size)  # targets after the last whole window
    if max_batches and max_batches * batch_size < len(starts) + (tail > 0):
        picked = np.linspace(0, len(starts) - 1, max_batches * batch_size).round().astype(int)
        return [starts[i] for i in np.unique(picked)], 0
    return starts, tail
