"""Whether the client measures every request's output speed against a live server, on both read paths.

    python benchmarks/speed_measurable_check.py [--base http://127.0.0.1:8200/v1] [--model tiny-random-llama]

Runs one short live level (4 agents, 8 trajectories of 4 turns with 300-token forced outputs, 12 s window)
twice: through the lean client (``client.wire``) and through aiohttp's path (``open_session(wire=False)``),
and prints, per path, the requests in the window, how many have no measurable output speed, and the P25
speed (tok/s). Used to tell a client artifact from a workload one when a level reports unmeasurable speeds
(docs/simulator.md, the llama.cpp twin check).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile

import numpy as np

import agentperf_kit.replay as replay
from agentperf_kit.agents import RunRules
from agentperf_kit.client.http import open_session
from agentperf_kit.trajectories.model import Trajectory, Turn


def _trajectories() -> list[Trajectory]:
    def turn(k: int) -> Turn:
        return Turn(0, 0 if k == 0 else 500 + 310 * (k - 1), 500 if k == 0 else 10, 300, tool_delay_s=0.2)

    return [Trajectory(f"t{i}", [turn(k) for k in range(4)]) for i in range(8)]


def _level(base: str, model: str, wire: bool) -> str:
    replay.open_session = functools.partial(open_session, wire=wire)  # type: ignore[assignment]
    rules = RunRules(
        warmup_s=2, duration_s=12, min_trajectories=0, min_trajectories_per_agent=0, ramp_s=0.5,
        drain_timeout_s=5, random_start_turn=False,
    )  # fmt: skip
    ep = replay.Endpoint(base, model, api="completions")
    res = asyncio.run(
        replay.run_live(ep, _trajectories(), 4, rules, out_dir=tempfile.mkdtemp(), progress=False)
    )
    df = res.requests[res.requests["in_window"]]
    speed = df["output_speed_tps"].to_numpy(dtype=float)
    p25 = f"{np.nanpercentile(speed, 25):.1f}" if np.isfinite(speed).any() else "-"
    return (
        f"{res.manifest['client_check'].get('body_reader')}: {len(df)} requests in the window, "
        f"{int(np.isnan(speed).sum())} without a measurable speed, P25 speed {p25} tok/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="http://127.0.0.1:8200/v1")
    ap.add_argument("--model", default="tiny-random-llama")
    args = ap.parse_args()
    for wire in (True, False):
        print(_level(args.base, args.model, wire))


if __name__ == "__main__":
    main()
