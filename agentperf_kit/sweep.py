"""The sweep: find, for every SLO tier at once, the highest number of concurrent agents that passes.

Search (docs/sweep.md): exponential ramp N = 1, 2, 4, ... until every tier has a failing level
(or ``max_agents`` is reached), then, per tier, bisection between its highest passing N below its lowest
failing N and that failing N, to ``resolution`` agents or ``relative_resolution`` of the bracket's
lower end, whichever is coarser (default 1 agent and 1/32: the relative one binds from 64 agents up).
Levels are measured once and shared: every tier is evaluated on the same levels. Odd cases (see
:func:`agentperf_kit.slo.max_agents`): N = 1 failing gives 0; a tier still passing at ``max_agents``
is a lower bound; non-monotonic verdicts take the highest pass below the lowest fail and are reported.

A level whose verdict is ``inconclusive`` at the set confidence (too few effective requests for the
percentile's interval to clear the threshold, or an unsteady window; intervals by ``ci_method``, failures
by ``failure_policy``: docs/metrics.md) is re-run with a window twice as long, up to ``max_extensions``
times (an extension that would not lengthen the window is skipped); if still inconclusive, the point
verdict is used and a note says so, except when too many speeds were unmeasurable (never a pass).

Each level is a fresh run (new phase markers) with a seed derived from (seed, N, extension), so results do
not depend on the order levels are measured in. Everything is written as the sweep goes
(``DIR/levels/n00016_e0/``...); re-running with the same ``out`` resumes from the measured levels and refuses
when the configuration differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ._compiled import core_status
from ._version import __version__
from .metrics import _STATS_COLUMNS, level_stats
from .normalize import PowerSpec, agents_per_accelerator, agents_per_mw, provisioned_power_w
from .results import MANIFEST_NAME, RunResult, check_sweep_dir, load_run, toolkit_provenance
from .schema import SCHEMA_VERSION, check_schema_version, json_safe, strict_json_dumps
from .slo import _EVAL_COLUMNS, TierPreset, evaluate_level, get_tier_preset, max_agents
from .sweep_config import SweepConfig, SweepConfigError
from .sweep_early import EarlyStop, _bracket, _lowest_closing, _step, final_levels, stop_outcomes
from .sweep_result import SweepResult
from .targets import Target

log = logging.getLogger(__name__)

__all__ = [
    "SweepConfig",
    "SweepConfigError",
    "SweepResult",
    "check_resumable",
    "format_summary",
    "load_sweep",
    "plan_levels",
    "resolve_max_agents",
    "run_sweep",
    "search_levels",
]


def plan_levels(max_agents_: int) -> list[int]:
    """The exponential ramp 1, 2, 4, ... capped at ``max_agents_`` (the plan before any verdict)."""
    out, n = [], 1
    while n < max_agents_:
        out.append(n)
        n *= 2
    out.append(max_agents_)
    return out


def search_levels(
    measure: Callable[[int], Mapping[str, str]],
    tiers: Sequence[str],
    max_agents_: int,
    *,
    resolution: int = 1,
    relative_resolution: float = 0.0,
    on_ramp_done: Callable[[dict[int, dict[str, str]]], None] | None = None,
    guide: Callable[[Sequence[int]], int | None] | None = None,
    aim: Callable[[str, int, int], int | None] | None = None,
) -> dict[int, dict[str, str]]:
    """The search policy: which agent counts N to measure, given each level's tier verdicts.

    ``measure(n)`` returns ``{tier: "pass" | "fail" | "inconclusive"}`` for a level of ``n`` agents; it is
    called at most once per N. Returns every measured N with its verdicts.

    1. Ramp N = 1, 2, 4, ... (capped at ``max_agents_``) until every tier has a failing level. ``guide(ramp)``
       (optional; the sweep's is :meth:`_Sweeper.guided_step`; ``ramp``: the ramp's levels so far, in
       order) may replace the next doubling after the last one, n, by a smaller step when they predict a
       tier's failure below 2 n: any N strictly between n and the doubling is taken, anything else ignored
       (the ramp then doubles from there). It sees only the ramp's levels, so a replayed search (resumed,
       or after a level was measured again) takes the same steps while their verdicts stay the same.
    2. For each tier, bracket [lo, hi] with hi = its lowest failing N and lo = its highest passing N below
       hi; measure a point inside until ``hi - lo <= max(resolution, floor(lo * relative_resolution))``
       (agents; a relative resolution spares big systems levels that only refine the answer by less than
       its own uncertainty: at 1/32, 5 bisection levels instead of 12 between 4,096 and 8,192). The
       point is the midpoint, or the unmeasured N nearest to it when the midpoint was measured and was
       inconclusive for this tier (inconclusive counts as neither pass nor fail). ``aim(tier, lo, hi)``
       (optional; the sweep's is :meth:`_Sweeper.aimed_point`) may name the point instead, for the first
       :data:`AIMED_PROBES` points of each tier: any unmeasured N strictly inside the bracket is taken,
       anything else ignored (the midpoint then). A tier with no pass below its lowest failure (N = 1
       fails) needs no bisection: its result is 0.

    Every tier is judged on the same levels: a level measured for one tier's bisection moves the others'
    brackets too. The result per tier is :func:`agentperf_kit.slo.max_agents` of these verdicts.
    ``on_ramp_done(verdicts)`` is called once, between the two steps (the simulator's band starts there).
    """
    if max_agents_ < 1:
        raise ValueError(f"max_agents must be >= 1, got {max_agents_}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1 agent, got {resolution}")
    if not 0.0 <= relative_resolution < 1.0:
        raise ValueError(f"relative_resolution must be in [0, 1), got {relative_resolution}")
    verdicts: dict[int, dict[str, str]] = {}

    def at(n: int) -> None:
        if n not in verdicts:
            verdicts[n] = dict(measure(n))

    n, ramp = 1, []
    while True:  # plan_levels(max_agents_), unless the guide shortens a step
        at(n)
        ramp.append(n)
        if n >= max_agents_ or all(any(v[t] == "fail" for v in verdicts.values()) for t in tiers):
            break
        nxt = min(2 * n, max_agents_)
        step = guide(list(ramp)) if guide is not None else None
        n = step if step is not None and n < step < nxt else nxt
    if on_ramp_done is not None:
        on_ramp_done(dict(verdicts))
    aimed = dict.fromkeys(tiers, 0)  # points named by ``aim`` so far, per tier
    while (
        mid := _next_bisection_point(verdicts, tiers, resolution, relative_resolution, aim, aimed)
    ) is not None:
        at(mid)
    return verdicts


def _next_bisection_point(
    verdicts: Mapping[int, Mapping[str, str]],
    tiers: Sequence[str],
    resolution: int,
    relative_resolution: float = 0.0,
    aim: Callable[[str, int, int], int | None] | None = None,
    aimed: dict[str, int] | None = None,
) -> int | None:
    for t in tiers:
        lo, hi = _bracket(verdicts, t)
        if hi is None:
            continue  # still passing at the top of the ramp: a lower bound
        if lo is None:
            continue  # nothing passes below the first failure: 0 agents
        if hi - lo <= _step(lo, resolution, relative_resolution):
            continue
        if aim is not None and aimed is not None and aimed.get(t, 0) < AIMED_PROBES:
            point = aim(t, lo, hi)
            if point is not None and lo < point < hi and point not in verdicts:
                aimed[t] = aimed.get(t, 0) + 1
                return point
        mid = (lo + hi) // 2
        free = [n for n in range(lo + 1, hi) if n not in verdicts]
        if free:
            return min(free, key=lambda n: (abs(n - mid), n))
    return None


#: the cap of a live sweep when ``max_agents`` is not set
DEFAULT_MAX_AGENTS = 4096

#: a guided ramp step (:meth:`_Sweeper.guided_step`) aims this share past the predicted crossing
GUIDE_AIM = 0.1
#: bisection points per tier that :meth:`_Sweeper.aimed_point` may name before plain bisection takes over
AIMED_PROBES = 3
#: an aimed point with no closing level predicted lands this share of the resolution below the crossing
_AIM_BELOW = 0.4


def resolve_max_agents(cfg: SweepConfig, trajectories=None) -> tuple[int, str]:
    """The sweep's cap (agents) and where it came from: ``max_agents`` when set ("set"); for a live
    target :data:`DEFAULT_MAX_AGENTS` ("default"); on the simulator an upper estimate from the step-time
    model at the loosest tier's speed floor ("estimated", :mod:`agentperf_kit.sim.capacity`), so that
    the cap is rarely hit. ``trajectories``: the sweep's set (the built-in one when None)."""
    if cfg.max_agents is not None:
        return int(cfg.max_agents), "set"
    if not cfg.is_sim:
        return DEFAULT_MAX_AGENTS, "default"
    from .sim.capacity import estimate_max_agents

    if trajectories is None:
        from .trajectories import default_trajectories

        trajectories = default_trajectories()
    floor = min(t.min_output_speed_tps for t in get_tier_preset(cfg.tiers).tiers)
    dep = getattr(cfg.target_object, "deployment", None)
    if dep is None:  # a virtual-time target without a deployment model
        return DEFAULT_MAX_AGENTS, "default"
    return estimate_max_agents(dep, cfg.efficiency, trajectories, floor), "estimated"


#: configuration fields a resume may change: they decide which levels the search asks for, not what a
#: level measures (every level already measured is reused); the band is measured apart (``band/``)
RESUMABLE_CHANGES = frozenset({"max_agents", "band"})


def _without_cap(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in RESUMABLE_CHANGES}


#: the request columns a level's verdicts and statistics read (``evaluate_level``, ``level_stats``)
_JUDGED_COLUMNS = _EVAL_COLUMNS | _STATS_COLUMNS


def _level_seed(seed: int, n: int, ext: int) -> int:
    return int(hashlib.sha256(f"{seed}:{n}:{ext}".encode()).hexdigest()[:12], 16)


class _Sweeper:
    def __init__(
        self,
        cfg: SweepConfig,
        out: Path,
        progress: bool | Callable[[str], None],
        target: Target | None = None,
        *,
        keep_rows: bool = True,
        steer_only: bool = False,
    ) -> None:
        self.cfg = cfg
        # True (the band's levels): no answer of this search needs an AA-valid window, so every level may
        # stop at an interim look once every tier's verdict is decided, and at its last look in any case;
        # a tier still inconclusive takes its point verdict instead of an extension (docs/sweep.md, Band)
        self.steer_only = steer_only
        # False (the band's levels): a judged level keeps its manifest and its levels.csv row
        # (LEVEL_ROW_NAME), not its request rows; a resume reuses the row (docs/sweep.md "Disk")
        self.keep_rows = keep_rows
        self.target = target if target is not None else cfg.target_object
        self.out = out
        self.progress = bool(progress)  # a live level's progress bar
        self._say = progress if callable(progress) else None
        self.preset: TierPreset = get_tier_preset(cfg.tiers)
        self.rows: dict[int, dict[str, Any]] = {}  # N -> level row
        self.results: dict[int, tuple[Path, dict[str, Any]]] = {}  # N -> (level directory, manifest)
        self.notes: list[str] = []
        self.n_measured_now = 0
        self.max_agents = DEFAULT_MAX_AGENTS  # the resolved cap (run_sweep sets it)
        self._trajs = None
        # levels named by aimed_point: placed to decide an answer, so they run their full window at once
        # (stopped early, they would be measured again in full when they do)
        self._aimed: set[int] = set()

    def say(self, line: str) -> None:
        """A progress line: to the ``progress`` callable, else (``progress=True``) the
        ``agentperf_kit.sweep`` logger at INFO (the CLI prints those records as they are)."""
        if self._say is not None:
            self._say(line)
        elif self.progress:
            log.info("%s", line)

    # -- targets ---------------------------------------------------------------------------------------

    def trajectories(self):
        if self._trajs is None:
            from .trajectories import default_trajectories, load_trajectories

            trajs = (
                load_trajectories(self.cfg.trajectories) if self.cfg.trajectories else default_trajectories()
            )
            if self.cfg.max_context:
                from .trajectories import fit_context

                trajs = fit_context(trajs, self.cfg.max_context)
            if self.cfg.what_if:
                from .whatif import apply_what_if, parse_what_if

                trajs = apply_what_if(trajs, parse_what_if(self.cfg.what_if))
            self._trajs = trajs
        return self._trajs

    def accelerators(self) -> tuple[int, str | None]:
        return int(self.target.accelerators or 0), self.target.accelerator_type

    def _measure(self, n: int, ext: int, level_index: int, early: EarlyStop | None = None) -> RunResult:
        d = self.out / "levels" / f"n{n:05d}_e{ext}"
        if (d / "requests.parquet").exists():
            res = load_run(d)
            if early is not None or not res.window.get("stopped_early_reason"):
                return res
            # stopped early, now needed in full (it decides an answer): measured again, in full
        if d.exists():
            shutil.rmtree(d)  # an interrupted level: measure it again from scratch
        self.n_measured_now += 1
        kw: dict[str, Any] = {"early_stop": early} if early is not None else {}
        return self.target.run_level(
            self.trajectories(),
            n,
            self.cfg.rules(ext),
            seed=_level_seed(self.cfg.seed, n, ext),
            out_dir=d,
            level=level_index,
            run_id=f"{self.out.name}-n{n}-e{ext}",
            progress=self.progress,
            **kw,
        )

    def _early_stop(self, n: int) -> EarlyStop | None:
        """The interim looks a level of ``n`` agents may stop at (agentperf_kit.sweep_early), or None: the
        sweep runs every level in full (``early_stop`` off, or a target without it), or some tier's answer
        may depend on this level whatever its verdict."""
        if not self.cfg.early_stop or not getattr(self.target, "supports_early_stop", False):
            return None
        if self.steer_only:
            needs: dict[str, frozenset[str]] | None = {
                t.name: frozenset({"pass", "fail"}) for t in self.preset.tiers
            }
        else:
            needs = stop_outcomes(
                n,
                self.verdicts(),
                [t.name for t in self.preset.tiers],
                self.max_agents,
                resolution=self.cfg.resolution,
                relative_resolution=self.cfg.relative_resolution,
            )
        if needs is None:
            return None
        cfg = self.cfg
        return EarlyStop(
            self.preset.tiers,
            needs,
            confidence=cfg.confidence,
            ci_method=cfg.ci_method,
            failure_policy=cfg.failure_policy,
            max_unmeasured_share=cfg.max_unmeasured_share,
            settle_at_last_look=self.steer_only,
        )

    def verdicts(self) -> dict[int, dict[str, str]]:
        """N -> {tier: verdict} of the levels judged so far."""
        names = [t.name for t in self.preset.tiers]
        return {n: {t: row[f"verdict_{t}"] for t in names} for n, row in self.rows.items()}

    # -- levels -----------------------------------------------------------------------------------------

    def level(self, n: int, *, early: bool = False) -> dict[str, Any]:
        """Level ``n``, judged (measured, or read back when its directory has it). ``early``: it may stop
        before its full window once the verdicts the search needs are decided (:meth:`_early_stop`)."""
        if n in self.rows:
            return self.rows[n]
        if not self.keep_rows:
            kept = read_level_row(self.out, n)
            if kept is not None:
                d, row = kept
                manifest = json.loads((d / MANIFEST_NAME).read_text())
                return self._record(n, row, d, manifest)
        acc, _ = self.accelerators()
        cfg = self.cfg
        ext = 0
        looks = self._early_stop(n) if early else None
        while True:
            res = self._measure(n, ext, len(self.rows), looks)
            window = res.manifest.get("window", {})
            bounds = (window.get("window_start_s"), window.get("window_end_s"))
            # only the rows and columns the verdicts and statistics read (a level: millions of requests)
            judged = res.read_requests(_JUDGED_COLUMNS, in_window_only=True)
            ev = self._evaluate(judged, bounds, cfg.failure_policy, cfg.confidence)
            verdicts = dict(zip(ev["tier"], ev["tier_verdict"]))
            aborted = res.manifest.get("aborted_reason")
            if aborted:  # ended early (every request failing): a failed level, never extended
                verdicts = {t: "fail" for t in verdicts}
                self.notes.append(f"N={n}: the level ended early, a failed level for every tier ({aborted})")
                break
            stopped = window.get("stopped_early_reason")
            if self.steer_only:  # the band: an inconclusive tier takes its point verdict, no second run
                break
            if looks is not None and stopped and "inconclusive" in verdicts.values():
                looks = None  # decided at a look, not on the whole cut window (rare): measured in full
                continue
            looks = None  # an extension runs in full
            if "inconclusive" not in verdicts.values() or ext >= cfg.max_extensions:
                break
            # the validity rules (trajectory counts) can make the window longer than an extension's
            # duration: such a re-run would measure as much again with another seed, not more; skip to
            # the first extension that lengthens the window, if any is left
            got = window.get("window_s") or 0.0
            nxt = ext + 1
            while nxt <= cfg.max_extensions and cfg.rules(nxt).duration_s <= got:
                nxt += 1
            if nxt > cfg.max_extensions:
                self.notes.append(
                    f"N={n}: not extended: its window ({got:,.0f} s) is already longer than the longest "
                    f"extension's ({cfg.rules(cfg.max_extensions).duration_s:,.0f} s)"
                )
                break
            ext = nxt
        if "inconclusive" in verdicts.values():
            pv = dict(zip(*self._point(judged, bounds)))
            reasons = ev.groupby("tier")["reason"].agg(lambda r: ",".join(sorted({x for x in r if x})))
            for t, v in verdicts.items():
                if v != "inconclusive":
                    continue
                if "unmeasured" in reasons[t]:
                    self.notes.append(
                        f"N={n}: tier {t} inconclusive: more than {cfg.max_unmeasured_share:.0%} of the "
                        "requests had a speed the client could not measure (never a pass)"
                    )
                    continue
                self.notes.append(
                    f"N={n}: tier {t} stayed inconclusive ({reasons[t]}) at confidence {cfg.confidence} "
                    f"after {ext} extension(s); the point verdict ({pv[t]}) is used"
                )
                verdicts[t] = pv[t]
        stats = level_stats(
            judged,
            window_start_s=window.get("window_start_s"),
            window_end_s=window.get("window_end_s"),
            accelerators=acc,
            confidence=cfg.confidence,
            ci_method=cfg.ci_method,
            failure_policy=cfg.failure_policy,
        )
        row = {"level": -1, "concurrency": n, "extensions": ext, **stats}
        row["failure_policy"] = cfg.failure_policy
        row["ci_method"] = cfg.ci_method
        row["steady"] = bool(ev["steady"].all())
        for col in ("p95_ttft_s", "p95_ttft_s_ci_high", "p25_output_speed_tps_ci_high"):
            # +inf is written as null in JSON; this flag keeps the difference from "missing"
            row[f"{col}_is_inf"] = bool(row.get(col) == float("inf"))
        row.update(_tier_stat_columns(ev))
        other = "exclude" if cfg.failure_policy == "miss" else "miss"
        ev_other = self._evaluate(judged, bounds, other, cfg.confidence)
        del judged
        for t, v in zip(ev_other["tier"], ev_other["tier_verdict"]):
            row[f"verdict_{t}_if_{other}"] = v
        row["meets_aa_rules"] = bool(res.manifest.get("meets_aa_rules", window.get("meets_aa_rules", False)))
        row["client_ok"] = bool(res.manifest.get("client_ok", True))
        row["aborted_reason"] = aborted or None
        row["stopped_early"] = window.get("stopped_early_reason") or None
        row["power_w"] = res.manifest.get("power_w")
        row["power_scope"] = res.manifest.get("power_scope")
        tel = res.manifest.get("telemetry")
        if tel is not None:  # live levels with telemetry (docs/telemetry.md)
            row.update(_telemetry_columns(tel))
            if self.cfg.measures_power and row["power_scope"] != "measured":
                why = "; ".join(tel.get("notes") or []) or "no power read in the steady window"
                self.notes.append(f"N={n}: power not measured ({why})")
        for t in self.preset.tiers:
            row[f"verdict_{t.name}"] = verdicts[t.name]
            row[f"binding_{t.name}"] = ev.loc[ev["tier"] == t.name, "binding"].iloc[0]
        assert res.directory is not None, "a sweep's levels are saved"
        _drop_raw_stream(Path(res.directory))
        if not self.keep_rows:
            _keep_row_only(Path(res.directory), row)
        return self._record(n, row, Path(res.directory), res.manifest)

    def _record(self, n: int, row: dict[str, Any], d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Level ``n`` judged (``row``, its directory ``d`` and manifest): kept, written to levels.csv."""
        self.rows[n] = row
        self.results[n] = (d, manifest)  # the rows stay on disk
        self._write_partial()
        v = " ".join(f"{t.name}={row[f'verdict_{t.name}']}" for t in self.preset.tiers)
        self.say(
            f"  N={n:<5d} P25 speed {row['p25_output_speed_tps']:8.1f} tok/s  P95 TTFT "
            f"{row['p95_ttft_s']:7.2f} s  requests {row['n_requests']:>7,}  {v}"
        )
        return row

    def _evaluate(self, df: pd.DataFrame, bounds, policy: str, confidence: float | None) -> pd.DataFrame:
        return evaluate_level(
            df,
            self.preset,
            confidence=confidence,
            ci_method=self.cfg.ci_method,
            failure_policy=policy,
            max_unmeasured_share=self.cfg.max_unmeasured_share,
            window=bounds,
        )

    def _point(self, df: pd.DataFrame, bounds) -> tuple[list[str], list[str]]:
        ev = self._evaluate(df, bounds, self.cfg.failure_policy, None)
        return list(ev["tier"]), list(ev["tier_verdict"])

    def levels_frame(self) -> pd.DataFrame:
        df = pd.DataFrame([self.rows[n] for n in sorted(self.rows)])
        df["level"] = range(len(df))
        return df

    def _write_partial(self) -> None:
        self.levels_frame().to_csv(self.out / "levels.csv", index=False)

    # -- search -----------------------------------------------------------------------------------------

    def guided_step(self, ramp: Sequence[int]) -> int | None:
        """The ramp's next level after its levels ``ramp`` (agents, in order; the last is n) when they
        predict a failure below ``2 n``: :data:`GUIDE_AIM` past the lowest N where a tier none of them
        failed is predicted to cross its threshold (:func:`agentperf_kit.sweep_band.predicted_crossing`),
        else None (the ramp doubles). A failure there brackets that tier's answer tighter than the
        doubling's, for a smaller level; a pass only moves the ramp on (docs/sweep.md, Ramp: guided steps).
        A tier that passed a guided step aimed at it is not aimed at again (its margins mislead: without
        this, a margin that keeps predicting a crossing just ahead would walk the ramp in small steps)."""
        aim = self._ramp_aim(ramp, self._misled(ramp))
        return None if aim is None else aim[1]

    def _ramp_aim(self, ramp: Sequence[int], skip: set[str]) -> tuple[str, int] | None:
        """(tier aimed at, N) of the guided step after ``ramp``, leaving out the tiers ``skip``; None
        where no tier's crossing is predicted above the ramp's last level."""
        from .sweep_band import predicted_crossing

        rows = {m: self.rows[m] for m in ramp}
        n = ramp[-1]
        zeros = [(predicted_crossing(rows, t.name), t.name) for t in self.preset.tiers if t.name not in skip]
        above = [(z, t) for z, t in zeros if z is not None and z > n]
        if not above:
            return None
        z, tier = min(above)
        return tier, math.ceil(z * (1.0 + GUIDE_AIM))

    def _misled(self, ramp: Sequence[int]) -> set[str]:
        """The tiers that passed a guided step of ``ramp`` aimed at them (recomputed from the ramp's
        levels, so a replayed search finds the same)."""
        misled: set[str] = set()
        for i in range(1, len(ramp)):
            prev, step = ramp[:i], ramp[i]
            if step == min(2 * prev[-1], self.max_agents):
                continue  # a doubling
            aim = self._ramp_aim(prev, misled)
            if aim is not None and aim[1] == step and self.rows[step][f"verdict_{aim[0]}"] == "pass":
                misled.add(aim[0])
        return misled

    def aimed_point(self, tier: str, lo: int, hi: int) -> int | None:
        """The next bisection point of ``tier``'s bracket [``lo`` pass, ``hi`` failure] (agents) from their
        binding margins: where the secant in log N predicts the margin crosses 0, the level that would close
        the bracket if the prediction holds (``lo`` + the resolution when that is predicted to fail, else
        the lowest N that would close it with ``hi`` when that is predicted to pass), else
        :data:`_AIM_BELOW` x the resolution below the crossing (a pass expected, after which ``lo`` + the
        resolution closes it). None where the margins predict nothing (not finite, or not falling). The
        point runs its full window (no early stop): it is placed to decide the answer."""
        from .sweep_band import _finite, _log_secant_zero, _margin

        if lo not in self.rows or hi not in self.rows:
            return None
        m_lo, m_hi = _margin(self.rows[lo], tier), _margin(self.rows[hi], tier)
        if not (_finite(m_lo) and _finite(m_hi) and m_lo > 0.0 > m_hi):
            return None
        root = _log_secant_zero(lo, m_lo, hi, m_hi)
        res, rel = self.cfg.resolution, self.cfg.relative_resolution
        up = lo + _step(lo, res, rel)
        down = _lowest_closing(hi, res, rel)  # > lo: the bracket is still open
        if up > root:
            point = up
        elif down < root:
            point = down
        else:
            point = math.floor(root - _AIM_BELOW * _step(math.floor(root), res, rel))
        self._aimed.add(point)
        return point

    def run(self, on_ramp_done: Callable[[dict[int, dict[str, str]]], None] | None = None) -> None:
        tiers = [t.name for t in self.preset.tiers]

        def measure(n: int) -> dict[str, str]:
            row = self.level(n, early=n not in self._aimed)
            return {t: row[f"verdict_{t}"] for t in tiers}

        ramp_done = on_ramp_done
        while True:
            verdicts = search_levels(
                measure,
                tiers,
                self.max_agents,
                resolution=self.cfg.resolution,
                relative_resolution=self.cfg.relative_resolution,
                on_ramp_done=ramp_done,
                guide=self.guided_step,
                aim=self.aimed_point,
            )
            ramp_done = None  # once: a second search replays the measured levels
            # a level stopped early while it looked like a step of the search, that now decides an answer,
            # runs again in full (the search then replays with its full verdict: usually the same path)
            redo = sorted(m for m in final_levels(verdicts, tiers) if self.rows[m].get("stopped_early"))
            if not redo:
                return
            for m in redo:
                line = f"N={m}: decides an answer but was stopped early: measured again, in full"
                self.say(f"  {line}")
                del self.rows[m]
                self.notes.append(line + f" ({self.level(m)['n_requests']:,} requests)")


#: a level that keeps no request rows (the band's) keeps its levels.csv row here, in its directory
LEVEL_ROW_NAME = "level.json"


def _keep_row_only(level_dir: Path, row: Mapping[str, Any]) -> None:
    """The band's levels keep their judged row (:data:`LEVEL_ROW_NAME`, written first, atomically) and
    manifest, not their request rows: ``requests.parquet`` of the level and of its earlier extensions is
    removed. Strict JSON; non-finite floats (an infinite P95 TTFT, a margin of -inf) are listed apart so
    the row reads back exactly."""
    nonfinite = {k: repr(float(v)) for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": "agentperf-level-row",
        "note": "the level's levels.csv row; its request rows were not kept (docs/sweep.md, Disk)",
        "row": row,
        "nonfinite": nonfinite,
    }
    tmp = level_dir / (LEVEL_ROW_NAME + ".tmp")
    tmp.write_text(strict_json_dumps(data, indent=1) + "\n")
    os.replace(tmp, level_dir / LEVEL_ROW_NAME)
    for d in level_dir.parent.glob(level_dir.name.rsplit("_e", 1)[0] + "_e*"):
        (d / "requests.parquet").unlink(missing_ok=True)


def read_level_row(out: str | os.PathLike, n: int) -> tuple[Path, dict[str, Any]] | None:
    """(directory, levels.csv row) of the level of ``n`` agents under the sweep directory ``out`` that
    kept only its row (:data:`LEVEL_ROW_NAME`, the last extension's), or None."""
    found = sorted(
        Path(out).glob(f"levels/n{int(n):05d}_e*/{LEVEL_ROW_NAME}"),
        key=lambda p: int(p.parent.name.rsplit("_e", 1)[1]),
    )
    if not found:
        return None
    data = json.loads(found[-1].read_text())
    check_schema_version(data.get("schema_version"), what=str(found[-1]))
    row = dict(data["row"])
    for k, v in (data.get("nonfinite") or {}).items():
        row[k] = float(v)
    return found[-1].parent, row


def _drop_raw_stream(level_dir: Path) -> None:
    """A finished level keeps one copy of its rows: its ``requests.parquet`` (written atomically, with
    every raw column); the raw ``requests.arrow`` stream, kept only to survive a kill, is removed (for
    a big simulated level it is about 3x the parquet). Extensions' directories (``_e1``...) likewise."""
    for d in level_dir.parent.glob(level_dir.name.rsplit("_e", 1)[0] + "_e*"):
        raw = d / "requests.arrow"
        if raw.exists() and (d / "requests.parquet").exists():
            raw.unlink()


def _tier_stat_columns(ev: pd.DataFrame) -> dict[str, Any]:
    """levels.csv columns of each tier's own statistics (its percentiles, whatever they are):
    ``<tier>_speed_p<q>`` and ``<tier>_ttft_p<q>`` with ``_ci_low``/``_ci_high``, ``<tier>_margin_speed``,
    ``<tier>_margin_ttft`` (log ratios, > 0 on the good side), ``<tier>_reason`` (why inconclusive)."""
    out: dict[str, Any] = {}
    for r in ev.itertuples(index=False):
        kind = "speed" if r.statistic == "output_speed_tps" else "ttft"
        base = f"{r.tier}_{kind}_p{r.percentile:g}"
        out[base] = r.observed
        out[f"{base}_ci_low"] = r.ci_low
        out[f"{base}_ci_high"] = r.ci_high
        out[f"{r.tier}_margin_{kind}"] = r.margin
        prev = out.get(f"{r.tier}_reason", "")
        out[f"{r.tier}_reason"] = ",".join(x for x in (prev, r.reason) if x)
    return out


def _binding_detail(levels: pd.DataFrame, tier, n) -> dict[str, Any] | None:
    """The statistic that binds a tier at level ``n``: its name, percentile, value, interval, threshold
    and margin (log ratio, > 0 on the good side), from the level's row of levels.csv; None when the
    level was not measured (or n is None/0) or the row lacks the tier's columns."""
    if n is None or (isinstance(n, float) and math.isnan(n)) or int(n) <= 0:
        return None
    at = levels[levels["concurrency"] == int(n)]
    if not len(at):
        return None
    r = at.iloc[-1]
    kind = r.get(f"binding_{tier.name}")
    if kind not in ("speed", "ttft"):
        return None
    q = tier.speed_percentile if kind == "speed" else tier.ttft_percentile
    base = f"{tier.name}_{kind}_p{q:g}"
    if base not in r:
        return None
    return {
        "concurrency": int(n),
        "statistic": "output_speed_tps" if kind == "speed" else "ttft_s",
        "percentile": q,
        "value": _float(r[base]),
        "ci_low": _float(r[f"{base}_ci_low"]),
        "ci_high": _float(r[f"{base}_ci_high"]),
        "threshold": tier.min_output_speed_tps if kind == "speed" else tier.max_ttft_s,
        "margin": _float(r[f"{tier.name}_margin_{kind}"]),
        "verdict": r.get(f"verdict_{tier.name}"),
    }


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _telemetry_columns(tel: Mapping[str, Any]) -> dict[str, Any]:
    """levels.csv columns from a level's telemetry summary (server queue/KV means, measured energy)."""
    m = tel.get("metrics") or {}
    p = tel.get("power") or {}
    return {
        "server_mean_running": m.get("mean_running"),
        "server_mean_waiting": m.get("mean_waiting"),
        "server_mean_kv_usage": m.get("mean_kv_usage"),
        "server_prefix_hit_rate": m.get("prefix_hit_rate"),
        "metrics_gaps": m.get("gaps_in_window"),
        "energy_j": p.get("energy_j"),
        "power_method": p.get("power_method"),
    }


def _tier_table(
    levels: pd.DataFrame,
    preset: TierPreset,
    acc: int | None,
    power: PowerSpec | None,
    power_at,
    measured_at=None,
    scope_at=None,
) -> pd.DataFrame:
    """Per tier: agents per accelerator and per MW. Power: the measured power of the level at max agents
    when a power source measured it (``measured_at``), else the user's (declared/provisioned), else the
    level's own (modelled for the simulator); ``power_scope`` per tier says which."""
    tab = max_agents(levels, preset)
    per_acc, per_mw, pw, scopes = [], [], [], []
    for _, r in tab.iterrows():
        n = int(r["max_agents"])
        w = measured_at(n) if measured_at is not None else None
        scope = "measured" if w is not None else None
        if w is None and power is not None and power.watts is not None:
            w, scope = power.watts, power.scope
        if w is None:
            w = power_at(n)
            scope = power.scope if power is not None else (scope_at(n) if scope_at else None)
        pw.append(w)
        scopes.append(scope if w is not None else None)
        per_acc.append(agents_per_accelerator(n, acc))
        per_mw.append(agents_per_mw(n, w) if n > 0 else (0.0 if w else None))
    tab["binding_at_max_agents"] = [
        _binding_detail(levels, t, int(r["max_agents"])) for t, (_, r) in zip(preset.tiers, tab.iterrows())
    ]
    tab["binding_at_lowest_failing"] = [
        _binding_detail(levels, t, r["lowest_failing_agents"])
        for t, (_, r) in zip(preset.tiers, tab.iterrows())
    ]
    tab["agents_per_accelerator"] = per_acc
    tab["agents_per_mw"] = per_mw
    tab["power_w"] = pw
    tab["power_scope"] = scopes
    return tab


def _check_resume_commit(old: dict[str, Any], out: Path) -> None:
    """Resume with the same version and measurement config but another toolkit commit: warn, and resume.

    The version and the config hash are compared first (either differing refuses); commits between two
    releases change code, not definitions, by this project's habit (a definition change bumps the version,
    CHANGELOG.md), so the levels may be mixed, but the user is told which commits measured them. When
    either commit is unknown (not run from a git checkout) nothing is compared."""
    was, now = old.get("toolkit_commit"), toolkit_provenance()["toolkit_commit"]
    if was and now and was != now:
        warnings.warn(
            f"{out} was measured at agentperf-kit commit {was[:12]}, this is {now[:12]} (same version "
            f"{__version__}, same measurement config); resuming, so its levels come from both commits. "
            "Use another out directory to measure every level with one commit.",
            stacklevel=3,
        )


def check_resumable(config: SweepConfig, out: str | Path | None = None) -> bool:
    """Check a sweep's output directory (``out``, default ``config.out``) before anything is written:
    True when it holds this same sweep to resume, False when it is new or empty.

    Raises:
        OutputError: it holds files a sweep does not write (:func:`~agentperf_kit.results.check_sweep_dir`).
        SweepConfigError: it holds a sweep with another configuration, toolkit version or trajectory file.
    """
    where = out if out is not None else config.out
    if where is None:
        return False  # run_sweep makes a new directory
    out = Path(where)
    if not check_sweep_dir(out):  # empty, new, or this tool's sweep; never a user's files
        return False
    manifest_path = out / "sweep.json"
    if not manifest_path.exists():
        return False
    old = json.loads(manifest_path.read_text())
    now_cfg = json.loads(strict_json_dumps(config.measurement_dict()))
    was_cfg = old.get("config", {})
    if old.get("config_hash") != config.config_hash() and _without_cap(was_cfg) != _without_cap(now_cfg):
        diff = {
            k: (was_cfg.get(k), v)
            for k, v in now_cfg.items()
            if k not in RESUMABLE_CHANGES and was_cfg.get(k) != v
        }

        raise SweepConfigError(
            f"{out} holds a sweep with a different configuration; refusing to resume. Differences "
            f"(was, now): {diff}. Use another --out, or the same settings."
        )
    if old.get("toolkit_version") != __version__:
        raise SweepConfigError(
            f"{out} was measured with agentperf-kit {old.get('toolkit_version')}, this is {__version__}; "
            "refusing to mix levels from two versions. Use another --out."
        )
    _check_resume_commit(old, out)
    traj_digest = _file_digest(config.trajectories)
    if old.get("trajectories_sha256") != traj_digest:
        raise SweepConfigError(
            f"{out}: the trajectory file {config.trajectories} changed since this sweep started "
            f"(sha256 {old.get('trajectories_sha256')} -> {traj_digest}); refusing to resume. Use "
            "another --out, or restore the file."
        )
    return True


def _open_sweep_dir(config: SweepConfig, out: Path, target: Target) -> bool:
    """Check ``out`` (:func:`check_resumable`), create it and, for a new sweep, write ``sweep.json``;
    True when an existing sweep is resumed."""
    resumed = check_resumable(config, out)
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        (out / "sweep.json").write_text(
            strict_json_dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "kind": "agentperf-sweep",
                    **toolkit_provenance(),
                    "config": config.measurement_dict(),
                    "config_hash": config.config_hash(),
                    "trajectories_sha256": _file_digest(config.trajectories),
                    "target_description": target.description,
                },
                indent=2,
            )
        )
    return resumed


def _power(
    config: SweepConfig, sw: _Sweeper, levels: pd.DataFrame, acc: int, acc_type: str | None
) -> tuple[pd.DataFrame, str | None, float | None, list[str]]:
    """The per-tier table with agents per accelerator and per MW, the summary's power scope and power
    (W; None when per tier), and notes on how power was known: the user's (declared/provisioned), the
    measured power of the level at each tier's max agents (a power source), else each level's own."""
    preset = sw.preset
    power: PowerSpec | None = None
    if config.power_scope == "provisioned" and config.power_w is None:
        power = PowerSpec(
            provisioned_power_w(acc_type or "", acc), "provisioned", "InferenceX all-in kW per GPU"
        )
    elif config.power_scope is not None:
        power = PowerSpec(config.power_w, config.power_scope, "user")

    def power_at(n: int) -> float | None:  # modelled/measured power of the level at n
        row = sw.rows.get(n)
        return row.get("power_w") if row else None

    def measured_at(n: int) -> float | None:  # the level's power when a power source measured it
        row = sw.rows.get(n)
        return row.get("power_w") if row and row.get("power_scope") == "measured" else None

    def scope_at(n: int) -> str | None:
        row = sw.rows.get(n)
        return row.get("power_scope") if row else None

    tiers = _tier_table(
        levels, preset, acc, power, power_at, measured_at if config.measures_power else None, scope_at
    )
    scope = (
        power.scope
        if power is not None
        else (levels["power_scope"].dropna().iloc[0] if levels["power_scope"].notna().any() else None)
    )
    notes: list[str] = []
    summary_power_w = power.watts if power is not None else None
    if config.measures_power:
        used = set(tiers["power_scope"].dropna())
        if "measured" in used:
            summary_power_w = None  # per tier: the measured power of the level at its max agents
            scope = "measured" if used == {"measured"} else "mixed"
        fallback = sorted(used - {"measured"})
        if "measured" not in used:
            notes.append(
                f"power source {config.power_source} gave no measurement (see the notes above); agents/MW "
                + (f"uses the {fallback[0]} power" if fallback else "is null")
            )
        else:
            notes.append(
                f"power measured by {config.power_source} (GPUs {config.gpu_indices or 'all'}) over each "
                "level's steady window; agents/MW uses the measured power of the level at each tier's max "
                "agents" + (f" (tiers without a measurement use the {fallback[0]} power)" if fallback else "")
            )
    return tiers, scope, summary_power_w, notes


def run_sweep(
    config: SweepConfig,
    *,
    progress: bool | Callable[[str], None] = True,
    target: Target | None = None,
    side_workers: int | None = None,
) -> SweepResult:
    """Run (or resume) a sweep; writes ``levels/`` (each level's run: its ``requests.parquet`` is the one
    copy of its rows), ``levels.csv`` and ``summary.json``.

    Every level runs on ``target`` (a :class:`~agentperf_kit.targets.Target`; default: the one
    ``config.target`` names, ``config.target_object``), through its ``run_level`` only: a simulated, a
    live or any other target takes the same path. ``config`` still defines what is measured (and its
    hash what may be resumed); the target's ``description`` is recorded in ``sweep.json`` and the summary.

    ``progress``: False is silent; True shows a live level's progress bar and logs one line per level
    (and one at the start) to the ``agentperf_kit.sweep`` logger at INFO, which the CLI prints (in a
    notebook: ``logging.basicConfig(level=logging.INFO)``); a callable (e.g. ``print``) receives those
    lines instead of the logger.

    ``side_workers``: worker processes for a simulated sweep's band and task baseline, which run beside
    the search (:mod:`agentperf_kit.sweep_jobs`; default: ``AGENTPERF_SWEEP_WORKERS``, else one CPU fewer
    than the machine's, at most 2); 0 runs them in this process (a caller that already runs sweeps in
    parallel). The results are the same either way."""
    wall0 = time.perf_counter()
    target = target if target is not None else config.target_object
    if not target.accelerators:
        raise SweepConfigError(
            f"target {target.description}: a sweep needs its accelerator count (accelerators) for agents "
            "per accelerator"
        )
    out = Path(config.out) if config.out else Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    resumed = _open_sweep_dir(config, out, target)
    sw = _Sweeper(config, out, progress, target)
    if resumed:
        old = json.loads((out / "sweep.json").read_text())
        was = old.get("config", {})
        now_cfg = json.loads(strict_json_dumps(config.measurement_dict()))
        if was != now_cfg:  # only RESUMABLE_CHANGES differ (check_resumable refused anything else)
            changed = {
                k: (was.get(k), now_cfg.get(k)) for k in RESUMABLE_CHANGES if was.get(k) != now_cfg.get(k)
            }
            old.update(config=now_cfg, config_hash=config.config_hash())
            (out / "sweep.json").write_text(strict_json_dumps(old, indent=2))
            sw.notes.append(
                "resumed with "
                + ", ".join(f"{k} {v[1]} (was {v[0]})" for k, v in changed.items())
                + ": measured levels reused"
            )
    sim_target = target is config.target_object and config.is_sim
    sw.max_agents, cap_source = resolve_max_agents(config, sw.trajectories() if sim_target else None)
    sw.say(f"sweep {target.description} -> {out}{' (resuming)' if resumed else ''}")
    jobs = _start_side_jobs(config, sw, side_workers) if sim_target else None
    try:
        res = _finish_sweep(config, target, out, sw, cap_source, jobs, wall0)
    except BaseException:  # an error or Ctrl-C: stop the workers now (their levels on disk resume)
        if jobs is not None:
            jobs.close(kill=True)
        raise
    finally:  # the workers a live target kept across the levels (Ray): the sweep's own target's only
        close = getattr(target, "close", None) if target is config.target_object else None
        if callable(close):
            close()
    if jobs is not None:
        jobs.close()
    return res


def _start_side_jobs(config: SweepConfig, sw: _Sweeper, n_workers: int | None):
    """Simulator: start the unloaded replay for the task slowdowns beside the search
    (:mod:`agentperf_kit.sweep_jobs`); the band's searches start when the ramp ends (``_finish_sweep``)."""
    from .sweep_jobs import SideJobs
    from .tasks import sweep_unloaded_baseline

    jobs = SideJobs(n_workers)
    jobs.submit("baseline", sweep_unloaded_baseline, config)
    return jobs


def _finish_sweep(config: SweepConfig, target: Target, out: Path, sw: _Sweeper, cap_source: str, jobs, wall0):
    """The search, then the band, the tier table, ``levels.csv``, ``summary.json`` and the task tables."""
    on_ramp = None
    if jobs is not None and config.band:
        from .sweep_band import plan_band, run_band_end

        def on_ramp(_verdicts) -> None:
            plans = plan_band(config, sw.rows, sw.max_agents, sw.trajectories())
            for eff, plan in plans.items():
                jobs.submit(f"band_{eff}", run_band_end, config, out, eff, plan)

    sw.run(on_ramp)
    acc, acc_type = sw.accelerators()
    levels = sw.levels_frame()
    preset = sw.preset

    tiers, scope, summary_power_w, notes = _power(config, sw, levels, acc, acc_type)
    if jobs is not None:
        _add_band(tiers, config, out, sw, acc, acc_type, jobs)
    notes = list(sw.notes) + notes
    stopped = levels["stopped_early"].notna() if "stopped_early" in levels else pd.Series(False, levels.index)
    levels["decides_answer"] = _deciding_levels(levels, tiers) & ~stopped
    deciding = levels[levels["decides_answer"]]
    if stopped.any():
        notes.append(
            f"{int(stopped.sum())} level(s) stopped early, their verdicts decided at the interim looks (N = "
            f'{", ".join(str(int(n)) for n in levels.loc[stopped, "concurrency"])}; docs/sweep.md "Early '
            'stop"): they steered the search and decide no answer (every answer and the failure above it '
            "ran its full window), so they do not count for meets_aa_rules; --no-early-stop runs every level "
            "in full"
        )
    if not deciding["meets_aa_rules"].all():
        notes.append("some levels do not meet AA's validity rules (see meets_aa_rules per level)")
    above = levels[~levels["decides_answer"] & ~levels["meets_aa_rules"] & ~stopped]
    if len(above):
        notes.append(
            "levels above every tier's lowest failing level do not meet AA's validity rules (N = "
            f"{', '.join(str(int(n)) for n in above['concurrency'])}); they decide no answer and do not "
            "count for meets_aa_rules"
        )

    if target.virtual_time:
        notes.append(f"{target.description}: figures are a model's prediction, not a measurement")
    for _, r in tiers.iterrows():
        if r["max_agents_is_lower_bound"]:
            notes.append(
                f"tier {r['name']}: still passing at the highest level measured ({sw.max_agents}, "
                f"{cap_source}); max agents is a lower bound: re-run with the same out and a larger "
                "max_agents to extend (measured levels are reused)"
            )
        if r["non_monotonic"]:
            notes.append(
                f"tier {r['name']}: non-monotonic verdicts, passes above the first failure at "
                f"{r['non_monotonic_levels']}"
            )
    # each level's own run records the order it was measured in; the sweep's `level` is the index by N
    # (as in levels.csv), so a resumed sweep and an uninterrupted one write the same table
    n_requests = _count_requests([sw.results[n][0] for n in sorted(sw.results)])
    unloaded = jobs.result("baseline") if jobs is not None else None
    stale = out / "requests.parquet"  # the merged copy an older version wrote: the level files are the rows
    if stale.exists():
        stale.unlink()
    levels.to_csv(out / "levels.csv", index=False)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "toolkit_version": __version__,
        "simulator_core": core_status(),  # compiled or pure Python: the same results, not the same speed
        "target": config.target,
        "target_description": target.description,
        "model": config.model
        or getattr(target, "model", None)
        or sw.results[min(sw.results)][1].get("config", {}).get("model"),
        "tier_preset": config.tiers,
        "what_if": config.what_if,
        "accelerators": acc,
        "accelerator_type": acc_type,
        "power_w": summary_power_w,
        "power_scope": scope,
        "power_source": None if target.virtual_time else config.power_source,
        "failure_policy": config.failure_policy,
        "ci_method": config.ci_method,
        "confidence": config.confidence,
        "max_unmeasured_share": config.max_unmeasured_share,
        "policy_differs_at": _policy_differences(levels, preset, config.failure_policy),
        "meets_aa_rules": bool(deciding["meets_aa_rules"].all()),
        "client_ok": bool(levels["client_ok"].all()),
        "notes": notes,
        "config": config.measurement_dict(),
        "levels": levels.to_dict(orient="records"),
        "tiers": tiers.to_dict(orient="records"),
        "n_levels": len(levels),
        "n_levels_stopped_early": int(stopped.sum()),
        "max_agents_cap": sw.max_agents,
        "max_agents_cap_source": cap_source,
        "simulated_requests": n_requests if target.virtual_time else None,
        "levels_measured_this_run": sw.n_measured_now,
        "side_job_workers": jobs.n_workers if jobs is not None else 0,
        "side_job_cpu_s": jobs.cpu_s if jobs is not None else 0.0,
        "side_job_peak_rss_mb": jobs.peak_rss_mb if jobs is not None else 0.0,
        "wall_s": time.perf_counter() - wall0,
    }
    (out / "summary.json").write_text(strict_json_dumps(summary, indent=2) + "\n")
    from .tasks import write_sweep_tasks

    # tasks.parquet, tasks.csv: task completion times and slowdown (docs/frontier.md)
    write_sweep_tasks(out, unloaded=unloaded)
    summary = json.loads(strict_json_dumps(summary))
    return SweepResult(levels, summary, None, out, tiers)


def _add_band(tiers: pd.DataFrame, config, out: Path, sw, acc, acc_type, jobs: Any = None) -> None:
    """Simulator: the low-high band of each tier's answer (``band=True``; the ends from the side
    ``jobs`` started when the ramp ended, :mod:`agentperf_kit.sweep_jobs`) and AA's published figure for
    the system where one exists, as columns of the tier table (:mod:`agentperf_kit.sweep_band`)."""
    from .sweep_band import band_columns, published_for

    model = sw.results[min(sw.results)][1].get("config", {}).get("model") if sw.results else None
    if config.band:
        ends = {}
        for eff in ("low", "high"):
            if jobs is not None and f"band_{eff}" in jobs:
                ends[eff] = jobs.result(f"band_{eff}")
                for line in ends[eff]["lines"]:
                    sw.say(line)
        band = band_columns(config, tiers, ends)
        for col in (
            "band_low_agents",
            "band_high_agents",
            "band_low_is_lower_bound",
            "band_high_is_lower_bound",
        ):
            tiers[col] = [band[n][col] for n in tiers["name"]]
        counts = next(iter(band.values()))["band_levels"] if band else {}
        if counts:
            sw.notes.append(
                "band: "
                + ", ".join(
                    f"{k} levels under the {e} set ({ends[e].get('stopped_early', 0)} stopped early)"
                    for e, k in counts.items()
                )
                + " (band/; its levels stop at the interim looks once every tier is decided, or at the "
                "last look on point verdicts, so they do not meet AA's rules; method: docs/sweep.md)"
            )
        for end in ("low", "high"):
            tiers[f"band_{end}_agents_per_accelerator"] = [
                agents_per_accelerator(int(n), acc) for n in tiers[f"band_{end}_agents"]
            ]
    pub = [published_for(acc_type, model, config.tiers, n) for n in tiers["name"]]
    for col in ("published_agents_per_accelerator", "published_agents_per_mw"):
        tiers[col] = [p.get(col) for p in pub]


def _deciding_levels(levels: pd.DataFrame, tiers: pd.DataFrame) -> pd.Series:
    """Per level: does it decide some tier's answer? A level decides tier t when N <= t's lowest failing
    N (its passes below, and the failure that bounds it), or every level when t never fails (a lower
    bound). Levels above every tier's lowest failing N (measured by the ramp before the bisection found
    the boundaries) decide nothing, so their validity does not decide ``meets_aa_rules``."""
    top = levels["concurrency"].max() if len(levels) else 0
    bounds = [
        top if pd.isna(r["lowest_failing_agents"]) else int(r["lowest_failing_agents"])
        for _, r in tiers.iterrows()
    ]
    return levels["concurrency"] <= (max(bounds) if bounds else top)


def _policy_differences(levels: pd.DataFrame, preset: TierPreset, policy: str) -> list[dict[str, Any]]:
    """Levels and tiers whose verdict under the other failure policy differs from the one used."""
    other = "exclude" if policy == "miss" else "miss"
    out = []
    for t in preset.tiers:
        col = f"verdict_{t.name}_if_{other}"
        if col not in levels:
            continue
        for _, r in levels.iterrows():
            if r[col] != r[f"verdict_{t.name}"]:
                out.append(
                    {
                        "concurrency": int(r["concurrency"]),
                        "tier": t.name,
                        policy: r[f"verdict_{t.name}"],
                        other: r[col],
                    }
                )
    return out


def _count_requests(level_dirs: list[Path]) -> int:
    """Rows of the levels' ``requests.parquet`` (from the parquet footers; nothing is read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(Path(d) / "requests.parquet").metadata.num_rows for d in level_dirs)


def _file_digest(path: str | None) -> str | None:
    """sha256 of a trajectory file (None for the built-in set, which the toolkit version pins)."""
    if not path:
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise SweepConfigError(f"--trajectories {path}: cannot read: {exc}") from exc
    return h.hexdigest()


def load_sweep(directory: str | Path) -> SweepResult:
    """Load a finished sweep directory."""
    directory = Path(directory)
    path = directory / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no summary.json; is this a finished sweep directory?")
    summary = json.loads(path.read_text())
    check_schema_version(summary.get("schema_version"), what=str(path))
    levels = pd.read_csv(directory / "levels.csv")
    if not (directory / "levels").is_dir() and not (directory / "requests.parquet").exists():
        raise FileNotFoundError(f"{directory}: no levels/; is this a finished sweep directory?")
    return SweepResult(levels, summary, None, directory, pd.DataFrame(summary["tiers"]))


def format_summary(summary: dict[str, Any]) -> str:
    """The per-tier result table (what ``agentperf sweep`` prints)."""
    lines = [
        f"target {summary['target']}  model {summary.get('model')}  tiers {summary['tier_preset']}  "
        f"accelerators {summary['accelerators']} x {summary.get('accelerator_type')}  "
        f"power {_fmt(summary.get('power_w'), '{:,.0f} W') if summary.get('power_w') else 'per level'} "
        f"({summary.get('power_scope') or 'unknown'})",
        *([f"what-if: {summary['what_if']}"] if summary.get("what_if") else []),
        "",
        f"{'tier':<6}{'SLO':<20}{'max agents':>12}{'binding':>9}{'agents/accel':>14}{'power W':>10}"
        f"{'agents/MW':>12}",
    ]
    tiers = summary["tiers"]
    has_band = any("band_low_agents" in t for t in tiers)
    has_pub = any(
        t.get("published_agents_per_accelerator") or t.get("published_agents_per_mw") for t in tiers
    )
    if has_band:
        lines[-1] += f"{'band low-high /accel':>22}"
    if has_pub:
        lines[-1] += f"{'AA /accel':>11}{'AA /MW':>9}"
    for t in tiers:
        n = f"{'>=' if t['max_agents_is_lower_bound'] else ''}{t['max_agents']}"
        line = (
            f"{t['name']:<6}{t['label']:<20}{n:>12}{t.get('binding_constraint') or '-'!s:>9}"
            f"{_fmt(t['agents_per_accelerator'], '{:.2f}'):>14}{_fmt(t.get('power_w'), '{:,.0f}'):>10}"
            f"{_fmt(t['agents_per_mw'], '{:,.0f}'):>12}"
        )
        if has_band:
            lo = _fmt(t.get("band_low_agents_per_accelerator"), "{:.2f}")
            hi = ">=" * bool(t.get("band_high_is_lower_bound")) + _fmt(
                t.get("band_high_agents_per_accelerator"), "{:.2f}"
            )
            line += f"{lo + ' - ' + hi:>22}"
        if has_pub:
            line += f"{_fmt(t.get('published_agents_per_accelerator'), '{:.2f}'):>11}"
            line += f"{_fmt(t.get('published_agents_per_mw'), '{:,.0f}'):>9}"
        lines.append(line)
    lines.append("")
    lines.append(
        f"levels measured: {summary['n_levels']}  (N = "
        f"{', '.join(str(lv['concurrency']) for lv in summary['levels'])})"
    )
    if summary.get("simulated_requests") is not None:
        lines.append(
            f"simulated requests: {summary['simulated_requests']:,}  wall time {summary['wall_s']:.1f} s"
        )
    if summary.get("failure_policy"):
        lines.append(
            f"failure policy: {summary['failure_policy']}  intervals: {summary.get('ci_method')} "
            f"({summary.get('confidence', 0.95):.0%})"
        )
    for d in summary.get("policy_differs_at") or []:
        other = [k for k in d if k not in ("concurrency", "tier", summary.get("failure_policy"))]
        if other:
            lines.append(
                f"  N={d['concurrency']} {d['tier']}: {d[summary['failure_policy']]} "
                f"({summary['failure_policy']}), {d[other[0]]} ({other[0]})"
            )
    if has_band:
        from .sweep_band import BAND_RESOLUTION

        lines.append(
            "band: the answer under the low and high efficiency sets, searched from this sweep's ramp to "
            f"1/{round(1 / BAND_RESOLUTION)} (docs/sweep.md); AA: the published figure for this accelerator "
            "and model"
        )
    lines.append(f"meets AA validity rules: {'yes' if summary['meets_aa_rules'] else 'no'}")
    lines += [f"note: {n}" for n in summary.get("notes", [])]
    return "\n".join(lines)


def _fmt(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


_ = json_safe  # re-exported helper for callers building their own summaries
