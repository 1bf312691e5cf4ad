"""Seaborn plots of sweep results: tidy data in, column names as arguments, the Axes or Figure out.

Axes-level functions (``plot_level_metric``, ``plot_ecdf``, ``plot_ttft_vs_context``, ``plot_agent_swimlane``,
``plot_per_accelerator_bars``) draw on ``ax`` (default: the current Axes) and return it; figure-level ones
(``plot_levels``, ``plot_ecdfs``) return their Figure. Request-level plots read the columns of
``requests.parquet`` (``docs/schema.md``) and use the steady-window requests (``in_window``) by default.
Needs the notebook extra: ``pip install 'agentperf-kit[notebooks]'``. Works headless (Agg).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .metrics import METRICS
from .percentiles import percentile_sorted
from .schema import REQUEST_COLUMNS
from .slo import Tier, TierPreset

__all__ = [
    "cached_share_bucket",
    "level_stat_label",
    "plot_agent_swimlane",
    "plot_ecdf",
    "plot_ecdfs",
    "plot_level_metric",
    "plot_levels",
    "plot_per_accelerator_bars",
    "plot_ttft_vs_context",
    "report_figures",
]


def _sns():
    try:
        import matplotlib

        if matplotlib.get_backend().lower() not in ("agg",) and not _has_display():
            matplotlib.use("Agg")
        import seaborn as sns
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need seaborn: pip install 'agentperf-kit[notebooks]'") from exc
    return sns


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY")) or "ipykernel" in __import__("sys").modules


def plot_level_metric(
    levels: pd.DataFrame,
    y: str,
    *,
    tiers: TierPreset | None = None,
    x: str = "concurrency",
    ax: Any = None,
) -> Any:
    """Draw one per-level statistic (e.g. ``p25_output_speed_tps``) against ``x`` with its confidence band
    (columns ``<y>_ci_low``/``<y>_ci_high`` when present) and each tier's limit as a horizontal line.
    Returns the Axes."""
    sns = _sns()
    import matplotlib.pyplot as plt

    if y not in levels:
        raise KeyError(f"column {y!r} not in the levels table; columns: {', '.join(levels.columns)}")
    ax = ax or plt.gca()
    data = levels.sort_values(x)
    label = level_stat_label(y)
    sns.lineplot(data=data, x=x, y=y, marker="o", ax=ax, label=label.split(" [")[0])
    lo, hi = f"{y}_ci_low", f"{y}_ci_high"
    if lo in data and hi in data:
        ax.fill_between(data[x], data[lo].clip(upper=1e9), data[hi].clip(upper=1e9), alpha=0.2)
    q, metric = _split_level_stat(y)
    if tiers is not None and metric is not None:
        for t in tiers.tiers:
            # the tier's limit on this statistic: its speed floor or TTFT ceiling, drawn only when the
            # column is that metric at the tier's own percentile (a P25 panel has no line for a P10 tier)
            limit_q = _tier_limit(t, metric.name)
            if limit_q is None or (q is not None and float(q) != limit_q[1]):
                continue
            limit = limit_q[0]
            ax.axhline(limit, ls="--", lw=1, color="grey")
            ax.annotate(t.name, (data[x].max(), limit), fontsize=8, va="bottom", ha="right")
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("concurrent agents (N)" if x == "concurrency" else x)
    ax.set_ylabel(label)
    return ax


def _tier_limit(tier: Tier, metric: str) -> tuple[float, float] | None:
    """(threshold, percentile) a tier sets on a per-request metric, or None when it sets none."""
    if metric == "output_speed_tps":
        return tier.min_output_speed_tps, tier.speed_percentile
    if metric == "ttft_s":
        return tier.max_ttft_s, tier.ttft_percentile
    return None


def _split_level_stat(column: str) -> tuple[str | None, Any]:
    """``p25_output_speed_tps`` -> (``"25"``, the ``output_speed_tps`` metric); a bare metric column ->
    (None, its metric); anything else -> (None, None)."""
    head, _, rest = column.partition("_")
    if head[:1] == "p" and head[1:].replace(".", "", 1).isdigit() and rest in METRICS:
        return head[1:], METRICS[rest]
    return None, METRICS.get(column)


def _level_stat_metric(column: str) -> Any:
    """The per-request metric behind a per-level statistic column, or None."""
    return _split_level_stat(column)[1]


def level_stat_label(column: str) -> str:
    """Human axis label with unit for a per-level column: ``p25_output_speed_tps`` -> ``P25 output speed
    [tokens/s]``; columns the metric registry does not know are returned unchanged."""
    q, metric = _split_level_stat(column)
    if metric is None:
        return column
    if q is None:
        return f"{metric.label} [{metric.unit}]"
    return f"P{q} {metric.label[0].lower()}{metric.label[1:]} [{metric.unit}]"


def plot_levels(levels: pd.DataFrame, tiers: TierPreset | None = None) -> Any:
    """Figure with P25 output speed and P95 TTFT against N (two panels). Returns the Figure."""
    _sns()
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    plot_level_metric(levels, "p25_output_speed_tps", tiers=tiers, ax=a)
    plot_level_metric(levels, "p95_ttft_s", tiers=tiers, ax=b)
    b.set_yscale("log")
    _plain_log_ticks(b.yaxis)
    fig.tight_layout()
    return fig


# --- request-level plots ----------------------------------------------------------------------------------

_BY_LABEL = {"concurrency": "N"}
_VALUE_LABELS = {
    "agents_per_accelerator": "agents per accelerator",
    "agents_per_gpu": "agents per GPU",
    "agents_per_mw": "agents per MW",
    "max_agents": "max concurrent agents",
}


def _tier_tuple(tiers: TierPreset | Tier | Sequence[Tier] | None) -> tuple[Tier, ...]:
    if tiers is None:
        return ()
    if isinstance(tiers, TierPreset):
        return tiers.tiers
    if isinstance(tiers, Tier):
        return (tiers,)
    return tuple(tiers)


def _need_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(
            f"{what}: column(s) {', '.join(map(repr, missing))} not in the table; columns: "
            f"{', '.join(map(str, df.columns))}"
        )


def _window_rows(requests: pd.DataFrame, in_window_only: bool) -> pd.DataFrame:
    if in_window_only and "in_window" in requests:
        return requests[requests["in_window"].to_numpy(dtype=bool)]
    return requests


def _sorted_groups(
    requests: pd.DataFrame, metric: str, by: str = "concurrency", *, in_window_only: bool = True
) -> dict[Any, np.ndarray]:
    """Per value of ``by``: the sorted NaN-free samples of ``metric`` over the steady-window requests
    (+inf kept, last), as :func:`agentperf_kit.percentiles.percentile_sorted` expects. One sort for all."""
    _need_columns(requests, [metric, by], "requests")
    w = _window_rows(requests, in_window_only)
    keys = w[by].to_numpy()
    vals = w[metric].to_numpy(dtype=float)
    keep = ~np.isnan(vals)
    keys, vals = keys[keep], vals[keep]
    all_keys = pd.unique(w[by].to_numpy()).tolist()
    if len(vals) == 0:
        return {k: np.empty(0) for k in sorted(all_keys)}
    order = np.lexsort((vals, keys))
    keys, vals = keys[order], vals[order]
    uniq, starts = np.unique(keys, return_index=True)
    parts = dict(zip(uniq.tolist(), np.split(vals, starts[1:]), strict=True))
    return {k: parts.get(k, np.empty(0)) for k in sorted(all_keys)}


def _ecdf_points(s: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the ECDF of a sorted sample, thinned to at most ``max_points`` steps; y counts every
    sample (an infinite value, a failed request, keeps the curve below 1)."""
    n = len(s)
    if n == 0:
        return np.empty(0), np.empty(0)
    idx = (
        np.arange(n) if n <= max_points else np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    )
    x, y = s[idx], (idx + 1) / n
    finite = np.isfinite(x)
    return x[finite], y[finite]


