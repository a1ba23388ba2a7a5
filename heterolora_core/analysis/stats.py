"""The statistics that make a comparison trustworthy, in one place: mean ± std over seeds with a
95% t-interval, and the difference of two configurations paired by seed with its interval and a
better / worse / noise verdict. Used by the dashboard's Results page and the benchmark reports.

Seeds are the replicates: two runs of the same seed share the data order and the initialisation,
so a paired difference removes that part of the variance. The interval of a paired difference is
Student's t over the per-seed differences; it holds zero -> "noise".
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

from scipy.stats import t as student_t

NOISE, BETTER, WORSE, ONE_SEED = "noise", "better", "worse", "n/a (1 seed)"


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (0.975 for 95%)."""
    return float(student_t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Description:
    """n, mean, sample std and the 95% t-interval of the mean (None where n is too small)."""

    n: int
    mean: float | None
    std: float | None
    ci95: tuple[float, float] | None

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": list(self.ci95) if self.ci95 else None}


def finite(values: Iterable[object]) -> list[float]:
    """The finite numbers among ``values`` (None, NaN, strings and bools dropped)."""
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def describe(values: Iterable[object]) -> Description:
    """:class:`Description` of the finite values."""
    data = finite(values)
    n = len(data)
    if n == 0:
        return Description(0, None, None, None)
    mean = statistics.fmean(data)
    if n == 1:
        return Description(1, mean, None, None)
    std = statistics.stdev(data)
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Description(n, mean, std, (mean - half, mean + half))


def seed_scores(pairs: Iterable[tuple[int, object]]) -> dict[int, float]:
    """``(seed, score)`` pairs -> seed -> score, the mean where a seed has several finite scores;
    missing and non-finite scores are dropped (a seed without any is absent)."""
    by_seed: dict[int, list[float]] = {}
    for seed, score in pairs:
        kept = finite([score])
        if kept:
            by_seed.setdefault(seed, []).append(kept[0])
    return {seed: statistics.fmean(values) for seed, values in sorted(by_seed.items())}


@dataclass(frozen=True)
class PairedDifference:
    """``row - reference`` over the seeds both have, with its 95% interval and verdict."""

    seeds: tuple[int, ...]
    mean: float | None
    ci95: tuple[float, float] | None
    verdict: str

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "mean": self.mean, "ci95": list(self.ci95) if self.ci95 else None,
                "verdict": self.verdict}


def verdict(ci95: tuple[float, float] | None, higher_is_better: bool = True) -> str:
    """noise when the interval of (row - reference) holds 0; otherwise better when it lies on the
    metric's good side (above 0, or below 0 for a lower-is-better metric: a loss, a perplexity),
    worse on the other; n/a without an interval."""
    if ci95 is None:
        return ONE_SEED
    low, high = ci95
    if low <= 0.0 <= high:
        return NOISE
    return BETTER if (low > 0) == higher_is_better else WORSE


def paired_difference(row: Mapping[int, float], reference: Mapping[int, float],
                      higher_is_better: bool = True) -> PairedDifference | None:
    """Row minus reference over the seeds both have (same seed = same data order and init), its
    verdict read in the metric's direction; None when they share no seed."""
    seeds = tuple(sorted(set(row) & set(reference)))
    if not seeds:
        return None
    stats = describe([row[s] - reference[s] for s in seeds])
    return PairedDifference(seeds, stats.mean, stats.ci95, verdict(stats.ci95, higher_is_better))
