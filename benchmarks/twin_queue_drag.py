"""Do requests waiting for a slot slow a server's running streams? (the twin's ``queued_step_s``)

Fills the server's slots with long streams (``--slots`` streams of ``--long-tokens`` tokens each), then,
0.3 s later, sends ``--waiting`` short requests that cannot get a slot until a long stream ends, and
measures the long streams' decode speed (tokens after the first / time from the first to the last
token). Trials alternate between no waiting requests and the given counts, with a pause between them so
that the queued requests are served before the next trial; prints each trial and the median speed per
waiting count (tok/s per stream). Nothing else should run on the machine.

    python benchmarks/twin_queue_drag.py --target http://127.0.0.1:8200/v1 --model tiny-random-llama \
        --slots 4 --waiting 30,100 --rounds 3

Measured 2026-12-01 (llama.cpp ``-t 1``, 4 slots, shared/real-servers): docs/simulator.md, "Fifth pass".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import aiohttp


async def _stream(session: aiohttp.ClientSession, url: str, model: str, tokens: int) -> tuple[int, float]:
    """One streamed completion of ``tokens`` tokens: (chunks with a token, seconds first to last)."""
    body = {
        "model": model,
        "prompt": "hello " * 50,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "cache_prompt": False,
    }
    first = last = None
    n = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: {"):
                n += 1
                last = time.perf_counter()
                first = first or last
    return n, (last - first) if first and last else float("nan")


async def _trial(url: str, model: str, slots: int, long_tokens: int, waiting: int) -> float:
    """Mean decode speed (tok/s) of ``slots`` long streams with ``waiting`` requests queued beside them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        longs = [asyncio.create_task(_stream(s, url, model, long_tokens)) for _ in range(slots)]
        await asyncio.sleep(0.3)
        queued = [asyncio.create_task(_stream(s, url, model, 8)) for _ in range(waiting)]
        done = await asyncio.gather(*longs)
        await asyncio.gather(*queued, return_exceptions=True)
    return statistics.fmean((n - 1) / d for n, d in done if n > 1 and d > 0)


async def _main(args: argparse.Namespace) -> None:
    url = args.target.rstrip("/") + "/completions"
    counts = [int(x) for x in args.waiting.split(",")]
    speeds: dict[int, list[float]] = {0: [], **{c: [] for c in counts}}
    for _ in range(args.rounds):
        for c in counts:
            for w in (0, c):
                v = await _trial(url, args.model, args.slots, args.long_tokens, w)
                speeds[w].append(v)
                print(
                    f"waiting {w:4d}: {v:8.1f} tok/s per stream  (load {os.getloadavg()[0]:.2f})", flush=True
                )
                await asyncio.sleep(args.pause_s)
    print("median per waiting count:")
    for w, v in speeds.items():
        print(f"  waiting {w:4d}: {statistics.median(v):8.1f} tok/s per stream over {len(v)} trials")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="http://127.0.0.1:8200/v1")
    ap.add_argument("--model", default="tiny-random-llama")
    ap.add_argument("--slots", type=int, default=4, help="the server's slots (long streams to run)")
    ap.add_argument("--long-tokens", type=int, default=600, help="tokens per long stream")
    ap.add_argument("--waiting", default="30,100", help="waiting-request counts to try, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause-s", type=float, default=6.0, help="pause between trials (queued ones drain)")
    asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
