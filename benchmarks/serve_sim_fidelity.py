"""serve-sim against the engine it serves: does a real client see what the simulated engine computes?

Part 1, single cold requests (one at a time, token-id prompts of 4K/16K/64K tokens): the engine's end of
prefill (the step in which the last prefill chunk completes, from arrival) against the first token on
the wire (from the request's arrival in the engine, after parsing and prefix hashing), the 2nd-token gap
against the engine's first decode step, chunks per token, and the server's own release lag.

Part 2, a live run against serve-sim (``agentperf_kit.replay.run_live``, completions endpoint, token ids)
next to a virtual-time run (``run_sim_level``) of the same trajectories, agents and seed: TTFT P50/P95 over
the requests both runs made (matched by agent, trajectory, turn and visit), and the per-request difference.
Both runs use the time scale 1 (the trajectories' tool delays are wall seconds).

    python benchmarks/serve_sim_fidelity.py [--agents 8] [--duration 20] [--default-trajectories]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import aiohttp
import numpy as np

from agentperf_kit.agents import RunRules
from agentperf_kit.metrics import derive_request_metrics
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.sim.engine import Engine, SimRequest
from agentperf_kit.sim.presets import efficiency, get_deployment
from agentperf_kit.sim.server import SimServer
from agentperf_kit.trajectories import default_trajectories
from agentperf_kit.trajectories.model import Trajectory, Turn


def engine_steps(prompt: int, out: int) -> list[float]:
    """End times (virtual s, from arrival) of the steps of one cold request alone on the engine."""
    eng = Engine(get_deployment("h200x8-dsv4pro"), efficiency("mid"), lambda *a: None, lambda *a: None)
    eng.submit(SimRequest(None, 0, prompt, 0, out, 0.0))
    ends = []
    while eng.has_work:
        eng.advance(math.nextafter(eng.now, math.inf))
        ends.append(eng.now)
    return ends


async def single_requests(sizes: list[int], out: int) -> None:
    server = await SimServer(time_scale=1.0).start()
    loop = asyncio.get_running_loop()
    lives = []
    submit = server._submit

    def spy(*a):  # the request as the engine sees it: its arrival starts the engine's clock for it
        lives.append(submit(*a))
        return lives[-1]

    server._submit = spy
    print(
        "prompt  engine-prefill-end  wire-first-token  2nd-gap (engine decode step)  chunks/tokens  lag-max"
    )
    try:
        for n in sizes:
            ends = engine_steps(n, out)
            body = {"prompt": [7 + n + i for i in range(n)], "max_tokens": out, "stream": True}
            times = []
            async with aiohttp.ClientSession() as s, s.post(server.base_url + "/completions", json=body) as r:
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        times.append(loop.time())
            t_arr = server._t0 + lives[-1].req.t_arrival  # loop clock, time scale 1
            first = ends[len(ends) - out]
            print(
                f"{n:6d}  {first * 1e3:15.1f} ms  {(times[0] - t_arr) * 1e3:13.1f} ms  "
                f"{(times[1] - times[0]) * 1e3:7.1f} ms ({(ends[len(ends) - out + 1] - first) * 1e3:.1f} ms)"
                f"  {len(times):13d}/{out}  {server.lag_max_s * 1e3:5.1f} ms"
            )
    finally:
        await server.stop()


def synthetic(n: int = 6, turns: int = 5) -> list[Trajectory]:
    rng = np.random.default_rng(3)
    res = []
    for i in range(n):
        ts, prev = [], 0
        for k in range(turns):
            new = int(rng.integers(1000, 12000)) if k else int(rng.integers(8000, 20000))
            out = int(rng.integers(20, 60))
            ts.append(
                Turn(0, prev, new, out, tool_delay_s=float(rng.uniform(0.05, 0.3)), reasoning_tokens=None)
            )
            prev += new
        res.append(Trajectory(f"t{i}", ts))
    return res


def compare(trajs: list[Trajectory], agents: int, duration: float, seed: int) -> None:
    from agentperf_kit.sim.virtual import run_sim_level

    rules = RunRules(
        warmup_s=0.5,
        duration_s=duration,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.2,
        drain_timeout_s=60,
        random_start_turn=False,
    )
    virtual = run_sim_level(trajs, agents, rules, seed=seed).requests

    async def live_run():
        server = await SimServer(time_scale=1.0).start()
        try:
            ep = Endpoint(server.base_url, server.model, api="completions", request_timeout_s=600)
            res = await run_live(ep, trajs, agents, rules, seed=seed, progress=False)
            return res.requests, server.lag_max_s
        finally:
            await server.stop()

    t0 = time.perf_counter()
    live, lag = asyncio.run(live_run())
    wall = time.perf_counter() - t0
    key = ["agent", "trajectory_id", "turn"]
    cols = [*key, "ttft_s", "n_chunks", "output_tokens"]
    a, b = derive_request_metrics(virtual)[cols].copy(), derive_request_metrics(live)[cols].copy()
    for d in (a, b):
        d["k"] = d.groupby(key).cumcount()
    m = a.merge(b, on=[*key, "k"], suffixes=("_v", "_l"))
    diff = m["ttft_s_l"] - m["ttft_s_v"]
    print(
        f"{agents} agents, {len(m)} requests in both runs ({len(a)} virtual, {len(b)} live), "
        f"live wall {wall:.1f} s"
    )
    print(f"TTFT P50 virtual {m.ttft_s_v.median():.3f} s  live {m.ttft_s_l.median():.3f} s")
    print(f"TTFT P95 virtual {m.ttft_s_v.quantile(0.95):.3f} s  live {m.ttft_s_l.quantile(0.95):.3f} s")
    print(
        f"per-request live - virtual: median {diff.median() * 1e3:+.1f} ms, "
        f"P5 {diff.quantile(0.05) * 1e3:+.1f} ms, "
        f"P95 {diff.quantile(0.95) * 1e3:+.1f} ms; server lag max {lag * 1e3:.1f} ms"
    )
    print(f"live requests with one chunk per token: {(b.n_chunks == b.output_tokens).mean():.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--duration", type=float, default=8.0, help="steady window, seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--default-trajectories", action="store_true", help="the toolkit's default set")
    ap.add_argument("--skip-single", action="store_true")
    args = ap.parse_args()
    if not args.skip_single:
        asyncio.run(single_requests([4096, 16384, 65536], 6))
    trajs = default_trajectories() if args.default_trajectories else synthetic()
    compare(trajs, args.agents, args.duration, args.seed)


if __name__ == "__main__":
    main()
