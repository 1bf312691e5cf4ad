"""ipywidgets explorers of measured levels: change an SLO and see what it does, without re-running.

- :class:`SLOExplorer`: sliders for a custom tier (speed floor, TTFT ceiling, and the two percentiles);
  every change recomputes each level's percentiles and the max agents meeting the tier, and redraws the
  ECDFs. The rules are :mod:`agentperf_kit.slo`'s (point verdicts: the observed percentile against the
  threshold; the max-agents rule of :func:`agentperf_kit.slo.max_agents`).
- :class:`LevelPicker`: a dropdown of levels; shows the level's row, its tier verdicts and ECDFs.
- :class:`TrajectoryBrowser`: pick a level, an agent and one of its trajectories; shows the per-turn
  table and the agent's swim lane.
- :class:`FrontierExplorer`: sliders over an SLO frontier's grid (:mod:`agentperf_kit.frontier`); shows
  max agents per accelerator and per MW of each system at that point, and the trade-off curve.

Each takes a sweep (:class:`agentperf_kit.sweep.SweepResult`), a run
(:class:`agentperf_kit.results.RunResult`), a directory holding either, or a requests table
(``requests.parquet``'s columns). Each has ``widget``, the container to display, and displays itself
when it is the last expression of a cell.

Speed: the steady-window samples of each level are sorted once (:class:`LevelSamples`); a slider change then
costs a few order-statistic look-ups per level, independent of the number of requests
(``python benchmarks/widgets_speed.py`` prints the figure for two million requests). Sliders update on
release (``continuous_update=False``). Needs the notebook extra: ``pip install 'agentperf-kit[notebooks]'``.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .percentiles import percentile_sorted
from .plots import _draw_ecdf, _sorted_groups, cached_share_bucket, plot_agent_swimlane
from .slo import DEFAULT_TIER_PRESET, Tier, TierPreset, evaluate_level, get_tier_preset, max_agents

__all__ = [
    "FrontierExplorer",
    "LevelPicker",
    "LevelSamples",
    "SLOExplorer",
    "TrajectoryBrowser",
    "load_frontier",
    "load_requests",
    "turn_table",
]


def _widgets():
    try:
        import ipywidgets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("widgets need ipywidgets: pip install 'agentperf-kit[notebooks]'") from exc
    return ipywidgets


def load_requests(data: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(requests table, context) from a SweepResult, RunResult, directory or DataFrame. The context holds
    what a sweep adds: ``tier_preset`` and the ``levels`` table (empty for a run or a bare table)."""
    if isinstance(data, str | Path):
        directory = Path(data)
        if (directory / "summary.json").exists():
            from .sweep import load_sweep

            data = load_sweep(directory)
        else:
            from .results import load_run

            data = load_run(directory)
    if isinstance(data, pd.DataFrame):
        return data, {}
    if hasattr(data, "summary") and hasattr(data, "levels") and hasattr(data, "requests"):
        return data.requests, {"tier_preset": data.summary.get("tier_preset"), "levels": data.levels}
    if hasattr(data, "requests") and hasattr(data, "manifest"):
        return data.requests, {}
    raise TypeError(
        f"expected a SweepResult, RunResult, run or sweep directory, or a requests DataFrame; got "
        f"{type(data).__name__}"
    )


def _preset(tiers: str | TierPreset | Sequence[Tier] | None, ctx: dict[str, Any]) -> tuple[Tier, ...]:
    if tiers is None:
        tiers = ctx.get("tier_preset") or DEFAULT_TIER_PRESET
    if isinstance(tiers, str):
        tiers = get_tier_preset(tiers)
    if isinstance(tiers, TierPreset):
        return tiers.tiers
    if isinstance(tiers, Tier):
        return (tiers,)
    return tuple(tiers)


