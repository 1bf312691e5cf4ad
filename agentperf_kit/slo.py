"""SLO tiers and verdicts.

A level **passes a tier** when, over the requests of its steady window, the ``speed_percentile`` (25) of
output speed >= ``min_output_speed_tps`` and the ``ttft_percentile`` (95) of TTFT <= ``max_ttft_s``
(docs/metrics.md). Failures follow the **failure policy**: ``miss`` (default: a failed request
stays in with TTFT +inf and speed 0, see :mod:`.metrics`) or ``exclude`` (the public reference: requests
the server answered with a failure are left out). Under both, a request still unfinished at the end of
the run (or timed out by the client) stays in, judged on what it showed: a hung server never passes.

Verdicts at a confidence level (default 0.95): each statistic's interval is compared with its threshold:
entirely on the good side -> ``pass``, entirely on the bad side -> ``fail``, straddling -> ``inconclusive``.
The interval method (``ci_method``, :data:`CI_METHODS`) allows for the correlation of a closed loop's
requests (:func:`.percentiles.clustered_percentile_ci`; ``iid`` is the exact order-statistic interval of
independent samples). A statistic is also ``inconclusive`` when the window is not steady (its two halves'
intervals do not overlap and the halves' own verdicts disagree), and the speed statistic when more than
``max_unmeasured_share`` of the requests had a speed the client could not measure. A tier fails if either
statistic fails, passes if both pass, else is inconclusive. With ``confidence=None`` verdicts are point
verdicts (the observed percentile against the threshold). The **binding constraint** is the statistic
that fails (the worse one, by margin, if both do) or, when the tier passes, the one closer to its limit by
margin, where margin = log(observed / floor) for speed and log(ceiling / observed) for TTFT (a log ratio,
so that a floor and a ceiling compare fairly: a speed at twice its floor and a TTFT at half its ceiling are
equally close).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, UnknownNameError
from .metrics import METRICS
from .percentiles import PercentileCI, clustered_percentile_ci

__all__ = [
    "CI_METHODS",
    "DEFAULT_CI_METHOD",
    "DEFAULT_FAILURE_POLICY",
    "DEFAULT_MAX_UNMEASURED_SHARE",
    "DEFAULT_TIER_PRESET",
    "FAILURE_POLICIES",
    "TIER_PRESETS",
    "Tier",
    "TierPreset",
    "evaluate_level",
    "get_tier_preset",
    "level_intervals",
    "level_verdicts",
    "max_agents",
    "per_agent_attainment",
    "policy_frame",
    "tier_preset_names",
    "tiers_from_spec",
]

DEFAULT_TIER_PRESET = "aa-dsv4pro"
VERDICTS = ("pass", "fail", "inconclusive")
CI_METHODS = ("iid", "agent", "time", "agent+time")
DEFAULT_CI_METHOD = "agent+time"
TIME_BATCHES = 20  # the "time" clusters: the window cut into this many equal batches (by send time)
FAILURE_POLICIES = ("miss", "exclude")
DEFAULT_FAILURE_POLICY = "miss"
DEFAULT_MAX_UNMEASURED_SHARE = 0.05
# errors that mean "the client gave up or the run ended", not "the server reported a failure": kept in
# the window under every failure policy (a hung server must never pass)
UNFINISHED_ERRORS = ("cancelled_at_end", "request_timeout", "stall_timeout")


# which direction is better, per statistic a tier judges (metrics.METRICS is the single source)
_HIGH = {name: METRICS[name].higher_is_better for name in ("output_speed_tps", "ttft_s")}


@dataclass(frozen=True, slots=True)
class Tier:
    """One SLO tier: a speed floor at a percentile and a TTFT ceiling at a percentile."""

    name: str
    label: str
    min_output_speed_tps: float
    max_ttft_s: float
    speed_percentile: float = 25.0
    ttft_percentile: float = 95.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"tier name must be identifier-safe (like 'slo1'), got {self.name!r}")
        if not self.min_output_speed_tps >= 0 or not self.max_ttft_s > 0:
            raise ConfigError(
                f"tier {self.name}: need min_output_speed_tps >= 0 and max_ttft_s > 0, got "
                f"{self.min_output_speed_tps} and {self.max_ttft_s}"
            )
        for pname in ("speed_percentile", "ttft_percentile"):
            if not 0 <= getattr(self, pname) <= 100:
                raise ConfigError(f"tier {self.name}: {pname} must be in [0, 100]")

    def as_dict(self) -> dict[str, Any]:
        """The tier as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TierPreset:
    """A named set of tiers with its source."""

    name: str
    label: str
    tiers: tuple[Tier, ...]
    source: str = ""


