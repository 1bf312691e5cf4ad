"""Cost of one level of a big simulated system under AA's rules: the proxy for a big sweep's levels.

Runs one level (``run_sim_level``, AA's validity rules: >= 3 trajectories per agent, so a level of N
agents simulates ~450 N requests) and judges it as a sweep does (the columns the sweep judges, read from
the level's ``requests.parquet``: ``evaluate_level`` under both failure policies, ``level_stats``), then
prints: requests, CPU time of the level and of judging it, CPU per request, peak RSS (``ru_maxrss``)
after the level and after judging, over the process's base after the trajectories are loaded (per
request), and the bytes of ``requests.parquet`` per request. A GB300 NVL72 default sweep measures ~25
such levels of 500-8,192 agents (``python benchmarks/big_sweep.py`` runs the whole sweep; docs/sweep.md
"Big systems").

    python benchmarks/big_level.py [--deployment gb300nvl72-dsv4pro] [--agents 4096] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from agentperf_kit._compiled import core_status
from agentperf_kit.agents import RunRules
from agentperf_kit.metrics import level_stats
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.slo import evaluate_level, get_tier_preset
from agentperf_kit.sweep import _JUDGED_COLUMNS
from agentperf_kit.trajectories import default_trajectories


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deployment", default="gb300nvl72-dsv4pro")
    ap.add_argument("--agents", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    trajs = default_trajectories()
    base = _rss_mb()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        c0 = time.process_time()
        res = run_sim_level(
            trajs, args.agents, RunRules(), deployment=args.deployment, seed=args.seed, out_dir=f"{tmp}/lv"
        )
        c1 = time.process_time()
        peak_level = _rss_mb()
        w = res.manifest["window"]
        bounds = (w["window_start_s"], w["window_end_s"])
        preset = get_tier_preset("aa-dsv4pro")
        judged = res.read_requests(_JUDGED_COLUMNS, in_window_only=True)  # as sweep._Sweeper.level
        verdicts = {}
        for policy in ("miss", "exclude"):
            ev = evaluate_level(judged, preset, failure_policy=policy, window=bounds)
            verdicts[policy] = dict(zip(ev["tier"], ev["tier_verdict"]))
        level_stats(judged, window_start_s=bounds[0], window_end_s=bounds[1], accelerators=1)
        n_window = len(judged)
        del judged
        c2 = time.process_time()
        path = Path(tmp) / "lv" / "requests.parquet"
        disk = path.stat().st_size
        n = pq.ParquetFile(path).metadata.num_rows
    peak = _rss_mb()
    print(
        f"{args.deployment}  N = {args.agents}  seed {args.seed}  load average (1 min) {load0:.1f} -> "
        f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)  simulator core: {core_status()}"
    )
    print(
        f"  requests {n:,} ({n_window:,} in the window)  virtual {res.manifest['sim']['virtual_s']:,.0f} s"
        f"  window {w['window_s']:,.0f} s  meets AA rules {res.manifest['meets_aa_rules']}"
    )
    print(f"  CPU: level {c1 - c0:.1f} s ({(c1 - c0) / n * 1e6:.1f} us per request), judging {c2 - c1:.1f} s")
    print(
        f"  peak RSS {peak:,.0f} MB (base {base:,.0f} MB; after the level {peak_level:,.0f} MB): "
        f"{(peak - base) * 1e6 / n:,.0f} B per request over the base ({(peak_level - base) * 1e6 / n:,.0f} "
        "after the level)"
    )
    print(f"  requests.parquet {disk / 1e6:,.1f} MB: {disk / n:,.1f} B per request")
    print(f"  verdicts {verdicts['miss']}")


if __name__ == "__main__":
    main()
