"""Slow preparation says what it is doing and roughly how long it takes; quick work stays quiet."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from shoshin.config import load_config
from shoshin.data import dataset
from shoshin.data.dataset import prepare_data
from shoshin.progress import SlowWork, format_bytes, format_seconds
from shoshin.training.estimate import estimate


@pytest.fixture
def slow_clock(monkeypatch):
    """time.monotonic advancing one second per call: every piece of work looks slow."""
    ticks = itertools.count()
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))


def test_slow_work_speaks_once_with_the_time_left(slow_clock):
    said: list[str] = []
    work = SlowWork("encoding", total=10, log=said.append)  # starts at t=0
    work.advance()  # t=1: 1 of 10 done after 1 s, not yet worth a word
    work.advance()  # t=2: 2 done in 2 s, 8 left
    for _ in range(7):
        work.advance()
    assert said == ["encoding: about 8.0s to go"]


def test_quick_or_finished_work_says_nothing():
    said: list[str] = []
    work = SlowWork("encoding", total=3, log=said.append)
    for _ in range(3):
        work.advance()
    assert said == []
    assert [format_seconds(s) for s in (1.5, 95, 4000)] == ["1.5s", "1m35s", "1h06m"]
    assert [format_bytes(b) for b in (820, 29_400, 12e6, 3.1e9)] == [
        "820 bytes",
        "29 KB",
        "12.0 MB",
        "3.1 GB",
    ]


def test_tokenizing_and_calibrating_say_what_they_do(tmp_path, monkeypatch, slow_clock):
    corpus = tmp_path / "stories"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"{i}.txt").write_text(f"story {i}: the cat sat on the mat. " * 20)
    monkeypatch.setattr(dataset, "NOTICEABLE_BYTES", 0)  # this small corpus counts as large
    monkeypatch.setenv("SHOSHIN_CACHE_DIR", str(tmp_path / "cache"))  # tokenized here, not cached
    config = load_config(
        "tiny", [f"data.source={corpus}", "data.tokenizer=bpe", "data.vocab_size=300"]
    )
    said: list[str] = []
    data = prepare_data(config.data, log=said.append)
    assert said[0] == (
        f"tokenizing {corpus} (40 documents, 27 KB of text); later runs reuse the result ..."
    )
    assert re.fullmatch(r"  learning 300 BPE tokens from 2\d KB of text \.\.\.", said[1])
    assert said[2].startswith("  encoding: about ") and said[2].endswith(" to go")
    assert said[3] == "  checking the validation split for text the training split holds ..."
    assert said[4].startswith("tokenized in ")
    said.clear()
    prepare_data(config.data, log=said.append)
    assert said == []  # from the cache: nothing to say

    estimate(config, data, calibration_steps=2, log=said.append)
    (line,) = said
    assert line.startswith(
        "calibrating the time estimate (4 training steps on this machine): about "
    )
