"""The low-high band of a simulated sweep's answers, measured around the mid answer, and AA's figure.

A sweep on the simulator runs at one efficiency set (``mid`` by default). The band is the answer under
the ``low`` and ``high`` sets (``agentperf_kit/sim/presets``, the calibration's spread). Three full
sweeps would triple the cost; instead, per tier, with the sweep's answer A and lowest failing N F (both
from the sweep's own levels), assuming the answer grows with the efficiency set (low <= sweep <= high):

- **low**: A is measured under ``low``; a pass makes A the low answer (F fails under ``low`` too);
  otherwise bisection on [0, A].
- **high**: F is measured under ``high``; a failure makes A the high answer; otherwise N doubles from F
  until a level fails (up to :data:`BAND_MAX_FACTOR` x F; beyond, a lower bound), then bisection.
- Bisection stops when the bracket is within :data:`BAND_RESOLUTION` of its lower end (or 1 agent):
  the band is an uncertainty range, not a figure to the agent. The band's answer is the bracket's lower
  end (a measured pass).

Each band level is a full level (AA's rules, the same extensions of inconclusive levels) with the same
seed as the sweep's level of that N (seeds derive from (seed, N, extension)), written under
``band/low/`` and ``band/high/`` and reused on resume; levels are shared by the tiers. A tier whose
answer is a lower bound gets a lower-bound band end the same way. The sweep's own set need not be
``mid``: the band is always ``low`` and ``high``, and a sweep at ``low`` (``high``) uses its own answer as
that end.

**Published figure**: where AA published a result for the same accelerator and model
(:func:`agentperf_kit.published.load_published_results`, AA's ``aa-dsv4pro`` tiers only), the tier also
carries ``published_agents_per_accelerator`` and ``published_agents_per_mw``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["BAND_MAX_FACTOR", "BAND_RESOLUTION", "band_answers", "published_for"]

BAND_RESOLUTION = 1 / 16
BAND_MAX_FACTOR = 8


def _close(lo: int, hi: int) -> bool:
    return hi - lo <= max(1, math.floor(lo * BAND_RESOLUTION))


def _bisect(passes: Callable[[int], bool], lo: int, hi: int) -> int:
    """Highest passing N within the resolution, given ``lo`` passes (or is 0) and ``hi`` fails."""
    while not _close(lo, hi):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    return lo


def low_answer(passes: Callable[[int], bool], answer: int) -> int:
    """The ``low`` set's answer: ``answer`` when it passes under ``low``, else bisection on [0, answer]."""
    if answer <= 0:
        return 0
    if passes(answer):
        return answer
    return _bisect(passes, 0, answer)


def high_answer(
    passes: Callable[[int], bool], answer: int, lowest_fail: int | None, cap: int
) -> tuple[int, bool]:
    """The ``high`` set's answer and whether it is a lower bound (still passing at the top level)."""
    start = lowest_fail if lowest_fail is not None else max(answer, 1)
    lo, n = answer, start
    top = max(start * BAND_MAX_FACTOR, cap)
    while n <= top:
        if not passes(n):
            return _bisect(passes, lo, n), False
        lo, n = n, n * 2
    return lo, True


def band_answers(cfg, out: Path, tiers: pd.DataFrame, cap: int, progress: Any) -> dict[str, dict[str, Any]]:
    """Per tier name: ``band_low_agents``, ``band_high_agents`` (agents), ``band_high_is_lower_bound``
    and ``band_levels`` (levels measured under each set), for the sweep's ``tiers`` table."""
    from .sweep import _Sweeper

    sweepers: dict[str, Any] = {}

    def passes_under(eff: str, tier: str) -> Callable[[int], bool]:
        if eff not in sweepers:
            sw = _Sweeper(dataclasses.replace(cfg, efficiency=eff), out / "band" / eff, progress)
            (out / "band" / eff).mkdir(parents=True, exist_ok=True)
            sweepers[eff] = sw
            sw.say(f"band: the {eff} efficiency set")
        sw = sweepers[eff]
        return lambda n: sw.level(n)[f"verdict_{tier}"] == "pass"

    res: dict[str, dict[str, Any]] = {}
    for _, r in tiers.iterrows():
        name = r["name"]
        a = int(r["max_agents"])
        f = None if pd.isna(r["lowest_failing_agents"]) else int(r["lowest_failing_agents"])
        low = a if cfg.efficiency == "low" else low_answer(passes_under("low", name), a)
        if cfg.efficiency == "high":
            high, high_lb = a, bool(r["max_agents_is_lower_bound"])
        else:
            high, high_lb = high_answer(passes_under("high", name), a, f, cap)
        res[name] = {
            "band_low_agents": low,
            "band_high_agents": high,
            "band_low_is_lower_bound": bool(r["max_agents_is_lower_bound"]) and low == a,
            "band_high_is_lower_bound": high_lb,
        }
    counts = {eff: len(sw.rows) for eff, sw in sweepers.items()}
    for v in res.values():
        v["band_levels"] = counts
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
