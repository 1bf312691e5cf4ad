"""``agentperf presets``: the built-in simulated deployments and SLO tier presets, one table each."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "presets",
        help="list simulated deployments and SLO tier presets",
        description="List the built-in simulated deployments (for --target sim:NAME) and the SLO tier "
        "presets (for --tiers NAME).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def deployments_table() -> list[dict[str, Any]]:
    """One dict per deployment preset: name, label, accelerators, model and whether it is a projection."""
    from ..sim.presets import DEFAULT_DEPLOYMENT, get_deployment, list_deployments

    rows = []
    for name in list_deployments():
        d = get_deployment(name)
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_DEPLOYMENT,
                "accelerators": d.accelerator_count,
                "accelerator": d.accelerator,
                "model": d.model,
                "disaggregated": d.disaggregated,
                "projection": d.projection,
                "label": d.label,
            }
        )
    return rows


def tiers_table() -> list[dict[str, Any]]:
    """One dict per tier preset: name, label, source and its tiers as ``name=speed/ttft[/p/p]`` text."""
    from ..slo import TIER_PRESETS

    return [
        {
            "name": p.name,
            "label": p.label,
            "source": p.source,
            "tiers": [t.as_dict() for t in p.tiers],
        }
        for p in TIER_PRESETS.values()
    ]


def _tier_text(t: dict[str, Any]) -> str:
    text = f"{t['name']}={t['min_output_speed_tps']:g}/{t['max_ttft_s']:g}"
    if (t["speed_percentile"], t["ttft_percentile"]) != (25.0, 95.0):
        text += f"/{t['speed_percentile']:g}/{t['ttft_percentile']:g}"
    return text


def _run(args: argparse.Namespace) -> int:
    deps, tiers = deployments_table(), tiers_table()
    if args.json:
        json.dump({"deployments": deps, "tier_presets": tiers}, sys.stdout, indent=2)
        print()
        return 0
    print("Simulated deployments (--target sim:NAME):")
    width = max(len(d["name"]) for d in deps)
    for d in deps:
        notes = [k for k in ("default", "disaggregated", "projection") if d[k]]
        extra = f"  ({', '.join(notes)})" if notes else ""
        print(f"  {d['name']:<{width}}  {d['accelerators']:>3} x {d['accelerator']:<10} {d['label']}{extra}")
    print("\nSLO tier presets (--tiers NAME; tiers as speed floor tok/s / TTFT ceiling s [/ percentiles]):")
    width = max(len(t["name"]) for t in tiers)
    for t in tiers:
        print(f"  {t['name']:<{width}}  {', '.join(_tier_text(x) for x in t['tiers'])}  ({t['label']})")
    return 0