@dataclass
class LevelSamples:
    """Per level (a value of ``by``, default N): the sorted NaN-free output speeds and TTFTs of its
    steady-window requests (failures in: speed 0, TTFT +inf), sorted once so that any percentile is a
    look-up."""

    by: str
    levels: list[Any]
    speed: dict[Any, np.ndarray]
    ttft: dict[Any, np.ndarray]
    n_requests: dict[Any, int]
    n_failed: dict[Any, int]

    @classmethod
    def from_requests(
        cls, requests: pd.DataFrame, *, by: str = "concurrency", in_window_only: bool = True
    ) -> LevelSamples:
        speed = _sorted_groups(requests, "output_speed_tps", by, in_window_only=in_window_only)
        ttft = _sorted_groups(requests, "ttft_s", by, in_window_only=in_window_only)
        w = (
            requests[requests["in_window"].to_numpy(dtype=bool)]
            if in_window_only and "in_window" in requests
            else requests
        )
        counts = w.groupby(by, sort=True)["ok"].agg(["size", "sum"]) if "ok" in w else None
        levels = sorted(ttft)
        n_req = {k: int(counts.loc[k, "size"]) if counts is not None else len(ttft[k]) for k in levels}
        n_fail = {
            k: int(counts.loc[k, "size"] - counts.loc[k, "sum"]) if counts is not None else 0 for k in levels
        }
        return cls(by, levels, speed, ttft, n_req, n_fail)

    def percentiles(self, speed_percentile: float, ttft_percentile: float) -> pd.DataFrame:
        """Per level: the observed speed and TTFT percentiles (linear interpolation, +inf kept)."""
        return pd.DataFrame(
            {
                self.by: self.levels,
                "n_requests": [self.n_requests[k] for k in self.levels],
                "n_failed": [self.n_failed[k] for k in self.levels],
                "speed_percentile": float(speed_percentile),
                "observed_speed_tps": [
                    percentile_sorted(self.speed[k], speed_percentile) for k in self.levels
                ],
                "ttft_percentile": float(ttft_percentile),
                "observed_ttft_s": [percentile_sorted(self.ttft[k], ttft_percentile) for k in self.levels],
            }
        )

    def evaluate(self, tier: Tier) -> pd.DataFrame:
        """Per level: the observed percentiles of ``tier`` and its point verdict and binding constraint
        (columns ``verdict_<tier>``/``binding_<tier>``, as :func:`agentperf_kit.slo.max_agents` reads them).

        The verdict is :func:`agentperf_kit.slo.evaluate_level`'s own (``confidence=None``), applied to the
        two observed percentiles: a one-request sample's percentile is that request's value, so the rule,
        the +inf/NaN handling and the binding margin are slo's, not a copy."""
        out = self.percentiles(tier.speed_percentile, tier.ttft_percentile)
        verdicts, binding = [], []
        for s, t in zip(out["observed_speed_tps"], out["observed_ttft_s"], strict=True):
            ev = evaluate_level(
                pd.DataFrame({"output_speed_tps": [s], "ttft_s": [t]}),
                [tier],
                confidence=None,
                in_window_only=False,
            )
            verdicts.append(ev["tier_verdict"].iloc[0])
            binding.append(ev["binding"].iloc[0])
        out[f"verdict_{tier.name}"] = verdicts
        out[f"binding_{tier.name}"] = binding
        if self.by != "concurrency":
            out["concurrency"] = out[self.by]
        return out

    def max_agents(self, tier: Tier) -> dict[str, Any]:
        """The :func:`agentperf_kit.slo.max_agents` row of ``tier`` over these levels (point verdicts)."""
        return max_agents(self.evaluate(tier), [tier]).iloc[0].to_dict()


class _Explorer:
    widget: Any

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @staticmethod
    def _png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        return buf.getvalue()


def _nice_max(x: float) -> float:
    if not math.isfinite(x) or x <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(x))
    return math.ceil(x / mag) * mag


def _html_table(df: pd.DataFrame, max_height: int = 260) -> str:
    body = df.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0)
    return f"<div style='max-height:{max_height}px;overflow:auto;font-size:12px'>{body}</div>"