def _load_presets() -> dict[str, TierPreset]:
    raw = json.loads(resources.files("agentperf_kit").joinpath("data/tier_presets.json").read_text())
    return {
        name: TierPreset(name, spec["label"], tuple(Tier(**t) for t in spec["tiers"]), spec.get("source", ""))
        for name, spec in raw.items()
    }


TIER_PRESETS: dict[str, TierPreset] = _load_presets()


def tier_preset_names() -> list[str]:
    """Names of the built-in tier presets."""
    return sorted(TIER_PRESETS)


def tiers_from_spec(spec: str) -> TierPreset:
    """User-defined tiers from a spec string: comma-separated ``NAME=SPEED/TTFT[/SPEED_PCT/TTFT_PCT]``,
    e.g. ``"fast=100/2,slow=20/10/25/95"`` (speed floor in tokens/s, TTFT ceiling in s, percentiles)."""
    tiers = []
    for part in spec.split(","):
        name, _, rest = part.strip().partition("=")
        nums = rest.split("/")
        if not name or len(nums) not in (2, 4):
            raise ConfigError(
                f"bad tier spec {part.strip()!r}: expected NAME=SPEED/TTFT or "
                "NAME=SPEED/TTFT/SPEED_PCT/TTFT_PCT, e.g. slo1=20/10"
            )
        try:
            vals = [float(v) for v in nums]
        except ValueError:
            raise ConfigError(f"bad tier spec {part.strip()!r}: numbers expected after '='") from None
        extra = {"speed_percentile": vals[2], "ttft_percentile": vals[3]} if len(vals) == 4 else {}
        label = f"{vals[0]:g} tok/s & {vals[1]:g} s"
        tiers.append(Tier(name, label, vals[0], vals[1], **extra))
    names = [t.name for t in tiers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"tier spec {spec!r}: tier name(s) {', '.join(dupes)} given more than once; each tier needs "
            "its own name (e.g. fast=100/2,slow=20/10)"
        )
    return TierPreset(spec, "user-defined tiers", tuple(tiers), "user")


def get_tier_preset(name: str) -> TierPreset:
    """The built-in preset ``name``, or user-defined tiers when ``name`` is a spec (see
    :func:`tiers_from_spec`); the error lists the known names."""
    if "=" in name:
        return tiers_from_spec(name)
    try:
        return TIER_PRESETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown tier preset {name!r}; known presets: {', '.join(tier_preset_names())}"
        ) from None


def _verdict(
    observed: float, lo: float, hi: float, threshold: float, higher_is_better: bool, confidence: float | None
) -> str:
    if math.isnan(observed):
        return "inconclusive"
    if confidence is None:
        ok = observed >= threshold if higher_is_better else observed <= threshold
        return "pass" if ok else "fail"
    if higher_is_better:
        if lo >= threshold:
            return "pass"
        if hi < threshold:
            return "fail"
    else:
        if hi <= threshold:
            return "pass"
        if lo > threshold:
            return "fail"
    return "inconclusive"