def _draw_ecdf(
    ax: Any,
    samples: Mapping[Any, np.ndarray],
    metric: str,
    *,
    tiers: Sequence[Tier] = (),
    percentile: float | None = None,
    by: str = "concurrency",
    log_scale: bool | None = None,
    max_points: int = 2000,
) -> Any:
    """Draw ECDFs of already sorted samples (see :func:`plot_ecdf`); shared with the widgets."""
    sns = _sns()
    is_ttft = metric in ("ttft_s", "ttfo_s", "e2e_s")
    m = METRICS.get(metric)
    palette = sns.color_palette("viridis", max(len(samples), 1))
    if percentile is not None:
        pcts = [float(percentile)]
    elif tiers:
        pcts = sorted({t.ttft_percentile if is_ttft else t.speed_percentile for t in tiers})
    else:
        pcts = [95.0 if is_ttft else 25.0]
    handles = []
    for color, (key, s) in zip(palette, samples.items(), strict=False):
        x, y = _ecdf_points(np.asarray(s, dtype=float), max_points)
        (line,) = ax.step(x, y, where="post", color=color, lw=1.4, label=f"{_BY_LABEL.get(by, by)}={key}")
        line.set_gid("ecdf")
        handles.append(line)
        for q in pcts:  # each level's observed percentile, where its ECDF crosses the line
            obs = percentile_sorted(np.asarray(s, dtype=float), q) if len(s) else math.nan
            if math.isfinite(obs):
                (pt,) = ax.plot([obs], [q / 100], "o", color=color, ms=4, label="_observed")
                pt.set_gid(f"observed:{key}:{q:g}")
    for q in pcts:
        hl = ax.axhline(q / 100, color="0.35", ls=":", lw=1, label=f"_P{q:g}")
        hl.set_gid(f"percentile:{q:g}")
        ax.annotate(f"P{q:g}", (0.005, q / 100), xycoords=("axes fraction", "data"), fontsize=8, va="bottom")
    for tier in tiers:
        limit = tier.max_ttft_s if is_ttft else tier.min_output_speed_tps
        text = f"{tier.name}: {'≤' if is_ttft else '≥'} {limit:g} {'s' if is_ttft else 'tok/s'}"
        vl = ax.axvline(limit, color="firebrick", ls="--", lw=1, label=f"_{text}")
        vl.set_gid(f"tier:{tier.name}")
        ax.annotate(
            text,
            (limit, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            ha="right",
            va="top",
            color="firebrick",
        )
    if log_scale if log_scale is not None else is_ttft:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{m.label if m else metric} [{m.unit if m else ''}]")
    ax.set_ylabel("share of requests (ECDF)")
    if handles:
        ax.legend(
            handles=handles, title=None, fontsize=8, loc="lower right" if not is_ttft else "center right"
        )
    return ax


def plot_ecdf(
    requests: pd.DataFrame,
    metric: str = "ttft_s",
    *,
    by: str = "concurrency",
    tiers: TierPreset | Tier | Sequence[Tier] | None = None,
    percentile: float | None = None,
    levels: Sequence[Any] | None = None,
    in_window_only: bool = True,
    log_scale: bool | None = None,
    max_points: int = 2000,
    ax: Any = None,
) -> Any:
    """ECDF of a per-request metric (``ttft_s`` or ``output_speed_tps``) per level of ``by``, over the
    steady-window requests, with each tier's limit as a labelled vertical line (TTFT ceiling or speed
    floor) and a horizontal line at the percentile that decides (P25 for speed, P95 for TTFT, or the
    tiers' own). A level passes the speed floor when its curve crosses the P25 line right of the floor,
    and the TTFT ceiling when it crosses the P95 line left of it. Failed requests count: a TTFT of +inf
    keeps the curve below 1, a failed speed of 0 starts it at 0; requests without a speed are left out.
    ``levels`` picks values of ``by``; curves are thinned to ``max_points`` steps. Returns the Axes."""
    _sns()
    import matplotlib.pyplot as plt

    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected a per-request metric, one of {', '.join(METRICS)}")
    samples = _sorted_groups(requests, metric, by, in_window_only=in_window_only)
    if levels is not None:
        unknown = [lv for lv in levels if lv not in samples]
        if unknown:
            raise ValueError(f"levels={unknown!r} not in column {by!r}; present: {list(samples)}")
        samples = {k: samples[k] for k in levels}
    ax = ax or plt.gca()
    return _draw_ecdf(
        ax,
        samples,
        metric,
        tiers=_tier_tuple(tiers),
        percentile=percentile,
        by=by,
        log_scale=log_scale,
        max_points=max_points,
    )


def plot_ecdfs(
    requests: pd.DataFrame,
    tiers: TierPreset | Tier | Sequence[Tier] | None = None,
    *,
    by: str = "concurrency",
    levels: Sequence[Any] | None = None,
) -> Any:
    """Figure with the ECDFs of output speed and TTFT per level side by side. Returns the Figure."""
    _sns()
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    plot_ecdf(requests, "output_speed_tps", by=by, tiers=tiers, levels=levels, ax=a)
    plot_ecdf(requests, "ttft_s", by=by, tiers=tiers, levels=levels, ax=b)
    fig.tight_layout()
    return fig


CACHED_SHARE_BINS = (0.0, 0.5, 0.8, 0.95)


def cached_share_bucket(requests: pd.DataFrame, bins: Sequence[float] = CACHED_SHARE_BINS) -> pd.Series:
    """Bucket of each request's prefix-cache hit share (cached_prompt_tokens / prompt_tokens) as an
    ordered categorical, e.g. ``"50-80%"``; ``"unknown"`` where the server did not report it."""
    _need_columns(requests, ["prompt_tokens", "cached_prompt_tokens"], "requests")
    prompt = pd.to_numeric(requests["prompt_tokens"], errors="coerce").astype(float)
    cached = pd.to_numeric(requests["cached_prompt_tokens"], errors="coerce").astype(float)
    share = (cached / prompt.where(prompt > 0)).to_numpy(dtype=float)
    edges = [*bins, math.inf]
    labels = [f"{lo * 100:g}-{hi * 100:g}%" for lo, hi in itertools.pairwise(bins)]
    labels.append(f"≥{edges[-2] * 100:g}%")
    cut = pd.cut(share, edges, right=False, labels=labels)
    out = pd.Series(cut, index=requests.index, name="cached share").cat.add_categories(["unknown"])
    return out.fillna("unknown")


def plot_ttft_vs_context(
    requests: pd.DataFrame,
    *,
    x: str = "prompt_tokens",
    y: str = "ttft_s",
    hue: str | None = None,
    bins: Sequence[float] = CACHED_SHARE_BINS,
    levels: Sequence[Any] | None = None,
    by: str = "concurrency",
    in_window_only: bool = True,
    max_points: int = 20000,
    seed: int = 0,
    ax: Any = None,
) -> Any:
    """TTFT against prompt length, coloured by the share of the prompt served from the prefix cache
    (``hue=None``: buckets from ``bins``, see :func:`cached_share_bucket`; or any column name). Long
    prompts with a cold cache (the first turn of a phase) are where TTFT grows. Requests without a
    finite TTFT (failed) cannot be placed and are counted in the title; at most ``max_points`` requests
    are drawn (a seeded sample). Returns the Axes."""
    sns = _sns()
    import matplotlib.pyplot as plt

    _need_columns(requests, [x, y], "requests")
    w = _window_rows(requests, in_window_only)
    if levels is not None:
        w = w[w[by].isin(list(levels))]
    hue_col = hue or "cached share"
    data = pd.DataFrame({x: pd.to_numeric(w[x], errors="coerce").astype(float), y: w[y].astype(float)})
    if hue is None:
        data[hue_col] = cached_share_bucket(w, bins)
        data[hue_col] = data[hue_col].cat.remove_unused_categories()
    else:
        _need_columns(w, [hue], "requests")
        data[hue_col] = w[hue].to_numpy()
    finite = np.isfinite(data[y].to_numpy(dtype=float)) & np.isfinite(data[x].to_numpy(dtype=float))
    n_out = int((~finite).sum())
    data = data[finite]
    if len(data) > max_points:
        data = data.sample(max_points, random_state=seed)
    ax = ax or plt.gca()
    palette = "rocket_r" if hue is None else "viridis"
    sns.scatterplot(data=data, x=x, y=y, hue=hue_col, palette=palette, s=10, alpha=0.6, linewidth=0, ax=ax)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    x_unit, y_metric = _schema_unit(x), METRICS.get(y)
    ax.set_xlabel(f"{x} [{x_unit}]" if x_unit else x)
    ax.set_ylabel(f"{y_metric.label} [{y_metric.unit}]" if y_metric else y)
    title = f"{len(data):,} requests"
    if n_out:
        title += f"; {n_out:,} without a finite {y} (failed) not shown"
    ax.set_title(title, fontsize=9)
    return ax


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain numbers (0.05, 1, 10) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(subs=(2, 5)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _schema_unit(col: str) -> str:
    c = REQUEST_COLUMNS.get(col)
    return c.unit if c is not None else ""


def plot_agent_swimlane(
    requests: pd.DataFrame,
    agent: int,
    *,
    concurrency: int | None = None,
    t_range: tuple[float, float] | None = None,
    max_requests: int = 300,
    ax: Any = None,
) -> Any:
    """One agent's timeline, one lane per phase (labelled trajectory and phase): each request a bar from
    sent to end, the wait for the first token (TTFT) shaded apart from decoding, failed requests red, tool
    waits as thin grey bars between a response and the next request, and the steady window shaded.
    ``concurrency`` picks the level when the table holds several; ``t_range`` (s) or ``max_requests``
    (the first ones) keep long runs readable. Returns the Axes."""
    sns = _sns()
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    _need_columns(requests, ["agent", "t_send_s", "t_first_s", "t_end_s", "phase_id", "ok"], "requests")
    rows = requests[requests["agent"] == agent]
    if "concurrency" in rows and rows["concurrency"].nunique() > 1:
        levels = sorted(rows["concurrency"].unique().tolist())
        if concurrency is None:
            raise ValueError(f"the table holds several levels; pass concurrency=, one of {levels}")
        rows = rows[rows["concurrency"] == concurrency]
    if rows.empty:
        agents = sorted(requests["agent"].unique().tolist())
        raise ValueError(
            f"agent={agent!r} has no requests here; agents: {agents[:20]}{'...' * (len(agents) > 20)}"
        )
    rows = rows.sort_values("t_send_s")
    if t_range is not None:
        rows = rows[(rows["t_end_s"] >= t_range[0]) & (rows["t_send_s"] <= t_range[1])]
    rows = rows.iloc[:max_requests]
    ax = ax or plt.gca()
    pal = sns.color_palette("deep")
    c_ttft, c_decode, c_tool, c_fail = pal[1], pal[0], "0.6", pal[3]
    lane_keys = pd.unique(rows["phase_id"].to_numpy())
    lane_of = {k: i for i, k in enumerate(lane_keys)}
    y = rows["phase_id"].map(lane_of).to_numpy(dtype=float)
    send = rows["t_send_s"].to_numpy(dtype=float)
    first = rows["t_first_s"].to_numpy(dtype=float)
    end = rows["t_end_s"].to_numpy(dtype=float)
    ok = rows["ok"].to_numpy(dtype=bool) & ~np.isnan(first)
    if "in_window" in rows and rows["in_window"].any():
        win = rows[rows["in_window"].to_numpy(dtype=bool)]
        span = ax.axvspan(win["t_send_s"].min(), win["t_end_s"].max(), color="0.5", alpha=0.08, lw=0)
        span.set_gid("window")
    for part, left, width, color, mask in (
        ("ttft", send, first - send, c_ttft, ok),
        ("decode", first, end - first, c_decode, ok),
        ("failed", send, end - send, c_fail, ~ok),
    ):
        if mask.any():
            bars = ax.barh(y[mask], width[mask], left=left[mask], height=0.6, color=color, lw=0)
            for p in bars.patches:
                p.set_gid(part)
    gap = np.append(send[1:], np.nan) - end
    tool = np.isfinite(gap) & (gap > 0)
    if tool.any():
        # the wait belongs to the turn that ended; drawn in its lane, thin
        bars = ax.barh(y[tool], gap[tool], left=end[tool], height=0.12, color=c_tool, lw=0)
        for p in bars.patches:
            p.set_gid("tool")
    labels = []
    for k in lane_keys:
        r = rows[rows["phase_id"] == k].iloc[0]
        tid = r.get("trajectory_id", "?")
        labels.append(f"{tid} · phase {r.get('phase', '?')}")
    ax.set_yticks(range(len(lane_keys)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since the run's clock origin [s]")
    level = f" at N={int(rows['concurrency'].iloc[0])}" if "concurrency" in rows else ""
    ax.set_title(f"agent {agent}{level}: {len(rows)} requests", fontsize=10)
    ax.legend(
        handles=[
            Patch(color=c_ttft, label="waiting for the first token (TTFT)"),
            Patch(color=c_decode, label="decoding (output speed)"),
            Patch(color=c_tool, label="tool wait"),
            Patch(color=c_fail, label="failed"),
            Patch(color="0.5", alpha=0.15, label="steady window"),
        ],
        fontsize=8,
        loc="upper right",
    )
    return ax


def plot_per_accelerator_bars(
    table: pd.DataFrame,
    value: str = "agents_per_accelerator",
    *,
    system: str = "system",
    hue: str | None = "tier",
    low: str | None = None,
    high: str | None = None,
    log_scale: bool | None = None,
    ax: Any = None,
) -> Any:
    """Bars of ``value`` (agents per accelerator, per MW...) across systems, grouped by ``hue``.

    A row whose ``low``/``high`` columns (default ``<value>_low``/``<value>_high`` when the table has them)
    are set is a prediction with a band (a simulated system over its efficiency sets): it is drawn as a
    hatched range from low to high with its bounds written on it, never as a single value. Other rows are
    solid bars with their value written on top; a row with no value is marked ``n/a``. ``log_scale=None``
    turns a log axis on when the values span more than 30x. Returns the Axes."""
    sns = _sns()
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    low = low or (f"{value}_low" if f"{value}_low" in table else None)
    high = high or (f"{value}_high" if f"{value}_high" in table else None)
    if (low is None) != (high is None):
        raise ValueError(f"a band needs both low= and high= columns, got low={low!r}, high={high!r}")
    _need_columns(table, [c for c in (value, system, hue, low, high) if c is not None], "table")
    if table.empty:
        raise ValueError("table is empty: nothing to draw")
    systems = list(pd.unique(table[system]))
    hues = list(pd.unique(table[hue])) if hue else [None]
    colors = dict(zip(hues, sns.color_palette("deep", len(hues)), strict=True))
    present = {  # hue values each system has: its bars share the system's slot
        sy: [h for h in hues if not hue or ((table[system] == sy) & (table[hue] == h)).any()]
        for sy in systems
    }
    ax = ax or plt.gca()
    drawn = []
    for _, r in table.iterrows():
        h = r[hue] if hue else None
        slot = present[r[system]]
        width = 0.8 / len(slot)
        x = systems.index(r[system]) - 0.4 + width * (slot.index(h) + 0.5)
        lo_v = float(r[low]) if low and pd.notna(r[low]) else math.nan
        hi_v = float(r[high]) if high and pd.notna(r[high]) else math.nan
        v = float(r[value]) if pd.notna(r[value]) else math.nan
        if math.isfinite(lo_v) and math.isfinite(hi_v):
            bar = ax.bar(
                x,
                hi_v - lo_v,
                bottom=lo_v,
                width=width * 0.9,
                color=colors[h],
                alpha=0.35,
                hatch="//",
                edgecolor=colors[h],
                lw=1,
            )[0]
            bar.set_gid("range")
            ax.errorbar(
                [x],
                [(lo_v + hi_v) / 2],
                yerr=[[(hi_v - lo_v) / 2], [(hi_v - lo_v) / 2]],
                fmt="none",
                ecolor=colors[h],
                capsize=4,
                lw=1,
            )
            ax.annotate(f"{_fmt_num(lo_v)}–{_fmt_num(hi_v)}", (x, hi_v), ha="center", va="bottom", fontsize=7)
            drawn += [lo_v, hi_v]
        elif math.isfinite(v):
            bar = ax.bar(x, v, width=width * 0.9, color=colors[h])[0]
            bar.set_gid("value")
            ax.annotate(_fmt_num(v), (x, v), ha="center", va="bottom", fontsize=7)
            drawn.append(v)
        else:
            ax.annotate(
                "n/a", (x, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7
            )
    positive = [d for d in drawn if d > 0]
    if log_scale if log_scale is not None else (len(positive) > 1 and max(positive) / min(positive) > 30):
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_xticks(range(len(systems)), [str(s) for s in systems], rotation=15, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(systems) - 0.4)
    ax.set_ylabel(_VALUE_LABELS.get(value, value))
    handles = [Patch(color=colors[h], label=str(h)) for h in hues if h is not None]
    if low:
        handles.append(
            Patch(facecolor="white", edgecolor="0.3", hatch="//", label="simulated: low–high range")
        )
    if handles:
        ax.legend(handles=handles, fontsize=8, title=hue)
    return ax


def _fmt_num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def report_figures(directory: str | Path) -> list[tuple[str, Any]]:
    """The plots of ``agentperf report DIR`` as (title, Figure): the levels, the ECDFs of speed and TTFT
    per level, and TTFT against prompt length (used by :func:`agentperf_kit.report.write_html_report`)."""
    import matplotlib.pyplot as plt

    from .slo import get_tier_preset
    from .sweep import load_sweep

    res = load_sweep(directory)
    preset = get_tier_preset(res.summary["tier_preset"])
    figs: list[tuple[str, Any]] = [
        ("P25 output speed and P95 TTFT against N", plot_levels(res.levels, preset))
    ]
    if len(res.requests):
        figs.append(("ECDFs of output speed and TTFT per level", plot_ecdfs(res.requests, preset)))
        fig, ax = plt.subplots(figsize=(7, 4))
        plot_ttft_vs_context(res.requests, ax=ax)
        fig.tight_layout()
        figs.append(("TTFT against prompt length, by prefix-cache hit share", fig))
    return figs