class SLOExplorer(_Explorer):
    """Sliders for a custom SLO tier over already measured levels; recomputes the max agents on change.

    Attributes (a browser test relies on them):
        speed_floor: FloatSlider, tokens/s (CSS class ``agentperf-speed-floor``).
        ttft_ceiling: FloatSlider, s (``agentperf-ttft-ceiling``).
        speed_pct, ttft_pct: FloatSliders, the percentiles (default 25 and 95).
        result: HTML widget (``agentperf-max-agents``) whose text holds ``max agents: N`` or
            ``max agents: none`` when no level passes.
        max_agents: the current result (int), None when no level passes.
        levels: the per-level table of the current tier (observed percentiles, verdict, binding).
        figure: the matplotlib Figure of the ECDFs (redrawn on change); ``image`` shows it.
        widget: the container to display.

    ``tiers`` (a preset name, TierPreset or list of Tier; default the sweep's preset) and ``tier`` (a name
    in it; default the first) set the starting values.
    """

    def __init__(
        self,
        data: Any,
        tiers: str | TierPreset | Sequence[Tier] | None = None,
        *,
        tier: str | None = None,
        by: str = "concurrency",
        in_window_only: bool = True,
        draw: bool = True,
        max_points: int = 800,
    ) -> None:
        w = _widgets()
        requests, ctx = load_requests(data)
        preset = _preset(tiers, ctx)
        start = preset[0]
        if tier is not None:
            names = [t.name for t in preset]
            if tier not in names:
                raise ValueError(f"tier={tier!r} is not in the preset; tiers: {', '.join(names)}")
            start = preset[names.index(tier)]
        self.samples = LevelSamples.from_requests(requests, by=by, in_window_only=in_window_only)
        self._draw_enabled = draw
        self._max_points = max_points
        top_speed = max(
            [s[np.isfinite(s)].max() for s in self.samples.speed.values() if np.isfinite(s).any()] + [0]
        )
        top_ttft = max(
            [
                percentile_sorted(s[np.isfinite(s)], 99)
                for s in self.samples.ttft.values()
                if np.isfinite(s).any()
            ]
            + [0]
        )
        smax = _nice_max(
            max(top_speed, 2 * start.min_output_speed_tps, *(t.min_output_speed_tps for t in preset))
        )
        tmax = _nice_max(max(top_ttft, 2 * start.max_ttft_s, *(t.max_ttft_s for t in preset)))
        common = dict(
            continuous_update=False,
            style={"description_width": "140px"},
            layout=w.Layout(width="560px"),
        )
        self.speed_floor = w.FloatSlider(
            value=start.min_output_speed_tps,
            min=0.0,
            max=smax,
            step=smax / 500,
            readout_format=".1f",
            description="speed floor (tok/s)",
            **common,
        )
        self.ttft_ceiling = w.FloatSlider(
            value=start.max_ttft_s,
            min=tmax / 1000,
            max=tmax,
            step=tmax / 1000,
            readout_format=".3g",
            description="TTFT ceiling (s)",
            **common,
        )
        self.speed_pct = w.FloatSlider(
            value=start.speed_percentile,
            min=0.0,
            max=100.0,
            step=1.0,
            readout_format=".0f",
            description="speed percentile",
            **common,
        )
        self.ttft_pct = w.FloatSlider(
            value=start.ttft_percentile,
            min=0.0,
            max=100.0,
            step=1.0,
            readout_format=".0f",
            description="TTFT percentile",
            **common,
        )
        for slider, css in (
            (self.speed_floor, "agentperf-speed-floor"),
            (self.ttft_ceiling, "agentperf-ttft-ceiling"),
            (self.speed_pct, "agentperf-speed-pct"),
            (self.ttft_pct, "agentperf-ttft-pct"),
        ):
            slider.add_class(css)
        self.result = w.HTML()
        self.result.add_class("agentperf-max-agents")
        self.table = w.HTML()
        self.image = w.Image(format="png")
        self.widget = w.VBox(
            [
                w.HBox(
                    [w.VBox([self.speed_floor, self.speed_pct]), w.VBox([self.ttft_ceiling, self.ttft_pct])]
                ),
                self.result,
                self.table,
                self.image,
            ]
        )
        self.figure: Any = None
        self.max_agents: int | None = None
        self.levels = pd.DataFrame()
        self.summary: dict[str, Any] = {}
        for slider in (self.speed_floor, self.ttft_ceiling, self.speed_pct, self.ttft_pct):
            slider.observe(self._on_change, names="value")
        self.update()

    @property
    def tier(self) -> Tier:
        """The custom tier the sliders describe."""
        floor, ceiling = float(self.speed_floor.value), float(self.ttft_ceiling.value)
        sp, tp = float(self.speed_pct.value), float(self.ttft_pct.value)
        return Tier(
            "custom",
            f"P{sp:g} speed >= {floor:g} tok/s & P{tp:g} TTFT <= {ceiling:g} s",
            floor,
            ceiling,
            speed_percentile=sp,
            ttft_percentile=tp,
        )

    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    def update(self, *, draw: bool | None = None) -> int | None:
        """Recompute from the sorted samples (no re-run) and redraw; returns the new max agents."""
        tier = self.tier
        self.levels = self.samples.evaluate(tier)
        self.summary = max_agents(self.levels, [tier]).iloc[0].to_dict()
        best = int(self.summary["max_agents"])
        self.max_agents = best if best > 0 else None
        self.result.value = self._result_html(tier)
        by = self.samples.by
        shown = self.levels[
            [
                by,
                "n_requests",
                "n_failed",
                "observed_speed_tps",
                "observed_ttft_s",
                "verdict_custom",
                "binding_custom",
            ]
        ].rename(
            columns={
                "observed_speed_tps": f"P{tier.speed_percentile:g} speed [tok/s]",
                "observed_ttft_s": f"P{tier.ttft_percentile:g} TTFT [s]",
                "verdict_custom": "verdict",
                "binding_custom": "binding",
            }
        )
        self.table.value = _html_table(shown)
        if self._draw_enabled if draw is None else draw:
            self._redraw(tier)
        return self.max_agents

    def _result_html(self, tier: Tier) -> str:
        s = self.summary
        text = f"max agents: {self.max_agents if self.max_agents is not None else 'none'}"
        notes = [html.escape(tier.label)]
        if s["max_agents_is_lower_bound"]:
            notes.append("a lower bound: the highest level measured still passes")
        if s["lowest_failing_agents"] is not None:
            notes.append(
                f"lowest failing N = {s['lowest_failing_agents']}, limited by {s['binding_constraint']}"
            )
        if s["non_monotonic"]:
            notes.append(f"non-monotonic: also passes at N = {s['non_monotonic_levels']}")
        notes.append(f"{len(self.samples.levels)} measured levels, point verdicts")
        detail = "; ".join(notes)
        return f"<b style='font-size:1.2em'>{text}</b><br><span style='font-size:0.9em'>{detail}</span>"

    def _redraw(self, tier: Tier) -> None:
        from matplotlib.figure import Figure

        if self.figure is None:
            self.figure = Figure(figsize=(12, 3.8))
        fig = self.figure
        fig.clear()
        a, b = fig.subplots(1, 2)
        _draw_ecdf(
            a,
            self.samples.speed,
            "output_speed_tps",
            tiers=[tier],
            percentile=tier.speed_percentile,
            by=self.samples.by,
            max_points=self._max_points,
        )
        _draw_ecdf(
            b,
            self.samples.ttft,
            "ttft_s",
            tiers=[tier],
            percentile=tier.ttft_percentile,
            by=self.samples.by,
            max_points=self._max_points,
        )
        fig.tight_layout()
        self.image.value = self._png(fig)


