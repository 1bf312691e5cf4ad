"""The low-high band of a simulated sweep's answers, measured around the mid answer, and AA's figure.

A sweep on the simulator runs at one efficiency set (``mid`` by default). The band is the answer under
the ``low`` and ``high`` sets (``agentperf_kit/sim/presets``, the calibration's spread). Three full
sweeps would triple the cost; instead each end is searched near where the model puts it, with few
levels, and (when two CPUs are free) beside the sweep's own bisection (:mod:`agentperf_kit.sweep_jobs`):

1. **Anchor** (when the sweep's ramp ends): per tier, from the ramp's highest pass P and lowest failure
   F (under the sweep's set), the N where the tier's binding margin (log ratio of the binding statistic
   to its threshold, > 0 on the good side) crosses 0, interpolated linearly in log N between P and F, and
   the margin's slope per unit of log N there (:func:`ramp_anchor`).
2. **First probe**: where the margin would cross 0 if the set only scaled the step time: with
   rho = the sweep set's decode step time / the band set's (step-time model, at the decode batch the
   anchor implies, anchor x the decoding share at the tier's speed floor, and the trajectories' mean
   context: :func:`agentperf_kit.sim.capacity.decode_step_ratio`), every margin shifts by log rho, so
   the crossing moves to anchor x rho^(1 / slope). (On the default system this predicted 26.8 and
   73.5 agents for slo1's low and high ends, measured 27 and 72.)
3. **Next probes** (:func:`search_end`): the margin's zero predicted from the measured margins (secant
   between the bracket's ends, else the last probe and the ramp's slope); the next probe goes to the
   far side of it from the last one: the level that would close the bracket when the prediction allows
   it, else 0.4 x the resolution past the zero; after :data:`GUIDED_PROBES` probes, plain bisection
   (doubling first when no failure is known yet, up to :data:`BAND_MAX_FACTOR` x P or the cap; beyond,
   a lower bound). The probes only choose where to measure: every answer is a measured pass.
4. The search assumes the answer grows with the efficiency set (low <= sweep <= high): under ``low`` the
   ramp's F fails, under ``high`` its P passes; the ends are then clamped to the sweep's answer A
   (low end = min(low, A), high end = max(high, A)). It stops when the bracket is within
   :data:`BAND_RESOLUTION` of its lower end (or 1 agent): the band is an uncertainty range (the sets
   differ by ~2x on the default system), not a figure to the agent.

Each band level runs under AA's rules (the same extensions of inconclusive levels) with the same seed as
the sweep's level of that N (seeds derive from (seed, N, extension)), and stops at the interim looks of
:mod:`agentperf_kit.sweep_early` once every tier's verdict is decided, and at its last look in any case,
where an undecided tier takes its point verdict, as one still inconclusive after a full window does
instead of an extension (no band end needs an AA-valid window: the band is the model's uncertainty, not an
answer; ``early_stop=False`` runs them in full);
written under ``band/low/`` and ``band/high/`` and reused on resume; levels are shared by the tiers. The
probes depend only on the ramp's levels, so a resumed, an inline and a parallel run measure the same
levels. The sweep's own set need not be ``mid``: the band is always ``low`` and ``high``, and a sweep at
``low`` (``high``) uses its own answer as that end.

**Published figure**: where AA published a result for the same accelerator and model
(:func:`agentperf_kit.published.load_published_results`, AA's ``aa-dsv4pro`` tiers only), the tier also
carries ``published_agents_per_accelerator`` and ``published_agents_per_mw``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .sweep_early import _lowest_closing

__all__ = [
    "BAND_MAX_FACTOR",
    "BAND_RESOLUTION",
    "GUIDED_PROBES",
    "EndPlan",
    "band_columns",
    "plan_band",
    "predicted_crossing",
    "published_for",
    "ramp_anchor",
    "run_band_end",
    "search_end",
]

BAND_RESOLUTION = 1 / 8
BAND_MAX_FACTOR = 8
GUIDED_PROBES = 4
#: margin slope per unit of log N when the ramp gives none (a speed inversely proportional to N)
DEFAULT_SLOPE = 1.0
_AIM = 0.4  # a probe lands this share of the resolution past the predicted crossing

Probe = Callable[[int], tuple[bool, float]]


@dataclasses.dataclass(frozen=True)
class EndPlan:
    """One tier's search under one set: first probe ``guess``, margin ``slope`` per unit of log N,
    ``lo`` (assumed to pass; 0 = nothing), ``hi`` (assumed to fail; None = unknown) and ``top`` (the
    highest N measured while no failure is known), all in agents."""

    tier: str
    guess: int
    slope: float
    lo: int
    hi: int | None
    top: int


def _close(lo: int, hi: int) -> bool:
    return hi - lo <= max(1, math.floor(lo * BAND_RESOLUTION))


def _bisect(passes: Callable[[int], bool], lo: int, hi: int) -> int:
    """Highest passing N within the resolution, given ``lo`` passes (or is 0) and ``hi`` fails."""
    while not _close(lo, hi):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    return lo


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _log_secant_zero(n1: float, m1: float, n2: float, m2: float) -> float:
    """The N (agents) where the straight line through (log ``n1``, ``m1``) and (log ``n2``, ``m2``) crosses
    0: a margin interpolated (or extrapolated) linearly in log N. ``m1 != m2``."""
    return math.exp(math.log(n1) + (math.log(n2) - math.log(n1)) * m1 / (m1 - m2))


def _aim(pts: Mapping[int, float], lo: int, hi: int | None, last: int, passed: bool, slope: float):
    """The next probe, on the far side of the predicted zero of the margin from the last probe: the level
    that would close the bracket when the prediction allows it, else 0.4 x the resolution past the zero;
    None when the margins predict nothing."""
    root = None
    if hi is not None and lo in pts and hi in pts and _finite(pts[lo]) and _finite(pts[hi]):
        m_lo, m_hi = pts[lo], pts[hi]
        if m_lo > m_hi:
            root = _log_secant_zero(lo, m_lo, hi, m_hi)
    if root is None and _finite(pts[last]):
        root = last * math.exp(pts[last] / slope)
    if root is None or not math.isfinite(root):
        return None
    if passed:  # a failure next: the highest that closes the bracket, if predicted to fail
        closing = lo + max(1, math.floor(lo * BAND_RESOLUTION))
        return closing if closing > root else math.ceil(root * (1 + _AIM * BAND_RESOLUTION))
    if hi is not None:  # a pass next: the lowest that closes the bracket, if predicted to pass
        closing = _lowest_closing(hi, 1, BAND_RESOLUTION)
        if closing < root:
            return closing
    return math.floor(root * (1 - _AIM * BAND_RESOLUTION))


def search_end(probe: Probe, plan: EndPlan) -> tuple[int, bool]:
    """The highest passing N under one set (within :data:`BAND_RESOLUTION`) and whether it is a lower
    bound (still passing at ``plan.top``). ``probe(n)`` measures (or reuses) the level of ``n`` agents
    and returns (passed, binding margin). Method: the module docstring."""
    lo, hi, top = plan.lo, plan.hi, max(plan.top, plan.lo)
    pts: dict[int, float] = {}
    n: int | None = plan.guess
    for _ in range(GUIDED_PROBES):
        upper = hi - 1 if hi is not None else top
        if n is None or lo + 1 > upper:
            break
        n = min(max(n, lo + 1), upper)
        passed, pts[n] = probe(n)
        lo, hi = (n, hi) if passed else (lo, n)
        if (hi is not None and _close(lo, hi)) or (hi is None and lo >= top):
            break
        n = _aim(pts, lo, hi, n, passed, plan.slope)
    while hi is None:  # no failure known: double up to the top
        if lo >= top:
            return lo, True
        n = min(max(2 * lo, lo + 1), top)
        if probe(n)[0]:
            lo = n
        else:
            hi = n
    return _bisect(lambda k: probe(k)[0], lo, hi), False


def _margin(row: Mapping[str, Any], tier: str) -> float:
    """The binding margin of ``tier`` in a level's row: the smaller of its speed and TTFT margins."""
    raw = [row.get(f"{tier}_margin_{k}") for k in ("speed", "ttft")]
    ms = [float(m) for m in raw if m is not None and not (isinstance(m, float) and math.isnan(m))]
    return min(ms) if ms else math.nan


