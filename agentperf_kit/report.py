"""Reports from sweep directories: the per-tier table, a side-by-side comparison, a standalone HTML page."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .slo import get_tier_preset
from .sweep import SweepResult, format_summary, load_sweep
from .sweep_result import _max_agents_text

__all__ = ["compare_runs", "write_html_report"]

_LEVEL_COLS = [
    "concurrency",
    "n_requests",
    "error_rate",
    "p25_output_speed_tps",
    "p25_output_speed_tps_ci_low",
    "p25_output_speed_tps_ci_high",
    "p95_ttft_s",
    "p95_ttft_s_ci_low",
    "p95_ttft_s_ci_high",
    "p25_output_speed_tps_deff",
    "p95_ttft_s_deff",
    "speed_unmeasured_share",
    "n_unfinished_at_end",
    "steady",
    "mean_in_flight",
    "prefix_cache_hit_rate",
    "meets_aa_rules",
    "client_ok",
]


def compare_runs(directories: Sequence[str | Path | SweepResult]) -> pd.DataFrame:
    """One tidy row per (sweep, tier): what each sweep found, side by side. Each item is a sweep directory
    or a :class:`~agentperf_kit.sweep.SweepResult`; ``run`` is its directory. ``max_agents_text`` is
    ``max_agents`` with ``>=`` when it is a lower bound (the tier still passed at the highest level)."""
    rows = []
    for item in directories:
        sw = item if isinstance(item, SweepResult) else load_sweep(item)
        d = sw.directory if sw.directory is not None else item
        s = sw.summary
        for t in s["tiers"]:
            rows.append(
                {
                    "run": str(d),
                    "target": sw.target,  # the simulated deployment named ("sim:h200x8-dsv4pro")
                    "model": s.get("model"),
                    "tier_preset": s["tier_preset"],
                    "tier": t["name"],
                    "label": t["label"],
                    "max_agents": t["max_agents"],
                    "max_agents_is_lower_bound": t["max_agents_is_lower_bound"],
                    "max_agents_text": _max_agents_text(t),
                    "binding_constraint": t.get("binding_constraint"),
                    "accelerators": s["accelerators"],
                    "accelerator_type": s.get("accelerator_type"),
                    "agents_per_accelerator": t["agents_per_accelerator"],
                    "power_w": t.get("power_w"),
                    "power_scope": s.get("power_scope"),
                    "agents_per_mw": t["agents_per_mw"],
                    "meets_aa_rules": s["meets_aa_rules"],
                    "client_ok": s["client_ok"],
                }
            )
    return pd.DataFrame(rows)


def _figures(directory: Path, levels: pd.DataFrame, tier_preset: str) -> list[tuple[str, str]]:
    """(title, base64 PNG) of the report's plots: ``plots.report_figures(dir)`` when the plots module has
    it, else the levels plot; none when matplotlib/seaborn are not installed (tables only)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from . import plots
    except ImportError:
        return []
    if hasattr(plots, "report_figures"):
        figs = list(plots.report_figures(directory))
    else:
        figs = [
            (
                "P25 output speed and P95 TTFT against N",
                plots.plot_levels(levels, get_tier_preset(tier_preset)),
            )
        ]
    out = []
    for title, fig in figs:
        fig = getattr(fig, "figure", fig)  # a seaborn grid holds its figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out.append((title, base64.b64encode(buf.getvalue()).decode()))
    return out


def _policy_section(s: dict) -> list[str]:
    """The failure policy used and, where the other policy's verdict differs, both (summary.json's
    ``policy_differs_at``)."""
    policy = s.get("failure_policy")
    if not policy:
        return []
    out = [
        "<h2>Failure policy and intervals</h2>",
        f"<p>Failure policy <b>{html.escape(policy)}</b> (docs/metrics.md); intervals "
        f"{html.escape(str(s.get('ci_method')))} at {s.get('confidence', 0.95):.0%}.</p>",
    ]
    diffs = s.get("policy_differs_at") or []
    if diffs:
        out.append("<p>Levels whose verdict differs under the other policy:</p>")
        out.append(_html_table(pd.DataFrame(diffs)))
    else:
        out.append("<p>Both policies give the same verdict at every level.</p>")
    return out


_TIER_COLS = [
    "name",
    "label",
    "max_agents",
    "binding_constraint",
    "lowest_failing_agents",
    "agents_per_accelerator",
    "power_w",
    "power_scope",
    "agents_per_mw",
]


def format_number(v: Any) -> str:
    """A number as a reader wants it: integers with thousands separators (``25,000``), other floats to
    about three significant figures (``0.482``, ``12.3``, ``1,443``); inf as ``inf``, NaN/None as ``-``;
    anything else as ``str``."""
    if v is None or isinstance(v, bool):
        return "-" if v is None else str(v)
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        x = float(v)
        if math.isnan(x):
            return "-"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == int(x) and abs(x) >= 1:
            return f"{int(x):,}"
        a = abs(x)
        if a >= 100:
            return f"{x:,.0f}"
        if a >= 10:
            return f"{x:.1f}"
        if a >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    return str(v)


def _html_table(df: pd.DataFrame) -> str:
    """``df`` as an HTML table with :func:`format_number` applied to every cell, in a scrolling box."""
    shown = df.astype(object).map(format_number) if len(df) else df
    return f"<div class='scroll'>{shown.to_html(index=False, escape=True)}</div>"


def write_html_report(directory: str | Path, path: str | Path | None = None) -> Path:
    """Write a standalone HTML report of a sweep (tables, and the levels plot when seaborn is installed)."""
    res = load_sweep(directory)
    path = Path(path) if path else Path(directory) / "report.html"
    s = res.summary
    tiers = pd.DataFrame(s["tiers"])
    tiers["max_agents"] = [_max_agents_text(t) for t in s["tiers"]]
    tiers = tiers[[c for c in _TIER_COLS if c in tiers]]
    levels = res.levels[
        [c for c in _LEVEL_COLS if c in res.levels] + [c for c in res.levels if c.startswith("verdict_")]
    ]
    figures = _figures(Path(directory), res.levels, s["tier_preset"])
    parts = [
        "<!doctype html><meta charset='utf-8'><title>agentperf sweep report</title>",
        "<style>body{font-family:sans-serif;margin:2em auto;max-width:70em;padding:0 1em}"
        "table{border-collapse:collapse}.scroll{overflow-x:auto}img{max-width:100%}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}"
        "pre{overflow-x:auto}</style>",
        f"<h1>Sweep of {html.escape(str(s['target']))}</h1>",
        f"<pre>{html.escape(format_summary(s))}</pre>",
        "<h2>Tiers</h2>",
        _html_table(tiers),
        *_policy_section(s),
        "<h2>Levels</h2>",
        _html_table(levels),
        *_task_section(Path(directory)),
    ]
    for title, png in figures:
        parts += [
            f"<h2>{html.escape(title)}</h2>",
            f"<img alt='{html.escape(title, quote=True)}' src='data:image/png;base64,{png}'>",
        ]
    path.write_text("\n".join(parts))
    return path


def _task_section(directory: Path) -> list[str]:
    """The per-level task table (completion time, slowdown, tasks per hour; docs/frontier.md)."""
    from .tasks import load_sweep_tasks

    tab = load_sweep_tasks(directory)
    return [
        "<h2>Task completion (trajectory instances finishing in the steady window)</h2>",
        _html_table(tab),
    ]