class LevelPicker(_Explorer):
    """A dropdown of levels (N); shows the chosen level's row of the levels table (a sweep's, else computed
    from its requests), its verdict for each tier, and its ECDFs of speed and TTFT.

    Attributes: ``dropdown``, ``table`` (HTML), ``verdicts`` (HTML), ``image``, ``figure``, ``widget``.
    """

    def __init__(
        self, data: Any, tiers: str | TierPreset | Sequence[Tier] | None = None, *, by: str = "concurrency"
    ) -> None:
        w = _widgets()
        self.requests, ctx = load_requests(data)
        self.tiers = _preset(tiers, ctx)
        self.by = by
        self.samples = LevelSamples.from_requests(self.requests, by=by)
        self._levels_table = ctx.get("levels")
        self.dropdown = w.Dropdown(options=self.samples.levels, description=f"level ({by})")
        self.table, self.verdicts, self.image = w.HTML(), w.HTML(), w.Image(format="png")
        self.widget = w.VBox([self.dropdown, w.HBox([self.table, self.verdicts]), self.image])
        self.figure: Any = None
        self.dropdown.observe(lambda _: self.update(), names="value")
        self.update()

    def level_row(self, level: Any) -> pd.Series:
        """The level's statistics: its row of the sweep's levels table, else ``metrics.level_stats``."""
        lv = self._levels_table
        if lv is not None and self.by in lv and (lv[self.by] == level).any():
            return lv[lv[self.by] == level].iloc[-1]
        from .metrics import level_stats

        return pd.Series(level_stats(self.requests[self.requests[self.by] == level]))

    def update(self) -> None:
        from matplotlib.figure import Figure

        level = self.dropdown.value
        row = self.level_row(level)
        self.table.value = _html_table(row.rename("value").rename_axis("statistic").reset_index(), 360)
        ev = evaluate_level(self.requests[self.requests[self.by] == level], self.tiers)
        self.verdicts.value = _html_table(
            ev[
                [
                    "tier",
                    "statistic",
                    "percentile",
                    "observed",
                    "ci_low",
                    "ci_high",
                    "threshold",
                    "verdict",
                    "tier_verdict",
                ]
            ],
            360,
        )
        fig = self.figure = self.figure or Figure(figsize=(12, 3.6))
        fig.clear()
        a, b = fig.subplots(1, 2)
        one = {level: self.samples.speed[level]}
        _draw_ecdf(a, one, "output_speed_tps", tiers=self.tiers, by=self.by)
        _draw_ecdf(b, {level: self.samples.ttft[level]}, "ttft_s", tiers=self.tiers, by=self.by)
        fig.tight_layout()
        self.image.value = self._png(fig)


