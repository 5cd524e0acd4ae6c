"""Leakage: conversations repeated across the split are counted, and data.dedupe=true removes them."""

from __future__ import annotations

import json
import random

from shoshin.config import DataConfig
from shoshin.data.dataset import prepare_data, split_documents
from shoshin.data.leakage import SHINGLE, dedupe, overlap_report
from shoshin.data.sources import load_corpus


def _sentence(rng: random.Random, words: int) -> str:
    vocab = "apple river stone cloud quiet green seven lamp orbit violet maple harbor".split()
    return " ".join(rng.choice(vocab) for _ in range(words))


def _chat_file(path, unique: int, repeated: int, copies: int):
    """`unique` distinct conversations, plus `repeated` more that each appear `copies` times."""
    rng = random.Random(0)
    conversations = [
        [
            {"role": "user", "content": f"#{i} " + _sentence(rng, 12)},
            {"role": "assistant", "content": _sentence(rng, 15)},
        ]
        for i in range(unique + repeated)
    ]
    lines = conversations[:unique] + conversations[unique:] * copies
    rng.shuffle(lines)
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in lines))
    return path


def test_duplicated_conversations_are_counted_and_deduped(tmp_path):
    source = _chat_file(tmp_path / "chat.jsonl", unique=80, repeated=10, copies=4)
    cfg = DataConfig(source=str(source), tokenizer="char", val_fraction=0.2)

    # The expected count, by plain list equality on the same seeded split.
    train, val = split_documents(load_corpus(str(source)), cfg.val_fraction, cfg.split_seed)
    expected = sum(conversation in train for conversation in val)
    assert expected > 0

    data = prepare_data(cfg, log=lambda *a: None)
    report = data.meta["overlap"]
    assert report["exact_duplicates"] == expected
    assert report["val_documents"] == len(val)
    assert report["val_documents_sharing_substrings"] >= expected
    assert f"{expected} of {len(val)} validation documents" in report["warning"]

    clean = prepare_data(DataConfig(**{**cfg.__dict__, "dedupe": True}), log=lambda *a: None)
    assert clean.fingerprint != data.fingerprint
    assert clean.meta["overlap"]["exact_duplicates"] == 0
    assert clean.meta["split"]["duplicates_removed"] == 10 * (4 - 1)
    assert sum(clean.meta["documents"].values()) == 90
    assert clean.meta["overlap"]["warning"] is None


def test_shared_long_passages_are_found():
    rng = random.Random(1)
    train = [_sentence(rng, 60) for _ in range(30)]
    quoted = train[3][40 : 40 + 3 * SHINGLE]
    val = [_sentence(rng, 60), "intro " + quoted + " outro", _sentence(rng, 60)]
    report = overlap_report("text", train, val)
    assert report["exact_duplicates"] == 0
    assert report["val_documents_sharing_substrings"] == 1
    # Every shingle inside the quoted passage is shared: 2 * SHINGLE + 1 of them.
    assert report["shared_shingles"] == 2 * SHINGLE + 1
    assert report["warning"] and "passages" in report["warning"]

    unrelated = overlap_report("text", train, [_sentence(rng, 60) for _ in range(3)])
    assert unrelated["shared_shingles"] == 0 and unrelated["warning"] is None


def test_dedupe_keeps_first_occurrences():
    kept, removed = dedupe("text", ["a", "b", "a", "c", "b"])
    assert kept == ["a", "b", "c"] and removed == 2