def ramp_anchor(rows: Mapping[int, Mapping[str, Any]], tier: str) -> tuple[float, float, int, int | None]:
    """(anchor N, margin slope per unit of log N, highest pass P, lowest failure F or None) of ``tier``
    from the levels measured so far (``rows``: N -> level row with ``verdict_<tier>`` and the margins).
    Anchor: 0 when N = 1 fails; P when nothing fails; else the margin's zero interpolated in log N
    between P and F (the geometric mean when their margins do not cross)."""
    fails = [n for n, r in rows.items() if r[f"verdict_{tier}"] == "fail"]
    f = min(fails) if fails else None
    passes = [n for n, r in rows.items() if r[f"verdict_{tier}"] == "pass" and (f is None or n < f)]
    p = max(passes) if passes else 0
    if f is None:
        return float(p), DEFAULT_SLOPE, p, None
    if p == 0:
        return 0.0, DEFAULT_SLOPE, 0, f
    m_p, m_f = _margin(rows[p], tier), _margin(rows[f], tier)
    span = math.log(f) - math.log(p)
    if _finite(m_p) and _finite(m_f) and m_p > m_f:
        return _log_secant_zero(p, m_p, f, m_f), (m_p - m_f) / span, p, f
    return math.sqrt(p * f), DEFAULT_SLOPE, p, f


