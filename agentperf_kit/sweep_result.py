"""The result of a sweep as an object a notebook can hold: :class:`SweepResult`.

Built by :func:`agentperf_kit.sweep.run_sweep` and :func:`agentperf_kit.sweep.load_sweep`; re-exported from
:mod:`agentperf_kit.sweep`. Displayed in a notebook it is one line (``repr``) or a small table
(``_repr_html_``), never its tables in full; everything else is a method or property:

- ``levels``: levels.csv, one row per measured N; ``tiers``: one row per tier (max agents, binding
  constraint, agents per accelerator and per MW); ``requests``: all requests, read on first use;
- ``level(n)``: the :class:`~agentperf_kit.results.RunResult` of level N;
- ``plot()``: :func:`agentperf_kit.plots.plot_levels` with the sweep's tiers;
- ``retier(tiers)``: the finished sweep judged against other tiers with the sweep's own interval settings;
- ``compare(other)``: side by side with other sweeps, as ``agentperf compare``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from .results import RunResult
    from .slo import Tier, TierPreset

__all__ = ["SweepResult", "as_tier_preset"]


def as_tier_preset(tiers: str | TierPreset | Tier | Sequence[Tier]) -> TierPreset:
    """A :class:`~agentperf_kit.slo.TierPreset` from a preset name (``"aa-dsv4pro"``), a spec string
    (``"fast=100/2,slow=20/10"``: :func:`agentperf_kit.slo.tiers_from_spec`), a preset, one
    :class:`~agentperf_kit.slo.Tier` or a sequence of them."""
    from .errors import ConfigError
    from .slo import Tier, TierPreset, get_tier_preset

    if isinstance(tiers, TierPreset):
        return tiers
    if isinstance(tiers, str):
        return get_tier_preset(tiers)
    if isinstance(tiers, Tier):
        tiers = [tiers]
    tiers = tuple(tiers)
    if not tiers or not all(isinstance(t, Tier) for t in tiers):
        raise ConfigError(
            f"tiers: expected a preset name, a spec string like 'fast=100/2' or Tier objects; got {tiers!r}"
        )
    return TierPreset("custom", "user-defined tiers", tiers, "user")


def _max_agents_text(row: Any) -> str:
    """``max_agents`` with the ``>=`` marker of a lower bound (still passing at the top level)."""
    return f"{'>=' if bool(row.get('max_agents_is_lower_bound')) else ''}{int(row['max_agents'])}"


@dataclass
class SweepResult:
    """A finished (or loaded) sweep: ``levels`` (levels.csv), ``summary`` (summary.json), ``tiers``,
    and ``requests``, all requests of all levels: read from the level files on first use (one copy on disk,
    :mod:`agentperf_kit.sweep_requests`)
    (a large sweep's table can be many GB; nothing else needs it in memory)."""

    levels: pd.DataFrame
    summary: dict[str, Any]
    _requests: pd.DataFrame | None = field(default=None, repr=False)
    directory: Path | None = None
    tiers: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def requests(self) -> pd.DataFrame:
        if self._requests is None:
            if self.directory is None:
                raise ValueError("this sweep result has no directory to read its requests from")
            from .sweep_requests import read_sweep_requests

            self._requests = read_sweep_requests(self.directory, levels=self.levels)
        return self._requests

    @property
    def deployment(self) -> str | None:
        """The simulated deployment's preset name (e.g. ``"h200x8-dsv4pro"``), as the levels' manifests
        recorded it (else as the target spec names it); None for a live target."""
        from .errors import AgentperfError
        from .targets import SimTarget, parse_target

        try:  # targets.parse_target: the one reader of target specs
            swept = parse_target(
                str(self.summary.get("target") or ""), model=self.summary.get("model") or "?"
            )
        except AgentperfError:
            swept = None  # e.g. a twin preset file since moved: the manifests still say what ran
        if swept is not None and not swept.virtual_time:
            return None
        recorded = self._recorded_deployment()
        return recorded or (swept.deployment.name if isinstance(swept, SimTarget) else None)

    def _recorded_deployment(self) -> str | None:
        if self.directory is None or self.levels.empty:
            return None
        import json

        from .results import MANIFEST_NAME

        try:
            path = self.level_directory(int(self.levels["concurrency"].iloc[0])) / MANIFEST_NAME
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return ((manifest.get("target") or {}).get("deployment") or {}).get("name")

    @property
    def target(self) -> str:
        """The target, with the simulated deployment named (``"sim:h200x8-dsv4pro"`` for ``"sim"``)."""
        dep = self.deployment
        return f"sim:{dep}" if dep else str(self.summary.get("target"))

    @property
    def settings(self) -> str:
        """One line naming the settings that produced these numbers: target, efficiency set (simulated),
        level window, warm-up, trajectory minimums, seed, interval method and whether AA's validity rules
        were met. Two sweeps of the same system with different settings give different answers; print this
        beside any number shown."""
        s, c = self.summary, self.summary.get("config") or {}
        parts = [self.target]
        if c.get("efficiency") and self.deployment is not None:
            parts.append(f"efficiency {c['efficiency']}")
        if c.get("level_duration_s") is not None:
            parts.append(f"{c['level_duration_s']:g} s window (warm-up {c.get('warmup_s', 0):g} s)")
        if c.get("min_trajectories") is not None:
            parts.append(
                f">= {c['min_trajectories']} trajectories ({c.get('min_trajectories_per_agent')} per agent)"
            )
        if c.get("max_agents") is not None:
            parts.append(f"N <= {c['max_agents']}")
        if c.get("seed") is not None:
            parts.append(f"seed {c['seed']}")
        if s.get("ci_method"):
            parts.append(f"{s['ci_method']} intervals at {s.get('confidence', 0.95):.0%}")
        parts.append("meets AA's rules" if s.get("meets_aa_rules") else "shorter than AA's rules")
        return ", ".join(parts)

    # -- display ---------------------------------------------------------------------------------------

    def _tier_text(self) -> str:
        if self.tiers.empty:
            return "no tiers"
        parts = [f"{r['name']} {_max_agents_text(r)}" for _, r in self.tiers.iterrows()]
        return ", ".join(parts) + " agents"

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<SweepResult {self.target!r} {s.get('tier_preset')}: {self._tier_text()}; "
            f"{len(self.levels)} levels; {self.directory}>"
        )

    def _repr_html_(self) -> str:
        s = self.summary
        head = (
            f"<b>SweepResult</b> <code>{html.escape(self.target)}</code> "
            f"tiers <code>{html.escape(str(s.get('tier_preset')))}</code>, {len(self.levels)} levels "
            f"(N = {', '.join(str(int(n)) for n in self.levels.get('concurrency', []))}), "
            f"{s.get('accelerators')} x {html.escape(str(s.get('accelerator_type')))}<br>"
            f"<small>{html.escape(self.settings)}<br>{html.escape(str(self.directory))}</small>"
        )
        rows = []
        for _, r in self.tiers.iterrows():
            per_acc = r.get("agents_per_accelerator")
            per_mw = r.get("agents_per_mw")
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(v))}</td>"
                    for v in (
                        r["name"],
                        r.get("label", ""),
                        _max_agents_text(r),
                        r.get("binding_constraint") or "-",
                        "-" if pd.isna(per_acc) else f"{per_acc:,.2f}",
                        "-" if per_mw is None or pd.isna(per_mw) else f"{per_mw:,.0f}",
                    )
                )
                + "</tr>"
            )
        cols = ["tier", "SLO", "max agents", "binding", "agents/accel", "agents/MW"]
        return (
            f"<div>{head}<table><thead><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    # -- levels ----------------------------------------------------------------------------------------

    def level_directory(self, n: int) -> Path:
        """The run directory of level ``n`` agents (the last extension measured for it)."""
        if self.directory is None:
            raise ValueError("this sweep result has no directory to read its levels from")
        row = self.levels[self.levels["concurrency"] == int(n)]
        if row.empty:
            from .errors import ConfigError

            raise ConfigError(
                f"n={n}: no level with {n} agents in this sweep; measured levels: "
                f"{', '.join(str(int(x)) for x in self.levels['concurrency'])}"
            )
        ext = int(row["extensions"].iloc[-1]) if "extensions" in row else 0
        return Path(self.directory) / "levels" / f"n{int(n):05d}_e{ext}"

    def level(self, n: int) -> RunResult:
        """The :class:`~agentperf_kit.results.RunResult` of level ``n`` agents (its manifest, window and
        requests), as measured by the sweep."""
        from .results import load_run

        return load_run(self.level_directory(n))

    # -- analysis --------------------------------------------------------------------------------------

    def tier_preset(self) -> TierPreset:
        """The tiers this sweep was judged against."""
        return as_tier_preset(str(self.summary["tier_preset"]))

    def plot(self, tiers: str | TierPreset | Tier | Sequence[Tier] | None = None) -> Any:
        """P25 output speed and P95 TTFT against N with the tiers' thresholds
        (:func:`agentperf_kit.plots.plot_levels`). Returns the matplotlib Figure."""
        from .plots import plot_levels

        return plot_levels(self.levels, as_tier_preset(tiers) if tiers is not None else self.tier_preset())

    def retier(self, tiers: str | TierPreset | Tier | Sequence[Tier]) -> pd.DataFrame:
        """The finished sweep judged against other ``tiers`` (a preset name, a spec string like
        ``"fast=100/2"``, or Tier objects), without measuring anything: each measured level's requests are
        judged by :func:`agentperf_kit.slo.evaluate_level` with the sweep's own confidence, interval method,
        failure policy and steady window, and :func:`agentperf_kit.slo.max_agents` picks the highest
        passing N. As in the sweep, a level that stays inconclusive takes its point verdict (except when too
        many speeds were unmeasurable). Returns the per-tier table (as ``tiers``: max agents, lower-bound
        flag, binding constraint, agents per accelerator and per MW).

        The levels are the ones the sweep measured for its own tiers: a new tier whose boundary falls
        between two of them is bracketed only as finely as those levels allow (``lowest_failing_agents``
        says where the bracket ends)."""
        from .normalize import PowerSpec
        from .results import load_run
        from .slo import _EVAL_COLUMNS, evaluate_level
        from .sweep import _tier_stat_columns, _tier_table

        preset = as_tier_preset(tiers)
        s = self.summary
        rows = []
        for n in self.levels["concurrency"]:
            run = load_run(self.level_directory(int(n)))
            w = run.manifest.get("window", {})
            kw = dict(
                ci_method=s.get("ci_method", "binomial"),
                failure_policy=s.get("failure_policy", "miss"),
                window=(w.get("window_start_s"), w.get("window_end_s")),
            )
            if s.get("max_unmeasured_share") is not None:
                kw["max_unmeasured_share"] = s["max_unmeasured_share"]
            judged = run.read_requests(_EVAL_COLUMNS, in_window_only=True)  # a level can be GBs
            ev = evaluate_level(judged, preset, confidence=s.get("confidence", 0.95), **kw)
            point = evaluate_level(judged, preset, confidence=None, **kw)
            row: dict[str, Any] = {"concurrency": int(n), **_tier_stat_columns(ev)}
            for t in preset.tiers:
                e = ev[ev["tier"] == t.name]
                v = e["tier_verdict"].iloc[0]
                if v == "inconclusive" and not any("unmeasured" in str(x) for x in e["reason"] if x):
                    v = point.loc[point["tier"] == t.name, "tier_verdict"].iloc[0]
                row[f"verdict_{t.name}"] = v
                row[f"binding_{t.name}"] = e["binding"].iloc[0]
            rows.append(row)
        verdicts = pd.DataFrame(rows)
        lv = self.levels.set_index("concurrency")
        power = (
            PowerSpec(s["power_w"], s.get("power_scope") or "declared", "sweep summary")
            if s.get("power_w") is not None
            else None
        )

        def col_at(col: str, n: int) -> Any:
            if col not in lv or n not in lv.index:
                return None
            v = lv.at[n, col]
            return None if pd.isna(v) else v

        return _tier_table(
            verdicts,
            preset,
            s.get("accelerators"),
            power,
            lambda n: col_at("power_w", n),
            None,
            lambda n: col_at("power_scope", n),
        )

    def compare(self, *others: SweepResult | str | Path) -> pd.DataFrame:
        """This sweep and ``others`` side by side: one tidy row per (sweep, tier), as ``agentperf compare``
        (:func:`agentperf_kit.report.compare_runs`)."""
        from .report import compare_runs

        return compare_runs([self, *others])
