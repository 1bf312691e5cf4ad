"""Faster tools: agents per GPU at a fixed tier against tasks per hour per MW, on the simulated systems.

Runs one simulated sweep per (system, tool-delay factor) with ``what_if="tool_delay=F"`` and prints, per
tier: max agents, agents per accelerator, and at that level (N = max agents) tasks per hour per
accelerator and per MW (modelled power), the tasks that rate is counted from (n_tasks: its relative
standard error is about 1 / sqrt(n_tasks)), the P50 task completion time and slowdown, with the change
against x1.

    python benchmarks/what_if_tools.py [--out DIR] [--factors 0.25,0.5,1,2,4] [--systems h200,gb300]

Settings (shorter than AA's rules, so every level says ``meets_aa_rules: false``):

- ``h200x8-dsv4pro``: tiers aa-dsv4pro, steady window >= 120 s (AA: 600 s), otherwise AA's rules
  (warm-up 60 s, >= 30 trajectories, >= 3 per agent), resolution 1 agent.
- ``gb300nvl72-dsv4pro``: thousands of agents per level, so: the slo2 tier only (60 tok/s & 5 s), steady
  window 60 s, warm-up 30 s, >= 30 trajectories and no per-agent minimum, resolution 16 agents, at most
  4,096 agents. Agents start at random turns, so the window is in steady state from the start; tasks per
  hour count every trajectory that finishes in it. Task *completion times* need whole tasks inside
  warm-up + window (about 120 s here), so with these settings they are biased to short tasks: read
  GB300's p50_task_s and p50_slowdown as such, not as task times.

Sweeps are written under ``--out`` and resumed when run again with the same settings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from agentperf_kit.sweep import SweepConfig, run_sweep

SYSTEMS = {
    "h200": dict(target="sim:h200x8-dsv4pro", tiers="aa-dsv4pro", level_duration_s=120),
    "gb300": dict(
        target="sim:gb300nvl72-dsv4pro",
        tiers="slo2=60/5",
        level_duration_s=60,
        warmup_s=30,
        min_trajectories=30,
        min_trajectories_per_agent=0,
        resolution=16,
        max_agents=4096,
    ),
}


def _row(system: str, factor: float, res, tasks: pd.DataFrame) -> list[dict]:
    out = []
    for t in res.summary["tiers"]:
        n = int(t["max_agents"])
        at = tasks[tasks["concurrency"] == n]
        at = at.iloc[0] if len(at) else None
        out.append(
            {
                "system": system,
                "tool_delay": factor,
                "tier": t["name"],
                "max_agents": f"{'>=' if t['max_agents_is_lower_bound'] else ''}{n}",
                "agents_per_gpu": t["agents_per_accelerator"],
                "tasks_h_per_gpu": None if at is None else at["tasks_per_hour_per_accelerator"],
                "tasks_h_per_mw": None if at is None else at["tasks_per_hour_per_mw"],
                "n_tasks": None if at is None else int(at["n_tasks"]),
                "p50_task_s": None if at is None else at["p50_completion_s"],
                "p50_slowdown": None if at is None else at["p50_slowdown"],
                "power_w": t["power_w"],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/what-if-tools")
    ap.add_argument("--factors", default="0.25,0.5,1,2,4")
    ap.add_argument("--systems", default="h200,gb300")
    args = ap.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    rows = []
    for system in args.systems.split(","):
        for f in factors:
            cfg = SweepConfig(
                **SYSTEMS[system], what_if=f"tool_delay={f:g}", out=str(Path(args.out) / f"{system}-td{f:g}")
            )
            t0 = time.perf_counter()
            res = run_sweep(cfg, progress=False)
            tasks = pd.read_csv(Path(cfg.out) / "tasks.csv")
            print(
                f"{cfg.target} tool_delay x{f:g}: {res.summary['n_levels']} levels, "
                f"{res.summary['simulated_requests']:,} simulated requests, "
                f"{time.perf_counter() - t0:.0f} s wall",
                flush=True,
            )
            rows += _row(system, f, res, tasks)
    tab = pd.DataFrame(rows)
    base = tab[tab["tool_delay"] == 1.0].set_index(["system", "tier"])
    for col in ("agents_per_gpu", "tasks_h_per_mw", "p50_task_s"):
        ref = tab.apply(lambda r, c=col: base[c].get((r["system"], r["tier"])), axis=1)
        tab[f"{col}_vs_x1"] = (tab[col] / ref - 1.0).map(lambda v: f"{v:+.1%}" if pd.notna(v) else "-")
    pd.set_option("display.width", 200)
    print()
    print(tab.to_string(index=False, float_format=lambda v: f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"))


if __name__ == "__main__":
    main()