def predicted_crossing(rows: Mapping[int, Mapping[str, Any]], tier: str) -> float | None:
    """Where ``tier``'s binding margin is predicted to cross 0 (agents) while no level has failed it yet:
    the secant in log N through the margins of the two highest levels measured (``rows``: N -> level row),
    both passes with a finite, positive margin that falls between them. None when there is no such pair
    (fewer than two passes, a failure already, margins that do not fall) or when the crossing lies more than
    e^20 (~5e8) times beyond the higher level (margins that barely fall predict nothing a ramp can use)."""
    if any(r[f"verdict_{tier}"] == "fail" for r in rows.values()):
        return None
    top = sorted(rows)[-2:]
    if len(top) < 2 or any(rows[n][f"verdict_{tier}"] != "pass" for n in top):
        return None
    (n1, n2), (m1, m2) = top, [_margin(rows[n], tier) for n in top]
    if not (_finite(m1) and _finite(m2) and m1 > m2 > 0):
        return None
    slope = (m1 - m2) / (math.log(n2) - math.log(n1))
    if m2 / slope > 20.0:
        return None
    return n2 * math.exp(m2 / slope)


def plan_band(cfg, rows: Mapping[int, Mapping[str, Any]], cap: int, trajectories) -> dict[str, list[EndPlan]]:
    """Per efficiency set (``low``, ``high``; not the sweep's own): each tier's :class:`EndPlan`, from the
    ramp's levels ``rows`` (N -> level row), the sweep's cap and the model's capacity ratio."""
    from .sim.capacity import decode_profile, decode_step_ratio
    from .slo import get_tier_preset

    dep = getattr(cfg.target_object, "deployment", None)
    plans: dict[str, list[EndPlan]] = {}
    for eff in ("low", "high"):
        if eff == cfg.efficiency:
            continue
        out = []
        for t in get_tier_preset(cfg.tiers).tiers:
            anchor, slope, p, f = ramp_anchor(rows, t.name)
            guess = anchor
            if dep is not None and anchor > 0:
                c, share = decode_profile(trajectories, t.min_output_speed_tps)
                if share > 0:
                    rho = decode_step_ratio(dep, cfg.efficiency, eff, round(anchor * share), c)
                    guess = anchor * rho ** (1.0 / slope)
            if eff == "low":
                top = f - 1 if f else cap
                plan = EndPlan(t.name, min(math.floor(guess), top), slope, 0, f, top)
            else:
                top = max(BAND_MAX_FACTOR * max(p, 1), cap)
                plan = EndPlan(t.name, max(math.ceil(guess), p + 1), slope, p, None, top)
            out.append(plan)
        plans[eff] = out
    return plans


