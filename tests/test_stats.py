"""The statistics behind compare and eval, held to scipy.stats and numpy computed here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from shoshin.stats import bootstrap, compare, seeds_to_detect, summarize


def test_welch_test_and_interval_are_scipys():
    a, b = [2.10, 2.14, 2.08, 2.12], [2.02, 2.03, 2.04]
    c = compare("final_val_loss", a, b)
    expected = scipy.stats.ttest_ind(b, a, equal_var=False)
    assert c.p == pytest.approx(expected.pvalue, rel=1e-12)
    low, high = expected.confidence_interval(0.95)
    assert c.ci == pytest.approx((low, high), rel=1e-12)
    assert c.difference == pytest.approx(np.mean(b) - np.mean(a))
    assert c.a.sd == pytest.approx(np.std(a, ddof=1)) and (c.a.n, c.b.n) == (4, 3)
    assert c.lower_is_better and c.verdict.startswith("B is better by 0.08 ± ")


def test_verdicts_in_words():
    same = compare("final_val_loss", [1.0, 1.1, 1.2], [1.02, 1.12, 1.19])
    assert same.verdict.startswith("no detectable difference at n = 3 (p = 0.9")
    assert "seeds per side would detect a difference of this size" in same.verdict
    faster = compare("tokens_per_sec", [100.0, 101.0, 99.0], [200.0, 202.0, 199.0])
    assert faster.verdict.startswith("B is better by 100 ± ")  # higher is better for speed
    single = compare("final_val_loss", [1.0], [0.9])
    assert single.p is None and single.difference == pytest.approx(-0.1)
    assert single.verdict.startswith("one run per side cannot separate the change from seed noise")
    assert summarize([1.0]).text() == "1.0000" and summarize([1.0, 3.0]).text() == (
        "2.0000 ± 1.4142 (2)"
    )


def test_seeds_needed_match_the_textbook_power_tables():
    # Two-sided t-test, alpha 0.05, power 0.8: Cohen's d = 0.5 needs 64 per group, 0.8 needs 26.
    assert seeds_to_detect(0.5, 1.0, 1.0) == 64
    assert seeds_to_detect(0.8, 1.0, 1.0) == 26
    assert seeds_to_detect(0.0, 1.0, 1.0) is None


def test_paired_bootstrap_interval_agrees_with_a_plain_resampling():
    rng = np.random.default_rng(7)
    n = 60  # conversations
    nbytes = rng.integers(20, 200, n).astype(float)
    a_bits = nbytes * rng.normal(2.0, 0.3, n)
    b_bits = a_bits + nbytes * rng.normal(0.1, 0.2, n)  # the second model is a little worse

    def saved(x, y, z):
        return (y.sum() - x.sum()) / z.sum()

    got = bootstrap([a_bits, b_bits, nbytes], saved)
    assert got.value == pytest.approx(saved(a_bits, b_bits, nbytes))
    picks = np.random.default_rng(1).integers(0, n, (20_000, n))  # conversations, resampled whole
    stats = (b_bits[picks].sum(1) - a_bits[picks].sum(1)) / nbytes[picks].sum(1)
    low, high = np.percentile(stats, [2.5, 97.5])
    width = high - low
    assert abs(got.low - low) < 0.1 * width and abs(got.high - high) < 0.1 * width
    assert got.se == pytest.approx(stats.std(ddof=1), rel=0.1)
