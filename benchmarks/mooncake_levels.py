"""Why the imported Mooncake fixture gives a low, seed- and N-dependent P25 speed in the simulator.

    python benchmarks/mooncake_levels.py [--agents 40 48 50]

Per level (AA's rules, the default preset, mid set): distinct trajectories each agent replayed (fewest and
most over the agents; agent a takes ``perm[(a + k*S) mod T]`` with S the smallest integer >= N coprime
with T, so it walks through all T; with S = N it would see only T / gcd(N, T)), requests in the window,
their median output, how many have a measurable speed (output > 1 token), P25 output speed, and the
requests per trajectory. The fixture's 10 conversations include six single-turn ones with 1-9 output
tokens and no think time.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from agentperf_kit.metrics import level_stats
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.sweep_config import SweepConfig
from agentperf_kit.trajectories.importers import import_trajectories

FIXTURE = Path(__file__).parent.parent / "tests/fixtures/trajectories/mooncake/conversation_trace.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[40, 48, 50])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    trajs = import_trajectories("mooncake", str(FIXTURE))
    t = len(trajs)
    for tr in trajs:
        turns = [(u.input_tokens, u.output_tokens, u.tool_delay_s) for u in tr.turns]
        print(f"  {tr.trajectory_id}: (prompt, output, think s) {turns}")
    for n in args.agents:
        res = run_sim_level(trajs, n, SweepConfig().rules(0), seed=args.seed)
        win = res.manifest["window"]
        w = res.requests[res.requests["in_window"]]
        sp = w["output_speed_tps"].to_numpy(dtype=float)
        st = level_stats(res.requests, window_start_s=win["window_start_s"], window_end_s=win["window_end_s"])
        seen = res.requests.groupby("agent")["trajectory_id"].nunique()
        per = w.groupby("trajectory_id").size().sort_values(ascending=False)
        print(
            f"N={n} (gcd(N, T) = {math.gcd(n, t)}): {seen.min()}-{seen.max()} of {t} trajectories per agent; "
            f"{len(w):,} requests in the window, "
            f"median output {w['output_tokens'].median():g} tokens, {int(np.isfinite(sp).sum()):,} with a "
            f"speed; P25 speed {st['p25_output_speed_tps']:.1f} tok/s; requests per trajectory "
            f"{ {k: int(v) for k, v in per.head(4).items()} }"
        )


if __name__ == "__main__":
    main()