_TURN_COLUMNS = [
    "trajectory_id",
    "phase",
    "turn",
    "t_send_s",
    "prompt_tokens",
    "cached share",
    "output_tokens",
    "ttft_s",
    "output_speed_tps",
    "e2e_s",
    "tool_wait_s",
    "ok",
    "error",
    "in_window",
]


def turn_table(
    requests: pd.DataFrame, agent: int, *, concurrency: int | None = None, trajectory_id: str | None = None
) -> pd.DataFrame:
    """One agent's requests in time order, one row per turn (optionally one trajectory only), with the
    prefix-cache hit share bucket; the columns the trajectory browser shows."""
    rows = requests[requests["agent"] == agent]
    if concurrency is not None:
        rows = rows[rows["concurrency"] == concurrency]
    if trajectory_id is not None:
        rows = rows[rows["trajectory_id"] == trajectory_id]
    rows = rows.sort_values("t_send_s")
    out = rows.assign(**{"cached share": cached_share_bucket(rows)}) if len(rows) else rows
    return out[[c for c in _TURN_COLUMNS if c in out]].reset_index(drop=True)


class TrajectoryBrowser(_Explorer):
    """Pick a level, an agent and one of its trajectories: the per-turn table and the agent's swim lane
    (the whole level, or the chosen trajectory's span).

    Attributes: ``level``, ``agent``, ``trajectory`` (Dropdowns), ``table`` (HTML), ``image``, ``figure``,
    ``turns`` (the DataFrame shown), ``widget``.
    """

    def __init__(self, data: Any, *, concurrency: int | None = None, agent: int = 0) -> None:
        w = _widgets()
        self.requests, _ = load_requests(data)
        levels = sorted(self.requests["concurrency"].unique().tolist())
        self.level = w.Dropdown(
            options=levels,
            value=concurrency if concurrency is not None else levels[-1],
            description="level (N)",
        )
        self.agent = w.Dropdown(description="agent")
        self.trajectory = w.Dropdown(description="trajectory")
        self.table, self.image = w.HTML(), w.Image(format="png")
        self.widget = w.VBox([w.HBox([self.level, self.agent, self.trajectory]), self.table, self.image])
        self.figure: Any = None
        self.turns = pd.DataFrame()
        self._busy = False
        self._fill_agents(agent)
        self.level.observe(lambda _: self._fill_agents(0), names="value")
        self.agent.observe(lambda _: self._fill_trajectories(), names="value")
        self.trajectory.observe(lambda _: self.update(), names="value")
        self.update()

    def _rows(self) -> pd.DataFrame:
        return self.requests[self.requests["concurrency"] == self.level.value]

    def _fill_agents(self, agent: int) -> None:
        self._busy = True
        agents = sorted(self._rows()["agent"].unique().tolist())
        self.agent.options = agents
        self.agent.value = agent if agent in agents else agents[0]
        self._busy = False
        self._fill_trajectories()

    def _fill_trajectories(self) -> None:
        if self._busy:
            return
        self._busy = True
        rows = self._rows()
        tids = pd.unique(rows[rows["agent"] == self.agent.value].sort_values("t_send_s")["trajectory_id"])
        self.trajectory.options = ["(all)", *[str(t) for t in tids]]
        self.trajectory.value = "(all)"
        self._busy = False
        self.update()

    def update(self) -> None:
        if self._busy:
            return
        from matplotlib.figure import Figure

        tid = None if self.trajectory.value in (None, "(all)") else self.trajectory.value
        self.turns = turn_table(
            self.requests, self.agent.value, concurrency=self.level.value, trajectory_id=tid
        )
        self.table.value = _html_table(self.turns, 300)
        t_range = None
        if tid is not None and len(self.turns):
            end = self.turns["t_send_s"].max() + self.turns["e2e_s"].iloc[-1]
            t_range = (float(self.turns["t_send_s"].min()), float(end))
        fig = self.figure = self.figure or Figure(figsize=(12, 3.6))
        fig.clear()
        ax = fig.subplots()
        plot_agent_swimlane(self._rows(), self.agent.value, t_range=t_range, ax=ax)
        fig.tight_layout()
        self.image.value = self._png(fig)


