"""Spread and significance: what a comparison of runs or seed groups can and cannot say.

Everything statistical comes from `scipy.stats` (imported here, when a comparison is made, so that
`shoshin runs`/`show` start without it): Welch's t-test and its confidence interval for the
difference of two groups' means, the noncentral t distribution for how many seeds per side would
detect a difference of the observed size, and the bootstrap for paired per-conversation scores.
A verdict says "better", "worse" or "can't tell", never a bare delta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05  # a difference is "detected" below this p-value (95% intervals)
POWER = 0.8  # the chance a study of the suggested size detects a true difference of this size
LOWER_IS_BETTER = ("loss", "ppl", "bits", "seconds", "duration")


def lower_is_better(metric: str) -> bool:
    """Losses, perplexities, bits and times are better lower; speeds, accuracies, win rates higher."""
    return any(word in metric for word in LOWER_IS_BETTER)


@dataclass
class Summary:
    """Mean, sample standard deviation and count of one side's values."""

    n: int
    mean: float | None
    sd: float | None  # None below two values
    values: list[float]

    def text(self, fmt: str = ".4f") -> str:
        if self.mean is None:
            return "-"
        if self.sd is None:
            return format(self.mean, fmt)
        return f"{self.mean:{fmt}} ± {self.sd:{fmt}} ({self.n})"


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± sd (n) of finite values; the sd uses n - 1, as a sample of seeds should."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return Summary(0, None, None, [])
    mean = sum(vals) / len(vals)
    sd = None
    if len(vals) > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return Summary(len(vals), mean, sd, vals)


@dataclass
class Comparison:
    """Side B against side A on one metric. `difference` is mean(B) - mean(A)."""

    metric: str
    lower_is_better: bool
    a: Summary
    b: Summary
    difference: float | None = None
    ci: tuple[float, float] | None = None  # 95% interval of the difference (Welch)
    p: float | None = None  # Welch's t-test, two-sided
    seeds_needed: int | None = None  # per side, to detect this difference with 80% power
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(metric: str, a: Sequence[float], b: Sequence[float], names=("A", "B")) -> Comparison:
    """Summaries, difference, Welch's test and a verdict in words for one metric."""
    sa, sb = summarize(a), summarize(b)
    result = Comparison(metric, lower_is_better(metric), sa, sb)
    if sa.mean is None or sb.mean is None:
        result.verdict = "not measured on both sides"
        return result
    result.difference = sb.mean - sa.mean
    if sa.n < 2 or sb.n < 2:
        result.verdict = (
            "one run per side cannot separate the change from seed noise"
            if sa.n == sb.n == 1
            else "a test needs at least two completed runs on each side"
        ) + "; train each side with --seeds 3 or more"
        return result
    from scipy import stats

    if sa.sd == 0 and sb.sd == 0:  # no spread at all: the t statistic is undefined
        result.ci = (result.difference, result.difference)
        result.p = 1.0 if result.difference == 0 else 0.0
    else:
        test = stats.ttest_ind(sb.values, sa.values, equal_var=False)
        interval = test.confidence_interval(1 - ALPHA)
        result.p = float(test.pvalue)
        result.ci = (float(interval.low), float(interval.high))
    result.seeds_needed = seeds_to_detect(result.difference, sa.sd or 0.0, sb.sd or 0.0)
    result.verdict = verdict(result, names)
    return result


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def verdict(c: Comparison, names: Sequence[str]) -> str:
    """'B is better by 0.021 ± 0.006 (95% CI, p = 0.002)' or 'no detectable difference ...'."""
    assert c.difference is not None and c.p is not None and c.ci is not None
    n = f"{c.a.n}" if c.a.n == c.b.n else f"{c.a.n} and {c.b.n}"
    if c.p >= ALPHA:
        text = f"no detectable difference at n = {n} ({fmt_p(c.p)})"
        if c.difference == 0:
            return text + "; the means are equal"
        if c.seeds_needed is None:
            return text + "; a difference this small would need more than 10,000 seeds per side"
        return text + (
            f"; about {c.seeds_needed} seeds per side would detect a difference of this size"
        )
    b_better = (c.difference < 0) == c.lower_is_better
    half = (c.ci[1] - c.ci[0]) / 2
    size = abs(c.difference)
    return (
        f"{names[1] if b_better else names[0]} is better by {_num(size, 3)} ± {_num(half, 2)} "
        f"(95% CI, {fmt_p(c.p)})"
    )


def _num(value: float, digits: int) -> str:
    """3 significant digits, but large numbers (tokens/s) in full: 12,090 rather than 1.21e+04."""
    return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def seeds_to_detect(difference: float, sd_a: float, sd_b: float, limit: int = 10_000) -> int | None:
    """Seeds per side for a two-sided t-test at ALPHA to detect `difference` with POWER, given the
    observed spreads (None: no spread, no difference, or more than `limit`)."""
    from scipy import stats

    spread = math.sqrt((sd_a**2 + sd_b**2) / 2)
    if difference == 0 or spread == 0:
        return None
    effect = abs(difference) / spread

    def power(n: int) -> float:
        df = 2 * n - 2
        shift = effect * math.sqrt(n / 2)
        cut = stats.t.ppf(1 - ALPHA / 2, df)
        exact = float(stats.nct.sf(cut, df, shift) + stats.nct.cdf(-cut, df, shift))
        if math.isfinite(exact):
            return exact
        # far in the tail the noncentral t is not computable, and the normal is exact enough
        return float(stats.norm.sf(cut - shift) + stats.norm.cdf(-cut - shift))

    high = 2  # power grows with n: double until it is reached, then bisect
    while power(high) < POWER:
        if high >= limit:
            return None
        high = min(2 * high, limit)
    low = max(2, high // 2)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if power(mid) >= POWER else (mid + 1, high)
    return low


# -- paired scores (the same conversations under two models) --------------------------------


@dataclass
class Interval:
    """An estimate with its 95% bootstrap interval and standard error."""

    value: float
    low: float
    high: float
    se: float

    def text(self, fmt: str = ".4f") -> str:
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same scores give the same interval every time


def bootstrap(
    samples: Sequence[Sequence[float]], statistic, resamples: int = RESAMPLES
) -> Interval:
    """The statistic of paired per-conversation samples with a percentile bootstrap interval:
    conversations are resampled with replacement, all samples of a conversation together."""
    import numpy as np
    from scipy import stats

    arrays = [np.asarray(s, dtype=float) for s in samples]
    value = float(statistic(*arrays))
    if len(arrays[0]) < 2:
        return Interval(value, math.nan, math.nan, math.nan)
    result = stats.bootstrap(
        arrays,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        confidence_level=1 - ALPHA,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    interval = result.confidence_interval
    return Interval(value, float(interval.low), float(interval.high), float(result.standard_error))