def _rows(df: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """``df[mask]``; ``df`` itself when every row is kept (rows read for judging are often all in the
    window: no copy of a level of millions of requests)."""
    return df if mask.all() else df[mask]


def _window(df: pd.DataFrame, in_window_only: bool) -> pd.DataFrame:
    if in_window_only and "in_window" in df:
        return _rows(df, df["in_window"].astype(bool).to_numpy())
    return df


def policy_frame(df: pd.DataFrame, failure_policy: str = DEFAULT_FAILURE_POLICY) -> pd.DataFrame:
    """The rows a failure policy judges: all (``miss``), or all but the server-reported failures
    (``exclude``: ``ok`` false with an error other than :data:`UNFINISHED_ERRORS`)."""
    if failure_policy not in FAILURE_POLICIES:
        raise ConfigError(
            f"failure_policy must be one of {', '.join(FAILURE_POLICIES)}, got {failure_policy!r}"
        )
    if failure_policy == "miss" or "ok" not in df:
        return df
    ok = df["ok"].astype(bool).to_numpy()
    if "error" in df:
        unfinished = df["error"].astype("string").isin(UNFINISHED_ERRORS).fillna(False).to_numpy(dtype=bool)
    else:
        unfinished = np.zeros(len(df), dtype=bool)
    return _rows(df, ok | unfinished)


def _bounds(w: pd.DataFrame, window: tuple[float | None, float | None] | None) -> tuple[float, float]:
    t = w["t_send_s"].to_numpy(dtype=float) if "t_send_s" in w else np.zeros(0)
    lo, hi = window if window is not None else (None, None)
    finite = t[np.isfinite(t)]
    if lo is None or not math.isfinite(lo):
        lo = float(finite.min()) if len(finite) else 0.0
    if hi is None or not math.isfinite(hi):
        hi = float(finite.max()) if len(finite) else 0.0
    return float(lo), float(hi)


def _clusters(w: pd.DataFrame, method: str, bounds: tuple[float, float]) -> list[np.ndarray]:
    """Cluster labels of the rows of ``w`` for an interval method."""
    if method not in CI_METHODS:
        raise ConfigError(f"ci_method must be one of {', '.join(CI_METHODS)}, got {method!r}")
    out = []
    if method in ("agent", "agent+time") and "agent" in w:
        out.append(pd.factorize(w["agent"])[0])
    if method in ("time", "agent+time") and "t_send_s" in w:
        lo, hi = bounds
        t = w["t_send_s"].to_numpy(dtype=float)
        width = (hi - lo) / TIME_BATCHES if hi > lo else 1.0
        b = np.floor((np.nan_to_num(t, nan=lo) - lo) / width)
        out.append(np.clip(b, 0, TIME_BATCHES - 1).astype(np.intp))
    return out


def level_intervals(
    w: pd.DataFrame,
    column: str,
    q: float,
    *,
    method: str = DEFAULT_CI_METHOD,
    confidence: float | None = 0.95,
    window: tuple[float | None, float | None] | None = None,
) -> PercentileCI:
    """The q-th percentile of ``w[column]`` (the rows already chosen) with its ``method`` interval.
    ``window`` = (start, end) of the steady window in s, for the time batches (default: the rows' send
    times)."""
    labels = _clusters(w, method, _bounds(w, window))
    return clustered_percentile_ci(w[column].to_numpy(dtype=float), q, confidence, clusters=labels)


#: the columns :func:`evaluate_level` reads
_EVAL_COLUMNS = frozenset(
    ("in_window", "ok", "error", "agent", "t_send_s", "speed_unmeasurable", "output_speed_tps", "ttft_s")
)


#: the columns of the window's halves (the steadiness check): the statistics and their cluster labels
_HALF_COLUMNS = frozenset(("agent", "t_send_s", "output_speed_tps", "ttft_s"))


def _halves(w: pd.DataFrame, bounds: tuple[float, float]) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    mid = (bounds[0] + bounds[1]) / 2
    t = w["t_send_s"].to_numpy(dtype=float)
    return w[t < mid], w[t >= mid], mid


def evaluate_level(
    df: pd.DataFrame,
    tiers: TierPreset | list[Tier] | tuple[Tier, ...],
    *,
    confidence: float | None = 0.95,
    in_window_only: bool = True,
    ci_method: str = DEFAULT_CI_METHOD,
    failure_policy: str = DEFAULT_FAILURE_POLICY,
    max_unmeasured_share: float = DEFAULT_MAX_UNMEASURED_SHARE,
    window: tuple[float | None, float | None] | None = None,
    check_steady: bool = True,
) -> pd.DataFrame:
    """Tidy verdict table for one level: one row per (tier, statistic) plus the tier verdict.

    Columns: ``tier, label, statistic, percentile, observed, ci_low, ci_high, threshold, n, n_eff, deff,
    margin, verdict, reason, tier_verdict, binding, unmeasured_share, steady, half1, half2,
    failure_policy, ci_method``. ``reason`` says why a statistic is inconclusive (``interval``,
    ``unsteady``, ``unmeasured``, ``no_data``; ``all_failed`` for the ``fail`` of a window whose every
    request was a server failure, under ``exclude``); ``steady`` is False when the two halves of the window
    (by send time) have disjoint intervals; ``half1``/``half2`` are the halves' percentiles.
    """
    tiers = tiers.tiers if isinstance(tiers, TierPreset) else tuple(tiers)
    # only the columns read below: the row filters then copy these, not every column of the level
    df = df[[c for c in df.columns if c in _EVAL_COLUMNS]]
    window_rows = _window(df, in_window_only)
    w = policy_frame(window_rows, failure_policy)
    # every request of the window was a server failure (possible only under `exclude`): no SLO was met
    all_failed = len(window_rows) > 0 and len(w) == 0
    bounds = _bounds(w, window)
    labels = _clusters(w, ci_method, bounds)
    if "speed_unmeasurable" in w and len(w):
        unmeasured = float(w["speed_unmeasurable"].astype(bool).mean())
    else:
        unmeasured = 0.0
    can_split = check_steady and confidence is not None and "t_send_s" in w and len(w) >= 4
    if can_split:
        # only the columns the halves' intervals read are copied
        h1, h2, _ = _halves(w[[c for c in w.columns if c in _HALF_COLUMNS]], bounds)
        l1 = _clusters(h1, ci_method, (bounds[0], (bounds[0] + bounds[1]) / 2))
        l2 = _clusters(h2, ci_method, ((bounds[0] + bounds[1]) / 2, bounds[1]))
    cache: dict[tuple[str, float], tuple[PercentileCI, PercentileCI | None, PercentileCI | None]] = {}

    def stat(col: str, q: float):
        key = (col, q)
        if key not in cache:
            full = clustered_percentile_ci(w[col].to_numpy(dtype=float), q, confidence, clusters=labels)
            a = b = None
            if can_split:
                a = clustered_percentile_ci(h1[col].to_numpy(dtype=float), q, confidence, clusters=l1)
                b = clustered_percentile_ci(h2[col].to_numpy(dtype=float), q, confidence, clusters=l2)
            cache[key] = (full, a, b)
        return cache[key]

    rows = []
    for tier in tiers:
        parts = []
        for st, q, thr, hib in (
            # direction from the metric registry: a speed floor, a TTFT ceiling
            (
                "output_speed_tps",
                tier.speed_percentile,
                tier.min_output_speed_tps,
                _HIGH["output_speed_tps"],
            ),
            ("ttft_s", tier.ttft_percentile, tier.max_ttft_s, _HIGH["ttft_s"]),
        ):
            ci, a, b = stat(st, q)
            obs = ci.value
            verdict = _verdict(obs, ci.low, ci.high, thr, hib, confidence)
            reason = "no_data" if math.isnan(obs) else "interval" if verdict == "inconclusive" else ""
            if all_failed:
                verdict, reason = "fail", "all_failed"
            steady = True
            if a is not None and b is not None and a.n and b.n:
                steady = not (a.high < b.low or b.high < a.low)
                if not steady and verdict != "inconclusive":
                    va = _verdict(a.value, a.value, a.value, thr, hib, None)
                    vb = _verdict(b.value, b.value, b.value, thr, hib, None)
                    if va != vb:
                        verdict, reason = "inconclusive", "unsteady"
            if st == "output_speed_tps" and unmeasured > max_unmeasured_share and verdict == "pass":
                verdict, reason = "inconclusive", "unmeasured"
            parts.append(
                dict(
                    tier=tier.name,
                    label=tier.label,
                    statistic=st,
                    percentile=q,
                    observed=obs,
                    ci_low=ci.low,
                    ci_high=ci.high,
                    threshold=thr,
                    n=ci.n,
                    n_eff=ci.n_eff,
                    deff=ci.deff,
                    margin=_log_margin(obs, thr, hib),
                    verdict=verdict,
                    reason=reason,
                    unmeasured_share=unmeasured if st == "output_speed_tps" else math.nan,
                    steady=steady,
                    half1=a.value if a is not None else math.nan,
                    half2=b.value if b is not None else math.nan,
                )
            )
        verdicts = {p["verdict"] for p in parts}
        tier_verdict = "fail" if "fail" in verdicts else "pass" if verdicts == {"pass"} else "inconclusive"
        # margin as a log ratio, > 0 on the good side: symmetric for a floor and a ceiling (a speed
        # twice its floor and a TTFT half its ceiling are equally far from their limits)
        binding = min(parts, key=lambda p: p["margin"])["statistic"]
        binding = "speed" if binding == "output_speed_tps" else "ttft"
        for p in parts:
            p.update(
                tier_verdict=tier_verdict,
                binding=binding,
                failure_policy=failure_policy,
                ci_method=ci_method if confidence is not None else "point",
            )
            rows.append(p)
    return pd.DataFrame(rows)


def level_verdicts(
    df: pd.DataFrame,
    tiers: TierPreset | list[Tier] | tuple[Tier, ...],
    *,
    confidence: float | None = 0.95,
    in_window_only: bool = True,
    **kwargs: Any,
) -> dict[str, str]:
    """Tier name -> ``pass``/``fail``/``inconclusive`` for one level (``kwargs``: as
    :func:`evaluate_level`)."""
    ev = evaluate_level(df, tiers, confidence=confidence, in_window_only=in_window_only, **kwargs)
    return dict(zip(ev["tier"], ev["tier_verdict"]))


def max_agents(levels: pd.DataFrame, tiers: TierPreset | list[Tier] | tuple[Tier, ...]) -> pd.DataFrame:
    """Per tier, the highest N that passes, from measured levels.

    ``levels`` needs ``concurrency`` and ``verdict_<tier>`` columns (and optionally ``binding_<tier>``).
    Rules: the result is the highest passing N below the lowest failing N (inconclusive levels count as
    neither); 0 if N = 1 fails or nothing passes below the first failure; ``max_agents_is_lower_bound``
    when no level fails (the highest measured level still passes); ``non_monotonic`` when some level
    above the lowest failing N passes (listed in ``non_monotonic_levels``).
    """
    tiers = tiers.tiers if isinstance(tiers, TierPreset) else tuple(tiers)
    rows = []
    lv = levels.sort_values("concurrency")
    for tier in tiers:
        col = f"verdict_{tier.name}"
        n = lv["concurrency"].to_numpy()
        v = lv[col].to_numpy()
        fails = n[v == "fail"]
        lowest_fail = int(fails.min()) if len(fails) else None
        passing = n[v == "pass"]
        below = passing[passing < lowest_fail] if lowest_fail is not None else passing
        best = int(below.max()) if len(below) else 0
        above = sorted(int(x) for x in passing[passing > lowest_fail]) if lowest_fail is not None else []
        binding = None
        bcol = f"binding_{tier.name}"
        if bcol in lv:
            at = lv[lv["concurrency"] == (lowest_fail if lowest_fail is not None else best)]
            binding = at[bcol].iloc[-1] if len(at) else None
        rows.append(
            dict(
                name=tier.name,
                label=tier.label,
                min_output_speed_tps=tier.min_output_speed_tps,
                speed_percentile=tier.speed_percentile,
                max_ttft_s=tier.max_ttft_s,
                ttft_percentile=tier.ttft_percentile,
                max_agents=best,
                max_agents_is_lower_bound=lowest_fail is None and len(passing) > 0,
                lowest_failing_agents=lowest_fail,
                binding_constraint=binding,
                non_monotonic=bool(above),
                non_monotonic_levels=above,
            )
        )
    return pd.DataFrame(rows)


def per_agent_attainment(df: pd.DataFrame, tier: Tier, *, in_window_only: bool = True) -> pd.DataFrame:
    """Per agent: share of its requests meeting the tier's per-request thresholds.

    A request meets the tier when its TTFT <= max_ttft_s and (its speed >= min_output_speed_tps or it has
    no speed because it produced < 2 tokens). Columns: ``agent, n, attainment``.
    """
    w = _window(df, in_window_only)
    speed = w["output_speed_tps"].to_numpy(dtype=float)
    meets = (w["ttft_s"].to_numpy(dtype=float) <= tier.max_ttft_s) & (
        np.isnan(speed) | (speed >= tier.min_output_speed_tps)
    )
    out = pd.DataFrame({"agent": w["agent"].to_numpy(), "meets": meets})
    g = out.groupby("agent")["meets"]
    return pd.DataFrame({"n": g.size(), "attainment": g.mean()}).reset_index()


def _log_margin(obs: float, thr: float, higher_is_better: bool) -> float:
    """log(obs / thr) for a floor, log(thr / obs) for a ceiling; -inf for a missing or impossible value."""
    if obs != obs or thr <= 0:
        return -math.inf
    if higher_is_better:
        return -math.inf if obs <= 0 else math.inf if math.isinf(obs) else math.log(obs / thr)
    return -math.inf if math.isinf(obs) else math.inf if obs <= 0 else math.log(thr / obs)