_FRONTIER_SHOWN = {
    "system": "system",
    "max_agents": "max agents",
    "agents_per_accelerator": "agents per accelerator",
    "agents_per_mw": "agents per MW",
    "lowest_failing_agents": "lowest failing N",
    "binding_constraint": "binding",
    "tasks_per_hour_per_mw": "tasks/h per MW",
    "p50_slowdown": "P50 slowdown",
    "sweep_tier": "sweep tier",
}


def load_frontier(data: Any) -> pd.DataFrame:
    """A frontier table (:func:`agentperf_kit.frontier.sweep_frontier`'s columns) from a table, a sweep
    (``SweepResult`` or directory), or a list of them (concatenated, default grids)."""
    from .frontier import sweep_frontier

    if isinstance(data, pd.DataFrame):
        return data
    items = list(data) if isinstance(data, list | tuple) else [data]
    parts = []
    for item in items:
        if isinstance(item, pd.DataFrame):
            parts.append(item)
            continue
        d = getattr(item, "directory", item)
        if not isinstance(d, str | Path):
            raise TypeError(
                f"data: expected a frontier DataFrame, a SweepResult or a sweep directory (or a list of "
                f"them), got {type(item).__name__}"
            )
        parts.append(sweep_frontier(d))
    if not parts:
        raise ValueError("data: no frontier table or sweep given")
    return pd.concat(parts, ignore_index=True)


