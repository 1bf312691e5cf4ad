"""Reports from sweep directories: the per-tier table, a side-by-side comparison, a standalone HTML page."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .slo import get_tier_preset
from .sweep import format_summary, load_sweep

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


def compare_runs(directories: Sequence[str | Path]) -> pd.DataFrame:
    """One tidy row per (sweep directory, tier): what each sweep found, side by side."""
    rows = []
    for d in directories:
        s = load_sweep(d).summary
        for t in s["tiers"]:
            rows.append(
                {
                    "run": str(d),
                    "target": s["target"],
                    "model": s.get("model"),
                    "tier_preset": s["tier_preset"],
                    "tier": t["name"],
                    "label": t["label"],
                    "max_agents": t["max_agents"],
                    "max_agents_is_lower_bound": t["max_agents_is_lower_bound"],
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
        out.append(pd.DataFrame(diffs).to_html(index=False, na_rep="-"))
    else:
        out.append("<p>Both policies give the same verdict at every level.</p>")
    return out


def write_html_report(directory: str | Path, path: str | Path | None = None) -> Path:
    """Write a standalone HTML report of a sweep (tables, and the levels plot when seaborn is installed)."""
    res = load_sweep(directory)
    path = Path(path) if path else Path(directory) / "report.html"
    s = res.summary
    tiers = pd.DataFrame(s["tiers"])
    levels = res.levels[
        [c for c in _LEVEL_COLS if c in res.levels] + [c for c in res.levels if c.startswith("verdict_")]
    ]
    figures = _figures(Path(directory), res.levels, s["tier_preset"])
    parts = [
        "<!doctype html><meta charset='utf-8'><title>agentperf sweep report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>",
        f"<h1>Sweep of {html.escape(str(s['target']))}</h1>",
        f"<pre>{html.escape(format_summary(s))}</pre>",
        "<h2>Tiers</h2>",
        tiers.to_html(index=False, na_rep="-"),
        *_policy_section(s),
        "<h2>Levels</h2>",
        levels.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"),
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
        tab.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"),
    ]
