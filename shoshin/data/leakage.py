"""Train/validation leakage: documents and long passages that appear on both sides of the split.

A validation loss means little when the validation set repeats the training set. Two checks run
when data is prepared:

- exact duplicates: validation documents (or conversations) identical to a training one;
- shared long substrings: 50-character shingles of the validation text that also occur in the
  training text. Every shingle gets a rolling hash (numpy, a few passes over the text); for a
  large corpus only the shingles whose hash falls in a fixed 1/rate slice are kept, so the same
  shingle is kept on both sides and the estimate stays unbiased while memory stays bounded.

`dedupe` removes exact duplicates before splitting (`data.dedupe=true`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

SHINGLE = 50  # characters: long enough that sharing one is not a coincidence of common phrases
MAX_SAMPLED_SHINGLES = 2_000_000  # training shingles kept in memory at most
CHUNK_CHARS = 4_000_000  # characters hashed at once (bounds the numpy temporaries)
# Above these, preparing the data prints a warning.
WARN_EXACT_FRACTION = 0.01  # of validation documents
WARN_SHINGLE_FRACTION = 0.05  # of validation shingles

_BASE = np.uint64(1_000_003)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def document_text(kind: str, doc: Any) -> str:
    """The text of a document, or of a conversation's messages joined by newlines."""
    return doc if kind == "text" else "\n".join(m["content"] for m in doc)


def document_key(kind: str, doc: Any) -> str:
    """A hash identifying a document exactly (a conversation by its roles and contents)."""
    raw = doc if kind == "text" else json.dumps(doc, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()


def dedupe(kind: str, documents: list) -> tuple[list, int]:
    """The documents with exact duplicates removed (first occurrence kept), and how many went."""
    seen: set[str] = set()
    kept = []
    for doc in documents:
        key = document_key(kind, doc)
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept, len(documents) - len(kept)


def split_digest(kind: str, train_docs: list, val_docs: list) -> str:
    """sha256 of which documents went where, in order: equal digests mean an identical split."""
    digest = hashlib.sha256()
    for name, docs in (("train", train_docs), ("val", val_docs)):
        digest.update(name.encode())
        for doc in docs:
            digest.update(document_key(kind, doc).encode())
    return digest.hexdigest()


def _shingle_hashes(texts: list[str], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the sampled 50-char shingles of `texts` and the index of the text each is from.

    Texts are hashed in chunks joined by a NUL separator; shingles that cross one are dropped.
    """
    hashes, owners = [], []
    start = 0
    while start < len(texts):
        stop, size = start, 0
        while stop < len(texts) and (size < CHUNK_CHARS or stop == start):
            size += len(texts[stop]) + 1
            stop += 1
        joined = "\0".join(t.replace("\0", " ") for t in texts[start:stop])
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = codes.size - SHINGLE + 1
        if n > 0:
            h = codes[:n].copy()
            for j in range(1, SHINGLE):  # h[i] = sum_j codes[i + j] * BASE^(SHINGLE-1-j) mod 2^64
                np.multiply(h, _BASE, out=h)
                np.add(h, codes[j : j + n], out=h)
            # Mix the bits so that sampling by `% rate` does not favour particular characters.
            h ^= h >> np.uint64(29)
            h *= _MIX
            h ^= h >> np.uint64(32)
            separators = np.concatenate(([0], np.cumsum(codes == 0)))
            whole = separators[SHINGLE : SHINGLE + n] == separators[:n]
            keep = whole & (h % np.uint64(rate) == 0)
            hashes.append(h[keep])
            owners.append(separators[:n][keep] + start)
        start = stop
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(owners).astype(np.int64)


def overlap_report(kind: str, train_docs: list, val_docs: list) -> dict[str, Any]:
    """Exact duplicates and shared 50-char substrings between the two splits (see module doc)."""
    train_keys = {document_key(kind, d) for d in train_docs}
    exact = sum(document_key(kind, d) in train_keys for d in val_docs)
    train_texts = [document_text(kind, d) for d in train_docs]
    val_texts = [document_text(kind, d) for d in val_docs]
    train_shingles = sum(max(0, len(t) - SHINGLE + 1) for t in train_texts)
    rate = max(1, -(-train_shingles // MAX_SAMPLED_SHINGLES))
    train_hashes, _ = _shingle_hashes(train_texts, rate)
    val_hashes, owners = _shingle_hashes(val_texts, rate)
    train_sorted = np.sort(train_hashes)  # a sorted lookup is much faster than np.isin here
    found = np.searchsorted(train_sorted, val_hashes).clip(max=max(0, train_sorted.size - 1))
    shared = train_sorted[found] == val_hashes if train_sorted.size else np.zeros(0, bool)
    report = {
        "val_documents": len(val_docs),
        "exact_duplicates": int(exact),
        "exact_duplicate_fraction": round(exact / max(1, len(val_docs)), 6),
        "shingle_chars": SHINGLE,
        "shingle_sample_rate": f"1/{rate}",
        "val_shingles_checked": int(val_hashes.size),
        "shared_shingles": int(shared.sum()),
        "shared_shingle_fraction": round(float(shared.mean()) if shared.size else 0.0, 6),
        "val_documents_sharing_substrings": len(set(owners[shared].tolist())),
    }
    report["warning"] = leakage_warning(report)
    return report


def leakage_warning(report: dict[str, Any]) -> str | None:
    """A one-line warning when the overlap is above the thresholds, else None."""
    problems = []
    if report["exact_duplicate_fraction"] > WARN_EXACT_FRACTION:
        problems.append(
            f"{report['exact_duplicates']} of {report['val_documents']} validation documents "
            "also appear in the training split"
        )
    if report["shared_shingle_fraction"] > WARN_SHINGLE_FRACTION:
        problems.append(
            f"{report['shared_shingle_fraction']:.1%} of validation {SHINGLE}-character passages "
            "also occur in the training split"
        )
    if not problems:
        return None
    hint = " (data.dedupe=true removes exact duplicates)" if report["exact_duplicates"] else ""
    return "train/validation leakage: " + "; ".join(problems) + hint
