"""The SLO frontier: max agents per accelerator (and per MW) over a grid of speed floors x TTFT ceilings.

From one sweep's measured levels (``requests.parquet``, the last extension of each N, as the sweep used),
every grid point is a :class:`~agentperf_kit.slo.Tier` judged exactly as the sweep judges its own tiers:

1. each level's tier verdict is :func:`agentperf_kit.slo.evaluate_level` at the sweep's confidence; where
   that is ``inconclusive`` the point verdict (``confidence=None``) is used, as the sweep does once its
   extensions are spent (``n_point_verdicts`` counts the levels where that happened);
2. the max agents is :func:`agentperf_kit.slo.max_agents` of those verdicts (highest passing N below the
   lowest failing N; a lower bound when nothing fails).

So at the sweep's own tier points the frontier gives the sweep's tiers exactly
(``tests/test_frontier.py``). Elsewhere the answer is limited to the N the sweep measured: the true
boundary lies in [``max_agents``, ``lowest_failing_agents``). Stricter never allows more agents: a higher
speed floor, a lower TTFT ceiling, a lower speed percentile or a higher TTFT percentile can only turn
verdicts from pass towards fail, and ``max_agents`` only falls when verdicts do.

Agents per accelerator = max agents / the sweep's accelerators; agents per MW uses the power of the level
at max agents (or the user's declared/provisioned power), as the sweep's tier table does. The task
figures of that level (:mod:`agentperf_kit.tasks`: tasks per hour per accelerator and per MW, P50
slowdown) come with each point.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .normalize import agents_per_accelerator, agents_per_mw
from .slo import Tier, evaluate_level, max_agents

__all__ = [
    "DEFAULT_SPEEDS",
    "DEFAULT_TTFTS",
    "frontier_from_levels",
    "plot_frontier_heatmaps",
    "plot_frontier_tradeoff",
    "sweep_frontier",
]

DEFAULT_SPEEDS = (10.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 180.0, 240.0, 300.0)
DEFAULT_TTFTS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)


def grid_tiers(
    speeds: Sequence[float],
    ttfts: Sequence[float],
    speed_percentiles: Sequence[float] = (25.0,),
    ttft_percentiles: Sequence[float] = (95.0,),
) -> list[Tier]:
    """One :class:`Tier` per grid point (names ``g0``, ``g1``, ...)."""
    tiers: list[Tier] = []
    for sp in speed_percentiles:
        for tp in ttft_percentiles:
            for s in speeds:
                for t in ttfts:
                    i = len(tiers)
                    tiers.append(
                        Tier(f"g{i}", f"{s:g} tok/s & {t:g} s", float(s), float(t), float(sp), float(tp))
                    )
    return tiers


def level_verdicts_resolved(
    df: pd.DataFrame, tiers: Sequence[Tier], confidence: float | None
) -> pd.DataFrame:
    """Per tier: (``verdict``, ``binding``, ``point``) of one level, as the sweep settles them: the verdict
    at ``confidence``, the point verdict where that is inconclusive (``point`` True)."""
    ev = evaluate_level(df, tuple(tiers), confidence=confidence)
    first = ev.drop_duplicates("tier").set_index("tier")
    out = pd.DataFrame({"verdict": first["tier_verdict"], "binding": first["binding"], "point": False})
    unsure = out.index[out["verdict"] == "inconclusive"]
    if len(unsure) and confidence is not None:
        by_name = {t.name: t for t in tiers}
        pev = evaluate_level(df, [by_name[n] for n in unsure], confidence=None)
        pv = pev.drop_duplicates("tier").set_index("tier")["tier_verdict"]
        out.loc[unsure, "verdict"] = pv.loc[unsure].to_numpy()
        out.loc[unsure, "point"] = True
    return out


def frontier_from_levels(
    level_requests: Iterable[tuple[int, pd.DataFrame]],
    tiers: Sequence[Tier],
    *,
    confidence: float | None = 0.95,
    accelerators: int | None = None,
    level_power: dict[int, tuple[float | None, str | None]] | None = None,
    user_power: tuple[float | None, str | None] = (None, None),
) -> pd.DataFrame:
    """The frontier table from (N, that level's request table) pairs: one row per tier of ``tiers``.

    ``level_power``: N -> (W, scope) of that level; ``user_power``: the sweep's declared/provisioned power
    (wins over a level's unless the level's was measured). Columns: the :func:`slo.max_agents` columns
    plus ``n_point_verdicts``, ``agents_per_accelerator``, ``power_w``, ``power_scope``, ``agents_per_mw``.
    """
    rows = []
    npoint = {t.name: 0 for t in tiers}
    for n, df in level_requests:
        r = level_verdicts_resolved(df, tiers, confidence)
        row: dict[str, Any] = {"concurrency": int(n)}
        for t in tiers:
            row[f"verdict_{t.name}"] = r.at[t.name, "verdict"]
            row[f"binding_{t.name}"] = r.at[t.name, "binding"]
            npoint[t.name] += bool(r.at[t.name, "point"])
        rows.append(row)
    levels = pd.DataFrame(rows)
    tab = max_agents(levels, tuple(tiers))
    tab["n_point_verdicts"] = [npoint[t.name] for t in tiers]
    level_power = level_power or {}
    pw, scopes, per_acc, per_mw = [], [], [], []
    for n in tab["max_agents"].astype(int):
        w, scope = level_power.get(int(n), (None, None))
        if user_power[0] and scope != "measured":
            w, scope = user_power
        pw.append(w)
        scopes.append(scope if w else None)
        per_acc.append(agents_per_accelerator(n, accelerators))
        per_mw.append(agents_per_mw(n, w) if n > 0 else (0.0 if w else None))
    tab["agents_per_accelerator"] = per_acc
    tab["power_w"] = pw
    tab["power_scope"] = scopes
    tab["agents_per_mw"] = per_mw
    return tab


def sweep_frontier(
    directory: str | Path,
    *,
    speeds: Sequence[float] | None = None,
    ttfts: Sequence[float] | None = None,
    speed_percentiles: Sequence[float] = (25.0,),
    ttft_percentiles: Sequence[float] = (95.0,),
    include_tiers: bool = True,
    system: str | None = None,
) -> pd.DataFrame:
    """The tidy frontier of one sweep directory: one row per (speed floor, TTFT ceiling, percentiles).

    Defaults: ``DEFAULT_SPEEDS`` x ``DEFAULT_TTFTS``; with ``include_tiers`` the sweep's own tier floors
    and ceilings are added to the grid (so its tier points are always in it: ``sweep_tier`` names them).
    Judged at the sweep's confidence. ``system`` labels the rows (default: the target and, for a what-if
    run, its knobs). Memory: one level's requests at a time.
    """
    d = Path(directory)
    summary = json.loads((d / "summary.json").read_text())
    levels = pd.read_csv(d / "levels.csv")
    cfg = summary.get("config", {})
    speeds = list(DEFAULT_SPEEDS if speeds is None else speeds)
    ttfts = list(DEFAULT_TTFTS if ttfts is None else ttfts)
    sweep_tiers = summary.get("tiers", [])
    if include_tiers:
        speeds = sorted(set(speeds) | {float(t["min_output_speed_tps"]) for t in sweep_tiers})
        ttfts = sorted(set(ttfts) | {float(t["max_ttft_s"]) for t in sweep_tiers})
    for name, vals in (("speeds", speeds), ("ttfts", ttfts)):
        if not vals:
            raise ValueError(f"{name}: need at least one value")
    tiers = grid_tiers(speeds, ttfts, speed_percentiles, ttft_percentiles)
    from .sweep_requests import iter_sweep_requests

    level_requests = ((int(lv["concurrency"]), df) for lv, df in iter_sweep_requests(d, levels=levels))
    power = {
        int(lv["concurrency"]): (
            _num(lv.get("power_w")),
            lv.get("power_scope") if _num(lv.get("power_w")) else None,
        )
        for _, lv in levels.iterrows()
    }
    confidence = cfg.get("confidence", 0.95)
    tab = frontier_from_levels(
        level_requests,
        tiers,
        confidence=confidence,
        accelerators=summary.get("accelerators"),
        level_power=power,
        user_power=(summary.get("power_w"), summary.get("power_scope")),
    )
    tab = tab.rename(columns={"name": "grid_point"})
    tab["sweep_tier"] = [
        next(
            (
                t["name"]
                for t in sweep_tiers
                if float(t["min_output_speed_tps"]) == r.min_output_speed_tps
                and float(t["max_ttft_s"]) == r.max_ttft_s
                and float(t.get("speed_percentile", 25)) == r.speed_percentile
                and float(t.get("ttft_percentile", 95)) == r.ttft_percentile
            ),
            None,
        )
        for r in tab.itertuples()
    ]
    what_if = cfg.get("what_if")
    from .targets import parse_target

    # the canonical spec (``sim`` names the default deployment: ``sim:h200x8-dsv4pro``)
    swept = parse_target(str(summary["target"]), model=summary.get("model") or "unknown")
    target = getattr(swept, "spec", str(summary["target"]))
    tab.insert(0, "system", system or (target + (f" [{what_if}]" if what_if else "")))
    tab.insert(1, "directory", str(d))
    from .tasks import load_sweep_tasks

    tasks = load_sweep_tasks(d).set_index("concurrency")
    for col in ("tasks_per_hour_per_accelerator", "tasks_per_hour_per_mw", "p50_slowdown"):
        tab[col] = [
            float(tasks.at[n, col]) if n > 0 and n in tasks.index and pd.notna(tasks.at[n, col]) else None
            for n in tab["max_agents"].astype(int)
        ]
    tab["accelerators"] = summary.get("accelerators")
    tab["accelerator_type"] = summary.get("accelerator_type")
    tab["confidence"] = confidence
    tab["what_if"] = what_if
    return tab.drop(columns=["label", "non_monotonic_levels"])


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# -- figures ----------------------------------------------------------------------------------------------


def plot_frontier_heatmaps(
    frontier: pd.DataFrame,
    *,
    value: str = "agents_per_accelerator",
    speed_percentile: float = 25.0,
    ttft_percentile: float = 95.0,
) -> Any:
    """A heatmap per system: ``value`` (default agents per accelerator) over speed floor (rows, tokens/s)
    x TTFT ceiling (columns, s), at the given percentiles. Returns the Figure."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg" and not _display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    f = frontier[
        (frontier["speed_percentile"] == speed_percentile) & (frontier["ttft_percentile"] == ttft_percentile)
    ]
    if f.empty:
        raise ValueError(
            f"frontier: no rows at speed_percentile={speed_percentile}, ttft_percentile={ttft_percentile}; "
            f"it has {sorted(set(zip(frontier['speed_percentile'], frontier['ttft_percentile'])))}"
        )
    systems = list(dict.fromkeys(f["system"]))
    fig, axes = plt.subplots(1, len(systems), figsize=(4.8 * len(systems) + 1, 4.6), squeeze=False)
    label = _VALUE_LABELS.get(value, value)
    vmax = float(pd.to_numeric(f[value], errors="coerce").max())  # one colour scale for all systems
    vmax = vmax if vmax > 0 else 1.0
    for ax, sysname in zip(axes[0], systems):
        g = (
            f[f["system"] == sysname]
            .pivot_table(index="min_output_speed_tps", columns="max_ttft_s", values=value, aggfunc="first")
            .sort_index(ascending=False)
        )
        sns.heatmap(
            g,
            ax=ax,
            annot=True,
            fmt=".3g",
            cmap="viridis",
            vmin=0.0,
            vmax=vmax,
            cbar_kws={"label": label},
            annot_kws={"fontsize": 7},
        )
        ax.set_title(sysname, fontsize=9)
        ax.set_xlabel(f"P{ttft_percentile:g} TTFT ceiling [s]")
        ax.set_ylabel(f"P{speed_percentile:g} output speed floor [tokens/s]")
        ax.set_yticklabels([f"{v:g}" for v in g.index], rotation=0)
        ax.set_xticklabels([f"{v:g}" for v in g.columns])
    fig.suptitle(f"SLO frontier: {label}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_frontier_tradeoff(
    frontier: pd.DataFrame,
    *,
    ttft_ceiling: float,
    value: str = "agents_per_accelerator",
    speed_percentile: float = 25.0,
    ttft_percentile: float = 95.0,
    ax: Any = None,
) -> Any:
    """The trade-off curve: ``value`` against the speed floor at a fixed TTFT ceiling, one line per system
    (InferenceX-style: interactivity on x, capacity on y; open triangles mark lower bounds, points where
    the highest N measured still passed). Returns the Axes."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg" and not _display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = frontier[
        (frontier["max_ttft_s"] == ttft_ceiling)
        & (frontier["speed_percentile"] == speed_percentile)
        & (frontier["ttft_percentile"] == ttft_percentile)
    ]
    if f.empty:
        raise ValueError(
            f"ttft_ceiling={ttft_ceiling}: not in the frontier's TTFT ceilings "
            f"{sorted(set(frontier['max_ttft_s']))}; pick one of them"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    for sysname, g in f.groupby("system", sort=False):
        g = g.sort_values("min_output_speed_tps")
        ax.plot(g["min_output_speed_tps"], g[value], marker="o", label=sysname)
        lb = g[g["max_agents_is_lower_bound"].astype(bool)]
        if len(lb):
            ax.scatter(
                lb["min_output_speed_tps"],
                lb[value],
                marker="^",
                s=60,
                facecolors="none",
                edgecolors="k",
                zorder=3,
            )
    ax.set_xlabel(f"P{speed_percentile:g} output speed floor [tokens/s] (interactivity)")
    ax.set_ylabel(_VALUE_LABELS.get(value, value))
    ax.set_title(f"Trade-off at P{ttft_percentile:g} TTFT <= {ttft_ceiling:g} s", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


_VALUE_LABELS = {
    "agents_per_accelerator": "max agents per accelerator [agents]",
    "agents_per_mw": "max agents per MW [agents/MW]",
    "max_agents": "max agents [agents]",
}


def _display() -> bool:
    import os
    import sys

    return bool(os.environ.get("DISPLAY")) or "ipykernel" in sys.modules
