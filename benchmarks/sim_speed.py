"""Simulator speed: one virtual hour of N closed-loop agents on the default preset and trajectories.

Prints wall time, simulated/wall time ratio, requests simulated per second and peak memory.
Target (issue 4): 1,000 agents for one virtual hour in <= 10 s wall on a 2-core machine.

    python benchmarks/sim_speed.py [--agents 1000] [--virtual-s 3600] [--out DIR]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from agentperf_kit.agents import RunRules
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import default_trajectories


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--virtual-s", type=float, default=3600.0)
    ap.add_argument("--deployment", default="h200x8-dsv4pro")
    ap.add_argument("--out", help="stream rows to this directory (default: a temporary one)")
    args = ap.parse_args()
    trajs = default_trajectories()
    # a window of exactly --virtual-s after a 60 s warm-up; no trajectory-count extension
    rules = RunRules(
        warmup_s=60,
        duration_s=args.virtual_s - 60,
        max_duration_s=args.virtual_s - 60,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        drain_timeout_s=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_sim_level(
            trajs, args.agents, rules, deployment=args.deployment, seed=1, out_dir=args.out or tmp
        )
        wall = time.perf_counter() - t0
    sim = res.manifest["sim"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"agents {args.agents}  deployment {args.deployment}")
    print(
        f"virtual time {sim['virtual_s']:.0f} s  wall {wall:.2f} s (engine loop {sim['wall_s']:.2f} s, "
        f"rest is writing/finalizing)"
    )
    print(f"simulated/wall time ratio {sim['virtual_s'] / wall:.0f}x")
    print(
        f"requests {sim['requests']:,}  -> {sim['requests'] / wall:,.0f} requests/s  "
        f"(engine steps {sim['engine_steps']:,})"
    )
    print(f"peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