class FrontierExplorer(_Explorer):
    """Move along an SLO frontier: sliders over its grid of speed floors and TTFT ceilings; shows, per
    system, the max agents, agents per accelerator and per MW at that point (read from the table, no
    recomputation), and the trade-off curve at the chosen ceiling with the chosen floor marked.

    ``data``: a frontier table (:func:`agentperf_kit.frontier.sweep_frontier`, several systems
    concatenated), a sweep (``SweepResult`` or directory) or a list of them (each turned into its frontier
    with the default grid). The sliders move over the grid values only: between grid points the frontier
    is not known.

    Attributes:
        speed_floor: SelectionSlider over the grid's speed floors, tokens/s (``agentperf-frontier-speed``).
        ttft_ceiling: SelectionSlider over the grid's TTFT ceilings, s (``agentperf-frontier-ttft``).
        speed_pct, ttft_pct: Dropdowns of the table's speed and TTFT percentiles.
        value: Dropdown of the plotted value (``agents_per_accelerator`` or ``agents_per_mw``).
        rows: the frontier rows of the current point, one per system (all the table's columns).
        result: HTML (``agentperf-frontier-result``): a table of those rows, per system.
        agents_per_accelerator, agents_per_mw: system -> the current value (None where unknown).
        figure, image: the trade-off figure and its PNG.
        widget: the container to display.
    """

    def __init__(
        self,
        data: Any,
        *,
        speed_floor: float | None = None,
        ttft_ceiling: float | None = None,
        speed_percentile: float | None = None,
        ttft_percentile: float | None = None,
        value: str = "agents_per_accelerator",
        draw: bool = True,
    ) -> None:
        w = _widgets()
        self.frontier = load_frontier(data)
        f = self.frontier
        speeds = sorted({float(v) for v in f["min_output_speed_tps"]})
        ttfts = sorted({float(v) for v in f["max_ttft_s"]})
        sps = sorted({float(v) for v in f["speed_percentile"]})
        tps = sorted({float(v) for v in f["ttft_percentile"]})
        values = ["agents_per_accelerator", "agents_per_mw", "max_agents"]
        checks = (
            ("speed_floor", speed_floor, speeds),
            ("ttft_ceiling", ttft_ceiling, ttfts),
            ("speed_percentile", speed_percentile, sps),
            ("ttft_percentile", ttft_percentile, tps),
            ("value", value, values),
        )
        for name, v, grid in checks:
            if v is not None and v not in grid:
                raise ValueError(f"{name}={v!r} is not in the frontier's grid; pick one of {grid}")
        common = dict(
            continuous_update=False, style={"description_width": "140px"}, layout=w.Layout(width="560px")
        )
        self.speed_floor = w.SelectionSlider(
            options=[(f"{v:g}", v) for v in speeds],
            value=speeds[0] if speed_floor is None else float(speed_floor),
            description="speed floor (tok/s)",
            **common,
        )
        self.ttft_ceiling = w.SelectionSlider(
            options=[(f"{v:g}", v) for v in ttfts],
            value=ttfts[-1] if ttft_ceiling is None else float(ttft_ceiling),
            description="TTFT ceiling (s)",
            **common,
        )
        self.speed_floor.add_class("agentperf-frontier-speed")
        self.ttft_ceiling.add_class("agentperf-frontier-ttft")
        small = dict(style={"description_width": "140px"}, layout=w.Layout(width="280px"))
        self.speed_pct = w.Dropdown(
            options=[(f"P{v:g}", v) for v in sps],
            value=(25.0 if 25.0 in sps else sps[0]) if speed_percentile is None else float(speed_percentile),
            description="speed percentile",
            **small,
        )
        self.ttft_pct = w.Dropdown(
            options=[(f"P{v:g}", v) for v in tps],
            value=(95.0 if 95.0 in tps else tps[-1]) if ttft_percentile is None else float(ttft_percentile),
            description="TTFT percentile",
            **small,
        )
        self.value = w.Dropdown(
            options=[(_FRONTIER_SHOWN.get(v, v), v) for v in values], value=value, description="plot", **small
        )
        self.result = w.HTML()
        self.result.add_class("agentperf-frontier-result")
        self.image = w.Image(format="png")
        self.widget = w.VBox(
            [
                w.HBox(
                    [w.VBox([self.speed_floor, self.ttft_ceiling]), w.VBox([self.speed_pct, self.ttft_pct])]
                ),
                self.value,
                self.result,
                self.image,
            ]
        )
        self._draw_enabled = draw
        self.figure: Any = None
        self.rows = pd.DataFrame()
        self.agents_per_accelerator: dict[str, float | None] = {}
        self.agents_per_mw: dict[str, float | None] = {}
        for control in (self.speed_floor, self.ttft_ceiling, self.speed_pct, self.ttft_pct, self.value):
            control.observe(self._on_change, names="value")
        self.update()

    def _on_change(self, change: dict[str, Any]) -> None:
        self.update()

    def update(self, *, draw: bool | None = None) -> pd.DataFrame:
        """Look up the current point in the table (one row per system) and redraw; returns the rows."""
        f = self.frontier
        at = f[
            (f["min_output_speed_tps"] == float(self.speed_floor.value))
            & (f["max_ttft_s"] == float(self.ttft_ceiling.value))
            & (f["speed_percentile"] == float(self.speed_pct.value))
            & (f["ttft_percentile"] == float(self.ttft_pct.value))
        ]
        self.rows = at.drop_duplicates("system").reset_index(drop=True)
        self.agents_per_accelerator = {
            r["system"]: _opt(r.get("agents_per_accelerator")) for _, r in self.rows.iterrows()
        }
        self.agents_per_mw = {r["system"]: _opt(r.get("agents_per_mw")) for _, r in self.rows.iterrows()}
        self.result.value = self._result_html()
        if self._draw_enabled if draw is None else draw:
            self._redraw()
        return self.rows

    def _result_html(self) -> str:
        head = (
            f"P{float(self.speed_pct.value):g} speed >= {float(self.speed_floor.value):g} tok/s & "
            f"P{float(self.ttft_pct.value):g} TTFT <= {float(self.ttft_ceiling.value):g} s"
        )
        if self.rows.empty:
            return f"<b>{html.escape(head)}</b>: no frontier rows at this point"
        shown = self.rows[[c for c in _FRONTIER_SHOWN if c in self.rows]].copy()
        if "max_agents_is_lower_bound" in self.rows:
            shown["max_agents"] = [
                f">= {int(n)}" if bool(lb) else f"{int(n)}"
                for n, lb in zip(self.rows["max_agents"], self.rows["max_agents_is_lower_bound"])
            ]
        shown = shown.rename(columns=_FRONTIER_SHOWN)
        notes = html.escape(
            "'>= N': the highest level measured still passes (a lower bound); "
            "the boundary lies below the lowest failing N"
        )
        return f"<b>{html.escape(head)}</b>{_html_table(shown)}<span style='font-size:0.85em'>{notes}</span>"

    def _redraw(self) -> None:
        from matplotlib.figure import Figure

        from .frontier import plot_frontier_tradeoff

        if self.figure is None:
            self.figure = Figure(figsize=(8, 4.2))
        fig = self.figure
        fig.clear()
        ax = fig.subplots()
        plot_frontier_tradeoff(
            self.frontier,
            ttft_ceiling=float(self.ttft_ceiling.value),
            value=self.value.value,
            speed_percentile=float(self.speed_pct.value),
            ttft_percentile=float(self.ttft_pct.value),
            ax=ax,
        )
        line = ax.axvline(float(self.speed_floor.value), color="0.3", ls="--", lw=1, label="chosen floor")
        line.set_gid("speed_floor")
        ax.legend(fontsize=8)
        fig.tight_layout()
        self.image.value = self._png(fig)


def _opt(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f
