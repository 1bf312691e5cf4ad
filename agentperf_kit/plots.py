"""Seaborn plots of sweep results: tidy data in, column names as arguments, the Axes or Figure out.

Needs the notebook extra: ``pip install 'agentperf-kit[notebooks]'``. Works headless (Agg).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .metrics import METRICS
from .slo import TierPreset

__all__ = ["plot_level_metric", "plot_levels"]


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
    sns.lineplot(data=data, x=x, y=y, marker="o", ax=ax, label=y)
    lo, hi = f"{y}_ci_low", f"{y}_ci_high"
    if lo in data and hi in data:
        ax.fill_between(data[x], data[lo].clip(upper=1e9), data[hi].clip(upper=1e9), alpha=0.2)
    metric = METRICS.get("ttft_s" if "ttft" in y else "output_speed_tps")
    if tiers is not None:
        for t in tiers.tiers:
            limit = t.max_ttft_s if "ttft" in y else t.min_output_speed_tps
            ax.axhline(limit, ls="--", lw=1, color="grey")
            ax.annotate(t.name, (data[x].max(), limit), fontsize=8, va="bottom", ha="right")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent agents (N)")
    ax.set_ylabel(f"{y} [{metric.unit}]" if metric else y)
    return ax


def plot_levels(levels: pd.DataFrame, tiers: TierPreset | None = None) -> Any:
    """Figure with P25 output speed and P95 TTFT against N (two panels). Returns the Figure."""
    _sns()
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    plot_level_metric(levels, "p25_output_speed_tps", tiers=tiers, ax=a)
    plot_level_metric(levels, "p95_ttft_s", tiers=tiers, ax=b)
    b.set_yscale("log")
    fig.tight_layout()
    return fig