def run_band_end(cfg, out: Path, eff: str, plans: list[EndPlan]) -> dict[str, Any]:
    """Search every tier's end under the set ``eff`` (levels under ``out/band/eff``, shared by the
    tiers); runs in a worker process or inline. Returns ``answers`` (tier -> (agents, is lower bound)),
    ``levels`` (levels measured or reused under this set), ``measured`` (of which measured by this call)
    and ``lines`` (progress lines). The levels keep their judged row, not their request rows."""
    from .sweep import _Sweeper

    lines: list[str] = []
    d = out / "band" / eff
    d.mkdir(parents=True, exist_ok=True)
    # the band's levels keep their judged rows, not their requests (docs/sweep.md "Disk")
    # ... and stop at an interim look once every tier is decided (no band end needs an AA-valid window)
    sw = _Sweeper(dataclasses.replace(cfg, efficiency=eff), d, lines.append, keep_rows=False, steer_only=True)
    sw.say(f"band: the {eff} efficiency set")
    answers: dict[str, tuple[int, bool]] = {}
    for plan in plans:

        def probe(n: int, tier: str = plan.tier) -> tuple[bool, float]:
            row = sw.level(n, early=True)
            return row[f"verdict_{tier}"] == "pass", _margin(row, tier)

        answers[plan.tier] = search_end(probe, plan)
    stopped = sum(1 for r in sw.rows.values() if r.get("stopped_early"))
    return {
        "answers": answers,
        "levels": len(sw.rows),
        "stopped_early": stopped,
        "measured": sw.n_measured_now,
        "lines": lines,
    }


def band_columns(
    cfg, tiers: pd.DataFrame, ends: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per tier name: ``band_low_agents``, ``band_high_agents`` (agents), ``band_low_is_lower_bound``,
    ``band_high_is_lower_bound`` and ``band_levels`` (levels under each set), from the sweep's tier table
    and the ends :func:`run_band_end` found (per set), clamped to the sweep's answer."""
    res: dict[str, dict[str, Any]] = {}
    for _, r in tiers.iterrows():
        name, a, lb = r["name"], int(r["max_agents"]), bool(r["max_agents_is_lower_bound"])
        low = min(ends["low"]["answers"][name][0], a) if "low" in ends else a
        if "high" in ends:
            h, h_lb = ends["high"]["answers"][name]
            high, high_lb = (h, h_lb) if h >= a else (a, lb)
        else:
            high, high_lb = a, lb
        res[name] = {
            "band_low_agents": low,
            "band_high_agents": high,
            "band_low_is_lower_bound": lb and low == a,
            "band_high_is_lower_bound": high_lb,
            "band_levels": {eff: e["levels"] for eff, e in ends.items()},
        }
    return res


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def published_for(accelerator: str | None, model: str | None, tier_preset: str, tier: str) -> dict[str, Any]:
    """AA's published figures for this accelerator, model and tier (AA's ``aa-dsv4pro`` tiers), or {}."""
    if tier_preset != "aa-dsv4pro" or not accelerator or not model:
        return {}
    from .published import load_published_results

    df = load_published_results()
    hit = df[
        (df["accelerator"].map(_norm) == _norm(accelerator))
        & (df["model"].map(_norm) == _norm(model))
        & (df["tier"] == tier)
    ]
    if not len(hit):
        return {}
    r = hit.iloc[0]

    def num(v: Any) -> float | None:
        return None if pd.isna(v) else float(v)

    return {
        "published_agents_per_accelerator": num(r["agents_per_gpu"]),
        "published_agents_per_mw": num(r["agents_per_mw"]),
        "published_system": r["system"],
        "published_source": r["source"],
    }
