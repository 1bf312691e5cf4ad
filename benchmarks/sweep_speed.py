"""Speed of the default sweep: what ``agentperf sweep`` with no arguments does, timed.

Prints wall time, CPU time (this process and its worker processes: the band's searches and the task
baseline run beside the bisection, agentperf_kit/sweep_jobs.py), the 1-minute load average, the number
of levels measured (and how many the ramp + bisection bound allows), the simulated requests, requests
simulated per wall second, peak memory (this process; the largest worker) and bytes on disk. Targets:
<= 10 s wall on a 2-core machine with the band (issue 12; issue 5 asked <= 60 s), and no more levels
than exponential ramp + bisection need. ``AGENTPERF_SWEEP_WORKERS=0`` runs everything in one process.

    python benchmarks/sweep_speed.py [--target sim] [--tiers aa-dsv4pro] [--repeat 1] [--out DIR] [--no-band]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

from agentperf_kit.sweep import SweepConfig, run_sweep


def _level_bound(tiers: list[dict]) -> int:
    """Ramp (1, 2, ... up to the first power of two above the largest result) plus, per tier with a
    result L >= 1 below the cap, floor(log2 L) bisection levels (shared levels make it fewer)."""
    top = max(t["max_agents"] for t in tiers)
    ramp = math.floor(math.log2(top)) + 2 if top >= 1 else 1
    return ramp + sum(
        math.floor(math.log2(t["max_agents"]))
        for t in tiers
        if t["max_agents"] >= 1 and not t["max_agents_is_lower_bound"]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="sim")
    ap.add_argument("--tiers", default="aa-dsv4pro")
    ap.add_argument("--repeat", type=int, default=1, help="run the sweep this many times (fresh directories)")
    ap.add_argument("--out", help="parent directory for the sweep directories (default: a temporary one)")
    ap.add_argument("--no-band", action="store_true", help="skip the simulator's low-high band")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(args.out or tmp)
        walls = []
        for i in range(args.repeat):
            cfg = SweepConfig(
                target=args.target, tiers=args.tiers, out=str(parent / f"sweep{i}"), band=not args.no_band
            )
            t0 = time.perf_counter()
            res = run_sweep(cfg, progress=False)
            walls.append(time.perf_counter() - t0)
        disk = sum(f.stat().st_size for f in Path(res.directory).rglob("*") if f.is_file())
    s = res.summary
    ru = resource.getrusage(resource.RUSAGE_SELF)
    load = os.getloadavg()[0]
    print(
        f"default sweep: target {s['target']}  tiers {s['tier_preset']}  (AA validity rules)  "
        f"simulator core: {s.get('simulator_core')}"
    )
    print(f"wall time: {', '.join(f'{w:.1f} s' for w in walls)}  (target <= 10 s on 2 cores, issue 12)")
    print(
        f"CPU time (user + system): {ru.ru_utime + ru.ru_stime:.1f} s this process + "
        f"{s['side_job_cpu_s']:.1f} s in {s['side_job_workers']} workers ({os.cpu_count()} CPUs); "
        f"load average (1 min) {load0:.1f} before, {load:.1f} after"
    )
    for n in s["notes"]:
        if n.startswith("band:"):
            print(n)
    print(
        f"levels measured: {s['n_levels']}  (ramp + bisection bound {_level_bound(s['tiers'])})  "
        f"N = {[lv['concurrency'] for lv in s['levels']]}"
    )
    runs = sum(1 + lv["extensions"] for lv in s["levels"])
    print(f"level runs incl. extensions of inconclusive levels: {runs}")
    print(
        f"simulated requests: {s['simulated_requests']:,}  "
        f"({s['simulated_requests'] / min(walls):,.0f} per wall second)"
    )
    print(
        f"peak memory (RSS): {ru.ru_maxrss / 1024:,.0f} MB this process, "
        f"{s['side_job_peak_rss_mb']:,.0f} MB the largest worker; "
        f"disk {disk / 1e6:,.1f} MB (the last sweep's directory)"
    )
    for t in s["tiers"]:
        print(f"  {t['name']} {t['label']}: max agents {t['max_agents']}")


if __name__ == "__main__":
    main()
