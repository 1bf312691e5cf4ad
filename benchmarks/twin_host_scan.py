"""Does an arrival cost more as a server's host prompt cache fills? (llama.cpp ``--cache-ram``)

llama-server keeps prompts it evicts from its slots in a host prompt cache; on every new request it
scans *every* cached prompt for the longest common prefix (``server_prompt_cache::load``; ``alloc``
scans them twice more when a slot's prompt is saved), in its one decode thread. The scan's cost grows
with the entries held times the prefix they share with the new prompt, so the same request costs more
on a server that has already seen many conversations (the tiny model's 512-byte token state lets the
default 8 GiB hold millions of tokens: entries are never evicted during a sweep).

This fills the cache step by step with distinct prompts that share a ``--shared`` word prefix (each
ends in a unique suffix), and at each fill level times ``--probes`` fresh prompts of the same shape
(``max_tokens`` 1, not streamed: the time is the scan, the uncached suffix's prefill and one token).
Prints, per fill level, the entries sent so far and the median probe time, then the least-squares
slope (ms per 100 entries). Run it on a fresh server (its cache empty) with nothing else running:

    python benchmarks/twin_host_scan.py --target http://127.0.0.1:8200/v1 --model tiny-random-llama \
        --shared 100 --suffix 150 --fill 0,200,400,800,1600 --probes 9

A prompt that shares more than half of the slot it takes never touches the cache (the slot is reused in
place), so the shared prefix must be short against the suffix (the defaults).

Measured 2026-12-02 (llama.cpp ``-t 1``, 4 slots, shared/real-servers): docs/simulator.md, "Sixth pass".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import aiohttp


async def _complete(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str
) -> tuple[float, float, int]:
    """One completion of one token: (seconds, seconds outside the server's own prompt and token timings
    (llama.cpp's ``timings``), prompt tokens the server counted)."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    t0 = time.perf_counter()
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        data = await resp.json()
    dt = time.perf_counter() - t0
    timings = data.get("timings", {})
    inside = (timings.get("prompt_ms", 0.0) + timings.get("predicted_ms", 0.0)) / 1e3
    return dt, dt - inside, int(data.get("usage", {}).get("prompt_tokens", 0))


def _prompt(shared: str, i: int, suffix_words: int) -> str:
    """The shared prefix, then a suffix that differs from every other prompt's from its first word."""
    return shared + " ".join(f"item{i:06d}x{j:03d}" for j in range(suffix_words))


async def _main(args: argparse.Namespace) -> None:
    url = args.target.rstrip("/") + "/completions"
    shared = "the quick brown fox " * (args.shared // 4)
    fills = sorted(int(x) for x in args.fill.split(","))
    sent = 0
    rows: list[tuple[int, float]] = []
    print(
        f"# {args.target}  shared prefix {args.shared} words, suffix {args.suffix} words, "
        f"{args.probes} probes per fill level; load average {os.getloadavg()[0]:.1f}"
    )
    async with aiohttp.ClientSession() as s:
        for fill in fills:
            while sent < fill:  # distinct prompts, one at a time, each saved to the cache in turn
                await _complete(s, url, args.model, _prompt(shared, sent, args.suffix))
                sent += 1
            times, outside = [], []
            ntok = 0
            for _ in range(args.probes):
                dt, out, ntok = await _complete(s, url, args.model, _prompt(shared, sent, args.suffix))
                sent += 1
                times.append(dt)
                outside.append(out)
            med = statistics.median(outside)
            rows.append((sent, med))
            total = statistics.median(times)
            print(
                f"entries sent {sent:6d}  prompt {ntok} tokens  probe median {total * 1e3:7.2f} ms,"
                f" outside the server's prompt and token timings {med * 1e3:6.2f} ms "
                f"(min {min(outside) * 1e3:.2f}, max {max(outside) * 1e3:.2f})",
                flush=True,
            )
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in rows) / sum((x - mx) ** 2 for x in xs)
    print(
        f"time outside the server's timings: {slope * 1e3 * 100:.3f} ms per 100 prompts sent "
        f"(intercept {(my - slope * mx) * 1e3:.2f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="http://127.0.0.1:8200/v1")
    ap.add_argument("--model", default="tiny-random-llama")
    ap.add_argument("--shared", type=int, default=100, help="words of prefix every prompt shares")
    ap.add_argument("--suffix", type=int, default=150, help="words of each prompt's own suffix")
    ap.add_argument("--fill", default="0,200,400,800,1600", help="entries at which to probe")
    ap.add_argument("--probes", type=int, default=9)
    asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
