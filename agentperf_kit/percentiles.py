"""Percentiles that keep +inf, and their distribution-free confidence intervals.

``percentile(values, q)`` is the linear-interpolation percentile (numpy's default, rank = (n-1)*q/100) on
the sorted finite-or-+inf values, computed so that a failed request's +inf stays +inf: numpy's own
``np.percentile([1, 2, 3, inf], 90)`` is NaN because it interpolates ``inf - 3``. NaN values are ignored
(a request with no speed is not a sample of speed). An empty sample gives NaN.

``percentile_ci(values, q, confidence)`` is the exact distribution-free interval for the population
q-quantile from order statistics: the smallest symmetric pair of ranks (l, u) with
P(X_(l) <= x_q <= X_(u)) >= confidence under Binomial(n, q/100). When n is too small for the requested
confidence, the missing bound is -inf / +inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["percentile", "percentile_ci", "percentile_sorted", "sorted_sample"]


def sorted_sample(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Values as a sorted float array with NaNs removed (+inf kept, last)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    arr.sort()
    return arr


def percentile_sorted(s: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile of an already sorted NaN-free array ``s``; +inf propagates."""
    n = len(s)
    if n == 0:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    rank = (n - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    a, b = float(s[lo]), float(s[hi])
    if frac == 0.0 or a == b:
        return a
    if math.isinf(b) or math.isinf(a):
        return b if math.isinf(b) else a
    return a + (b - a) * frac


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (q in 0..100) with +inf kept as +inf; NaN ignored; NaN for an empty sample."""
    return percentile_sorted(sorted_sample(values), q)


def _ci_ranks(n: int, p: float, confidence: float) -> tuple[int | None, int | None]:
    """0-based ranks (l, u) of the order-statistic interval, None where n is too small."""
    if n == 0:
        return None, None
    alpha = 1.0 - confidence
    # l: largest rank with P(Bin(n, p) <= l - 1) <= alpha/2  (X_(l) <= x_p with prob >= 1 - alpha/2)
    lo = int(stats.binom.ppf(alpha / 2, n, p))  # smallest k with CDF(k) >= alpha/2
    if stats.binom.cdf(lo, n, p) > alpha / 2:
        lo -= 1
    lower = lo if lo >= 0 else None  # order statistic X_(lo+1) -> index lo
    hi = int(stats.binom.ppf(1 - alpha / 2, n, p))  # smallest k with CDF(k) >= 1 - alpha/2
    upper = hi if hi <= n - 1 else None
    return lower, upper


def percentile_ci(
    values: Sequence[float] | np.ndarray, q: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Distribution-free ``confidence`` interval (low, high) for the population q-th percentile.

    Bounds are order statistics of the sample (+inf allowed). A bound that n cannot support at this
    confidence is -inf (low) or +inf (high); an empty sample gives (NaN, NaN).
    """
    s = sorted_sample(values)
    return percentile_ci_sorted(s, q, confidence)


def percentile_ci_sorted(s: np.ndarray, q: float, confidence: float = 0.95) -> tuple[float, float]:
    """:func:`percentile_ci` on an already sorted NaN-free array."""
    n = len(s)
    if n == 0:
        return math.nan, math.nan
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = _ci_ranks(n, q / 100.0, confidence)
    return (-math.inf if lo is None else float(s[lo]), math.inf if hi is None else float(s[hi]))
