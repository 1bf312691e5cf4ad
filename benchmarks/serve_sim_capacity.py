"""How many concurrent streams serve-sim keeps on time: N streaming requests at once (128-token prompts,
300 output tokens each) against an in-process server, client in the same process and event loop.

Prints the smallest chunk count per request (300 = one chunk per engine step), the wall time, the
engine's virtual clock at the end (equal to wall x time scale when on time) and the server's largest
release lag.

    python benchmarks/serve_sim_capacity.py [--time-scale 1] [--streams 32 128 256]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from agentperf_kit.sim.server import SimServer


async def _one(s: aiohttp.ClientSession, url: str, i: int) -> int:
    n = 0
    body = {"prompt": [i] * 64 + list(range(64)), "max_tokens": 300, "stream": True}
    async with s.post(url, json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {"):
                n += 1
    return n


async def _level(scale: float, n: int) -> None:
    server = await SimServer(time_scale=scale, lag_warn_s=3600).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(_one(s, server.base_url + "/completions", i) for i in range(n)))
            wall = time.perf_counter() - t0
    finally:
        await server.stop()
    print(
        f"time scale {scale:g}, {n} streams: chunks/request min {min(counts)}, wall {wall:.2f} s, "
        f"engine clock {server.engine.now:.2f} virtual s, release lag max {server.lag_max_s * 1e3:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--streams", type=int, nargs="+", default=[32, 128, 256])
    args = ap.parse_args()
    for n in args.streams:
        asyncio.run(_level(args.time_scale, n))


if __name__ == "__main__":
    main()
