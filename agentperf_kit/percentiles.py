"""Percentiles that keep +inf, and their confidence intervals (independent and clustered samples).

``percentile(values, q)`` is the linear-interpolation percentile (numpy's default, rank = (n-1)*q/100) on
the sorted finite-or-+inf values, computed so that a failed request's +inf stays +inf: numpy's own
``np.percentile([1, 2, 3, inf], 90)`` is NaN because it interpolates ``inf - 3``. NaN values are ignored
(a request with no speed is not a sample of speed). An empty sample gives NaN.

``percentile_ci(values, q, confidence)`` is the exact distribution-free interval for the population
q-quantile from order statistics of **independent** samples: the smallest symmetric pair of ranks (l, u)
with P(X_(l) <= x_q <= X_(u)) >= confidence under Binomial(n, q/100). When n is too small for the
requested confidence, the missing bound is -inf / +inf.

``clustered_percentile_ci(values, q, confidence, clusters=...)`` is the same interval for **correlated**
samples (requests of one closed-loop agent, requests sent at the same moment of server state): the share
of the sample below the q-quantile, F(x_q), has a variance that a cluster-robust (sandwich) estimator
measures from the clusters' sums of (1[x <= x_q] - q); its ratio to the independent variance q(1-q)/n is
the *design effect* ``deff`` (floored at 1), the effective sample is n / deff, and the interval is the
exact order-statistic interval of that effective sample mapped back onto the full sample's order
statistics (Woodruff's interval for quantiles under cluster sampling). With every request its own cluster
(``deff`` = 1) it is exactly :func:`percentile_ci`. Several clusterings (agent, time batch) are combined by
taking the largest variance. Evidence for this choice: docs/metrics.md and ``benchmarks/ci_coverage.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PercentileCI",
    "clustered_percentile_ci",
    "percentile",
    "percentile_ci",
    "percentile_ci_sorted",
    "percentile_sorted",
    "sorted_sample",
]


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


_RANKS: dict[tuple[int, float, float], tuple[int | None, int | None]] = {}


def _ci_ranks(n: int, p: float, confidence: float) -> tuple[int | None, int | None]:
    """0-based ranks (l, u) of the exact order-statistic interval, None where n is too small.

    l = the largest k with P(Bin(n, p) <= k) <= alpha/2 (so the (l+1)-th smallest value is <= x_p with
    probability >= 1 - alpha/2), u = the smallest k with P(Bin(n, p) <= k) >= 1 - alpha/2; the same
    ranks as scipy.stats.binom.ppf gives, computed with scipy.special.bdtr around n*p.
    """
    if n == 0:
        return None, None
    key = (n, p, confidence)
    if key in _RANKS:
        return _RANKS[key]
    from scipy import special  # light; scipy.stats takes ~1.8 s to import

    alpha = 1.0 - confidence
    sd = math.sqrt(n * p * (1 - p))
    lo_k, hi_k = max(math.floor(n * p - 5 * sd) - 3, 0), min(math.ceil(n * p + 5 * sd) + 3, n)
    while True:
        k = np.arange(lo_k, hi_k + 1)
        cdf = special.bdtr(k, n, p)  # P(Bin(n, p) <= k), vectorised
        # exact only if the window brackets both tails: widen to everything otherwise
        if (lo_k == 0 or cdf[0] <= alpha / 2) and (hi_k == n or cdf[-1] >= 1 - alpha / 2):
            break
        lo_k, hi_k = 0, n
    below = np.flatnonzero(cdf <= alpha / 2)
    lo = int(k[below[-1]]) if len(below) else lo_k - 1  # largest k with CDF(k) <= alpha/2
    above = np.flatnonzero(cdf >= 1 - alpha / 2)
    hi = int(k[above[0]]) if len(above) else n  # smallest k with CDF(k) >= 1 - alpha/2
    lower = lo if lo >= 0 else None  # order statistic X_(lo+1) -> index lo
    upper = hi if hi <= n - 1 else None
    if len(_RANKS) > 4096:
        _RANKS.clear()
    _RANKS[key] = (lower, upper)
    return lower, upper


def percentile_ci(
    values: Sequence[float] | np.ndarray, q: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Distribution-free ``confidence`` interval (low, high) for the population q-th percentile of
    independent samples.

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


@dataclass(frozen=True, slots=True)
class PercentileCI:
    """A percentile with its interval: ``value``, ``low``, ``high``, ``n`` (samples), ``n_eff``
    (effective independent samples, n / deff) and ``deff`` (design effect, >= 1; 1 for independent)."""

    value: float
    low: float
    high: float
    n: int
    n_eff: float
    deff: float


def _cluster_variance(dev: np.ndarray, codes: np.ndarray) -> float:
    """Cluster-robust (sandwich) variance of sum(dev) / n: sum over clusters of (cluster sum)^2 / n^2.
    With every row its own cluster this is p(1-p)/n exactly (the independent variance); 0 with fewer
    than 2 clusters (nothing to estimate from)."""
    sums = np.bincount(codes, weights=dev)
    if np.count_nonzero(sums) < 2:
        return 0.0
    n = len(dev)
    return float(np.dot(sums, sums) / (n * n))


def clustered_percentile_ci(
    values: Sequence[float] | np.ndarray,
    q: float,
    confidence: float | None = 0.95,
    *,
    clusters: Sequence[np.ndarray] = (),
) -> PercentileCI:
    """The q-th percentile and its interval, allowing for correlation within ``clusters``.

    ``clusters``: zero or more integer label arrays, aligned with ``values`` (e.g. the agent of each
    request, the time batch it was sent in); NaN values are dropped with their labels. With no
    clustering this is :func:`percentile_ci` exactly. The design effect is
    ``max(1, max_g V_g / V_iid)`` where V_g is the cluster-robust variance of the share of the sample at
    or below the sample q-quantile (k = round(nq/100) of the n values, rows tied at the k-th value each
    counting as the share of a row needed to make k; +inf handled alike) and V_iid = p(1-p)/n; the
    interval is the exact order-statistic interval of ``floor(n / deff)`` samples, whose ranks k (0-based)
    are mapped to the full sample's ranks ``(k + 1)(n + 1)/(n_eff + 1) - 1`` rounded outwards.
    ``confidence=None`` gives a zero-width interval at the observed value.
    """
    x = np.asarray(values, dtype=float)
    keep = ~np.isnan(x)
    x = x[keep]
    n = len(x)
    if n == 0:
        return PercentileCI(math.nan, math.nan, math.nan, 0, 0.0, 1.0)
    if not clusters:
        s = np.sort(x)
        value = percentile_sorted(s, q)
        if confidence is None:
            return PercentileCI(value, value, value, n, float(n), 1.0)
        lo, hi = percentile_ci_sorted(s, q, confidence)
        return PercentileCI(value, lo, hi, n, float(n), 1.0)
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    # only a few order statistics are needed: np.partition (O(n)) instead of a full sort
    rank = (n - 1) * q / 100.0
    r_lo = math.floor(rank)
    r_hi = min(r_lo + 1, n - 1)
    # the indicator "among the k smallest" (ties broken by position, as a stable sort would)
    k = min(max(round(n * q / 100.0), 1), n - 1) if n > 1 else 1
    part = np.partition(x, sorted({r_lo, r_hi, k - 1}))
    value = percentile_sorted(part, q)  # it reads only ranks r_lo and r_hi, in place after the partition
    if confidence is None:
        return PercentileCI(value, value, value, n, float(n), 1.0)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    p = k / n
    v_iid = p * (1 - p) / n
    deff = 1.0
    if v_iid > 0 and clusters:
        # the share of the sample at or below the k-th value; rows tied with it share what is needed to
        # make k equally (an arbitrary split of ties would invent a correlation with the row order)
        v = part[k - 1]
        below = (x < v).astype(float)
        tie = x == v
        below[tie] = (k - np.count_nonzero(x < v)) / np.count_nonzero(tie)
        dev = below - p
        for labels in clusters:
            codes = np.asarray(labels)[keep]
            if codes.dtype.kind not in "iu" or (len(codes) and codes.min() < 0):
                codes = np.unique(codes, return_inverse=True)[1]
            deff = max(deff, _cluster_variance(dev, codes.astype(np.intp, copy=False)) / v_iid)
    if deff <= 1.0 + 1e-9:  # rounding: singleton clusters give exactly the independent variance
        deff = 1.0
    ne = n if deff == 1.0 else max(int(n / deff), 1)
    lr, ur = _ci_ranks(ne, q / 100.0, confidence)
    if ne == n:
        li, ui = lr, ur
    else:
        scale = (n + 1) / (ne + 1)
        li = None if lr is None else max(math.floor((lr + 1) * scale - 1), 0)
        ui = None if ur is None else min(math.ceil((ur + 1) * scale - 1), n - 1)
    want = sorted({i for i in (li, ui) if i is not None})
    if want:
        part = np.partition(part, want)
    lo_v = -math.inf if li is None else float(part[li])
    hi_v = math.inf if ui is None else float(part[ui])
    return PercentileCI(value, lo_v, hi_v, n, n / deff, deff)
