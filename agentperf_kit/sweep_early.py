"""Sequential early stop of a sweep's levels: a level ends before its full window once every verdict the
search still needs from it is decided, and none of those verdicts would decide an answer.

Most of a sweep's levels only steer the search: the ramp's passes, the failure far above the boundary,
the bisection's first steps. Their verdict is often clear long before the window AA's rules ask for (>= 3
trajectories per agent: hours of virtual time on a big system). A level that decides an answer (a tier's
highest pass, or the lowest failure above it) always runs its full window: if it was cut short while it
still looked like a step of the search, :func:`agentperf_kit.sweep.run_sweep` runs it again in full once
the search shows it decides (same seed: in virtual time the same first part, then the rest).

The rule (docs/sweep.md, "Early stop"):

- :func:`stop_outcomes`: before a level of N agents runs, per tier whose answer it can still move, the
  verdicts at N that would leave that answer open (a pass with more to search above it, a failure far
  enough above the highest pass below it). A tier whose every possible verdict at N decides its answer
  makes the level run in full (None).
- :class:`EarlyStop`: interim looks when the window is a third and two thirds of the way to the rule that
  closes it last (:meth:`agentperf_kit.agents.AgentFleet.window_share`), on the requests sent in the
  window before every request still running was sent (all of them ended: no bias toward quick ones).
  Each look judges the tiers as the sweep does (percentile intervals by ``ci_method``, the steadiness
  check, ``failure_policy``), at the stricter confidence ``1 - (1 - c) / looks`` (Bonferroni: the chance
  that some interim look decides wrongly is at most ``1 - c``, as for one full level). The level stops at
  the first look where every tier it can move is decided (pass or fail, never inconclusive or unsteady) and
  each decided verdict is one that leaves that tier's answer open.
- :func:`final_levels`: after the search, the levels that decide an answer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .results import _METRIC_INPUTS
from .slo import Tier, evaluate_level

if TYPE_CHECKING:
    from .agents import AgentFleet, RequestPlan

__all__ = [
    "LOOK_SHARES",
    "EarlyStop",
    "final_levels",
    "stop_outcomes",
    "window_rows",
    "window_rows_from_stream",
]

#: the interim looks, as shares of the way to the rule that closes the window last
LOOK_SHARES = (1 / 3, 2 / 3)
#: a look waits until its cut (the earliest send still running) covers this share of the elapsed window
LOOK_MIN_COVER = 0.75


def _step(lo: int, resolution: int, relative_resolution: float) -> int:
    """The search's resolution above a pass at ``lo`` agents, in agents (the bisection of
    :func:`agentperf_kit.sweep.search_levels` stops at a bracket this narrow)."""
    return max(resolution, math.floor(lo * relative_resolution))


def _lowest_closing(hi: int, resolution: int, relative_resolution: float) -> int:
    """The lowest N whose pass would close a bracket with the failure ``hi`` (agents): ``hi - N`` within
    :func:`_step` of N (closing is monotone in N, and the scan starts below the lowest)."""
    n = max(0, min(math.floor(hi / (1 + relative_resolution)) - 2, hi - resolution - 1))
    while hi - n > _step(n, resolution, relative_resolution):
        n += 1
    return n


def _bracket(verdicts: Mapping[int, Mapping[str, str]], tier: str) -> tuple[int | None, int | None]:
    """(highest pass below the lowest failure, lowest failure) of ``tier``; None where there is none."""
    fails = [n for n, v in verdicts.items() if v[tier] == "fail"]
    hi = min(fails) if fails else None
    passes = [n for n, v in verdicts.items() if v[tier] == "pass" and (hi is None or n < hi)]
    return (max(passes) if passes else None), hi


def stop_outcomes(
    n: int,
    verdicts: Mapping[int, Mapping[str, str]],
    tiers: Sequence[str],
    max_agents: int,
    *,
    resolution: int = 1,
    relative_resolution: float = 0.0,
) -> dict[str, frozenset[str]] | None:
    """Per tier whose answer a level of ``n`` agents can move, the verdicts at ``n`` that leave the answer
    open (given the ``verdicts`` measured so far and the search's resolution); None when some tier needs
    the level's full window whatever its verdict (a pass at the cap, a pass just below a known failure, a
    failure just above a known pass or with no pass below it).

    A tier whose lowest failure is below ``n`` is left out: a level above it cannot move its answer."""
    needs: dict[str, frozenset[str]] = {}
    for t in tiers:
        _, hi = _bracket(verdicts, t)
        if hi is not None and n > hi:
            continue
        open_: set[str] = set()
        below = [m for m, v in verdicts.items() if m < n and v[t] == "pass"]
        if below and n - max(below) > _step(max(below), resolution, relative_resolution):
            open_.add("fail")  # more to bisect between the pass below and n
        if n < max_agents and (hi is None or hi - n > _step(n, resolution, relative_resolution)):
            open_.add("pass")  # more to search above n
        if not open_:
            return None
        needs[t] = frozenset(open_)
    return needs


def final_levels(verdicts: Mapping[int, Mapping[str, str]], tiers: Sequence[str]) -> set[int]:
    """The levels that decide some tier's answer: its highest pass below its lowest failure (the answer,
    or the lower bound when it never fails) and that lowest failure (which bounds it from above)."""
    out: set[int] = set()
    for t in tiers:
        lo, hi = _bracket(verdicts, t)
        out.update(x for x in (lo, hi) if x is not None)
    return out


@dataclass
class EarlyStop:
    """The interim looks of one level (module docstring).

    Attributes:
        tiers: the tiers to judge at a look (the preset's, those in ``needs``).
        needs: tier name -> the verdicts that let the level stop (:func:`stop_outcomes`).
        confidence: the sweep's confidence c; a look uses ``1 - (1 - c) / len(shares)``.
        ci_method, failure_policy, max_unmeasured_share: as the sweep judges its levels.
        shares: the looks, as shares of the way to the window's close (:data:`LOOK_SHARES`).
        settle_at_last_look: stop at the last look even when some tier is not decided (the band's levels,
            whose inconclusive tiers then take their point verdicts: :mod:`agentperf_kit.sweep_band`).
        looks: what each look found, one line each (for the level's manifest and the sweep's notes).
    """

    tiers: Sequence[Tier]
    needs: Mapping[str, frozenset[str]]
    confidence: float = 0.95
    ci_method: str = "agent+time"
    failure_policy: str = "miss"
    max_unmeasured_share: float = 0.05
    shares: tuple[float, ...] = LOOK_SHARES
    settle_at_last_look: bool = False
    looks: list[str] = field(default_factory=list)

    @property
    def look_confidence(self) -> float:
        """The confidence of each interim look's intervals (Bonferroni over the looks)."""
        return 1.0 - (1.0 - self.confidence) / max(1, len(self.shares))

    def due(self, share: float) -> bool:
        """Whether a look is due now that the window is ``share`` of the way to its close (one look per
        share, in order; none once the window closes anyway, ``share`` >= 1)."""
        return share < 1.0 and len(self.looks) < len(self.shares) and share >= self.shares[len(self.looks)]

    def window_to_judge(
        self, fleet: AgentFleet, now: float, in_flight: Iterable[RequestPlan]
    ) -> tuple[float, float] | None:
        """The window [start, cut) a look judges now (seconds), or None when no look is due or its cut
        does not cover enough of the window yet (:meth:`covered`): the cut is the earliest send of the
        requests ``in_flight`` (so every request sent before it has ended), at most ``now``. What both
        drivers (simulated and live) ask before a look."""
        if fleet.window_closed or not self.due(fleet.window_share(now)):
            return None
        start = fleet.window_start_s
        cut = min([now, *(p.t_send_s for p in in_flight)])
        return (start, cut) if self.covered(start, cut, now) else None

    @staticmethod
    def covered(start: float, cut: float, now: float) -> bool:
        """Whether a look now may judge the window [start, cut): the cut (the earliest send of a request
        still running) covers :data:`LOOK_MIN_COVER` of the time elapsed since ``start`` (seconds). A
        request still running since early in the window would otherwise leave only the window's first
        minutes, which on a big system still carry the start-up backlog (docs/sweep.md, "Early stop")."""
        return cut - start >= LOOK_MIN_COVER * (now - start) and cut > start

    def decide(self, judged: pd.DataFrame, window: tuple[float, float]) -> str | None:
        """One look at ``judged`` (the tidy rows of the window so far, every one of them ended; ``window`` =
        (start, cut) in seconds): the reason to stop now, or None to go on. Uses up a look."""
        k = len(self.looks) + 1
        tiers = [t for t in self.tiers if t.name in self.needs]
        if not tiers:  # no tier's answer depends on this level
            self.looks.append(f"look {k}: no tier's answer depends on this level")
            return self.looks[-1]
        ev = evaluate_level(
            judged,
            tiers,
            confidence=self.look_confidence,
            ci_method=self.ci_method,
            failure_policy=self.failure_policy,
            max_unmeasured_share=self.max_unmeasured_share,
            window=window,
        )
        verdicts = dict(zip(ev["tier"], ev["tier_verdict"]))
        n = len(judged)
        seen = ", ".join(f"{t} {v}" for t, v in verdicts.items())
        line = (
            f"look {k} at {window[1] - window[0]:,.0f} s of window ({n:,} requests, confidence "
            f"{self.look_confidence:.4g}): {seen}"
        )
        self.looks.append(line)
        if all(verdicts.get(t) in allowed for t, allowed in self.needs.items()):
            return line
        if self.settle_at_last_look and k >= len(self.shares):
            self.looks[-1] = line = line + " (last look: the undecided tiers take their point verdicts)"
            return line
        return None


#: the raw columns a look reads: the agent and what the verdict's statistics derive from
LOOK_COLUMNS = ("agent", *_METRIC_INPUTS)


def _look_frame(batches, start: float, cut: float) -> pd.DataFrame:
    """The rows of ``batches`` (Arrow record batches of :data:`LOOK_COLUMNS`) in the window [start, cut),
    with their metrics and ``in_window``."""
    import pyarrow as pa

    from .agents import in_window_mask
    from .metrics import add_request_metrics
    from .recorder import RAW_ARROW_SCHEMA

    schema = pa.schema([RAW_ARROW_SCHEMA.field(c) for c in LOOK_COLUMNS])
    i_send, i_end = LOOK_COLUMNS.index("t_send_s"), LOOK_COLUMNS.index("t_end_s")
    kept = []
    for b in batches:
        t_send = b.column(i_send).to_numpy(zero_copy_only=False)
        t_end = b.column(i_end).to_numpy(zero_copy_only=False)
        mask = in_window_mask(t_send, t_end, start, cut)
        if mask.any():
            kept.append(b.filter(pa.array(mask)))
    df = pa.Table.from_batches(kept, schema=schema).to_pandas()
    add_request_metrics(df)
    df["in_window"] = np.ones(len(df), dtype=bool)
    return df


def window_rows_from_stream(
    directory: str | os.PathLike, names: tuple[str, ...] | None, start: float, cut: float
) -> pd.DataFrame:
    """What a look judges: the raw rows written so far to ``directory``'s stream (``names``: the files of
    this run, :func:`agentperf_kit.recorder.read_raw_rows`) whose request is in the window [start, cut)
    (seconds; :func:`~agentperf_kit.agents.in_window_mask`), with only :data:`LOOK_COLUMNS` and their
    metrics (``ttft_s``, ``output_speed_tps``...), read a batch at a time: a look at a level of millions of
    requests holds only its window's few columns. Safe while the writer appends (complete batches only)."""
    from .recorder import iter_raw_batches

    cols = list(LOOK_COLUMNS)
    return _look_frame((b.select(cols) for b in iter_raw_batches(directory, names)), start, cut)


def window_rows(rows: Sequence[tuple], start: float, cut: float) -> pd.DataFrame:
    """:func:`window_rows_from_stream` of raw rows held in memory (tuples in ``schema.RAW_COLUMNS`` order)."""
    import pyarrow as pa

    from .recorder import RAW_ARROW_SCHEMA
    from .schema import RAW_COLUMNS

    fields = [RAW_ARROW_SCHEMA.field(c) for c in LOOK_COLUMNS]
    cols = list(zip(*rows)) if rows else [() for _ in RAW_COLUMNS]
    arrays = [pa.array(cols[RAW_COLUMNS.index(f.name)], type=f.type) for f in fields]
    return _look_frame([pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))], start, cut)
