"""Client performance against a fast local C streaming server (issue 3, "Performance").

Compiles ``fast_sse_server.c`` (gcc -O2) into a temporary directory, starts it, and measures OUR client:

- ``A``: 256 concurrent streams x 1,024 tokens, the server sending as fast as it can, ``--rounds`` requests
  per stream; client CPU-seconds per 1M streamed tokens (``time.process_time`` of this process) and the
  server's CPU (its ``getrusage``). ``--parser fast|json|both`` picks the per-chunk path.
- ``B``: 1,024 concurrent streams, server TTFT 200 ms and 50 tok/s (one token per chunk, every chunk
  arrives alone), 300 tokens per request, closed loop for ``--b-duration`` s: streams in flight (the
  server's time-average over the steady part), client-measured TTFT error vs the server's true TTFT
  (P50/P95, all requests and without the first request of each stream), mean speed error, client CPU per
  1M tokens.
- ``agents``: ``--agents`` closed-loop agents (``run_live``, tool delays) against the server with
  ``--agents-ttft-ms``/``--agents-itl-ms`` for a ``--agents-duration`` s window; the run's self-check
  (``client_ok``, loop lag P95, send delay P95) and the server's CPU share.

    python benchmarks/client_perf.py [--workload A,B,agents] [--parser both] [--loop uvloop|asyncio]
    python benchmarks/client_perf.py --workload A --profile   # where the client's CPU goes

Requests go through ``agentperf_kit.client.http.send_request`` (A, B) or ``agentperf_kit.replay.run_live``
(agents), in one process with one event loop. The machine's cores are shared by client and server.
These are in-process figures; ``client_outside.py`` measures the CLI from outside (issue 18).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import os
import statistics
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fast_sse_server import FastSSEServer, compile_server

from agentperf_kit.agents import RequestPlan, RunRules
from agentperf_kit.client.http import Endpoint, open_session, send_request
from agentperf_kit.trajectories.model import Trajectory, Turn

_HAS_FAST = "fast" in inspect.signature(send_request).parameters
DIAG: dict[str, list] = {}


def _pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _plan(n_out: int) -> RequestPlan:
    return RequestPlan(0, 0, "bench", 0, Turn(0, 0, 10, n_out), 0, "m" * 32, True, 0.0)


def _body(n_out: int) -> dict:
    return {
        "model": "fast",
        "stream": True,
        "max_tokens": n_out,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello " * 8}],
    }


def _kw(parser: str) -> dict:
    if not _HAS_FAST:
        return {}
    return {"fast": parser == "fast"}


async def _streams(
    base_url, n_streams, n_out, *, rounds=None, duration=None, parser="fast", on_start=None, reader="protocol"
):
    """n_streams closed-loop request loops; returns (outcomes, cpu_s, wall_s)."""
    ep = Endpoint(base_url, "fast", stall_timeout_s=60, request_timeout_s=600)
    origin = time.perf_counter_ns()
    outcomes: list = []
    kw = _kw(parser)
    DIAG["send_s"], DIAG["lag_s"] = [], []
    stop = asyncio.Event()

    async def lag_monitor():
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(0.01)
            DIAG["lag_s"].append(max(0.0, loop.time() - t - 0.01))

    session_cm = (
        open_session(n_streams + 8)
        if reader == "protocol"
        else aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=n_streams + 8), timeout=aiohttp.ClientTimeout(total=None)
        )
    )
    async with session_cm as session:
        t_stop = None if duration is None else time.perf_counter() + duration
        mon = asyncio.get_running_loop().create_task(lag_monitor())

        async def loop(i):
            plan, body = _plan(n_out), _body(n_out)
            k = 0
            while True:
                if rounds is not None and k >= rounds:
                    return
                if t_stop is not None and time.perf_counter() >= t_stop:
                    return
                t0 = (time.perf_counter_ns() - origin) / 1e9
                o = await send_request(session, ep, plan, body, origin, **kw)
                DIAG["send_s"].append(o.t_send_s - t0)
                outcomes.append((i, k, o))
                k += 1

        cpu0, wall0 = time.process_time(), time.perf_counter()
        if on_start:
            on_start(session)
        await asyncio.gather(*(loop(i) for i in range(n_streams)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        stop.set()
        await mon
    return outcomes, cpu, wall


def _run(coro, loop_kind):
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def workload_a(binary, args, parser):
    with FastSSEServer(0, 0, binary=binary) as srv:
        s0 = srv.stats()
        outs, cpu, wall = _run(
            _streams(srv.base_url, 256, 1024, rounds=args.rounds, parser=parser, reader=args.reader),
            args.loop,
        )
        s1 = srv.stats()
    toks = s1["tokens"] - s0["tokens"]
    got = sum(o.output_tokens or 0 for _, _, o in outs)
    bad = sum(not o.ok for _, _, o in outs)
    srv_cpu = (s1["cpu_user_s"] + s1["cpu_sys_s"]) - (s0["cpu_user_s"] + s0["cpu_sys_s"])
    print(
        f"A [{parser}, {args.loop}] 256 streams x 1024 tokens x {args.rounds} rounds: {toks:,} tokens "
        f"(client counted {got:,}, failed {bad}) in {wall:.2f} s wall ({toks / wall:,.0f} tok/s)\n"
        f"  client CPU {cpu:.2f} s = {cpu / toks * 1e6:.2f} CPU-s per 1M tokens (target <= 2)\n"
        f"  server CPU {srv_cpu:.2f} s = {srv_cpu / toks * 1e6:.2f} CPU-s per 1M tokens, "
        f"{srv_cpu / wall:.0%} of one core"
    )
    return {"tokens": toks, "cpu_per_M": cpu / toks * 1e6, "server_cpu_per_M": srv_cpu / toks * 1e6}


def workload_b(binary, args, parser):
    n, n_out, ttft, itl = 1024, 300, 0.2, 0.02
    snaps = {}
    with FastSSEServer(ttft * 1e3, itl * 1e3, binary=binary) as srv:
        s0 = srv.stats()

        def on_start(session):
            async def sampler():
                for label, at in (("w0", args.b_warm), ("w1", args.b_duration)):
                    await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                    async with session.get(srv.base_url.rsplit("/v1", 1)[0] + "/stats") as r:
                        snaps[label] = await r.json(content_type=None)

            t0 = time.perf_counter()
            asyncio.get_running_loop().create_task(sampler())

        outs, cpu, wall = _run(
            _streams(
                srv.base_url,
                n,
                n_out,
                duration=args.b_duration,
                parser=parser,
                on_start=on_start,
                reader=args.reader,
            ),
            args.loop,
        )
        s1 = srv.stats()
        srv.stop()
        exit_line = srv.exit_line
    toks = s1["tokens"] - s0["tokens"]
    ok = [(i, k, o) for i, k, o in outs if o.ok]
    err_all = [(o.t_first_s - o.t_send_s) - ttft for _, _, o in ok]
    err_later = [(o.t_first_s - o.t_send_s) - ttft for _, k, o in ok if k > 0]
    speed_err = [((o.output_tokens - 1) / (o.t_last_s - o.t_first_s)) / (1 / itl) - 1 for _, _, o in ok]
    w0, w1 = snaps.get("w0"), snaps.get("w1")
    in_flight = (
        (w1["active_integral"] - w0["active_integral"]) / (w1["t"] - w0["t"]) if w0 and w1 else math.nan
    )
    srv_cpu = (s1["cpu_user_s"] + s1["cpu_sys_s"]) - (s0["cpu_user_s"] + s0["cpu_sys_s"])
    print(
        f"B [{parser}, {args.loop}] 1024 streams, TTFT 200 ms, 50 tok/s, 300 tokens, {args.b_duration:g} s: "
        f"{len(outs):,} requests ({len(outs) - len(ok)} failed), {toks:,} tokens\n"
        f"  in flight (server time-average, t={args.b_warm:g}..{args.b_duration:g} s): "
        f"{in_flight:.1f} of {n} "
        f"= {in_flight / n:.2%} (target >= 99%); max {s1['max_active']}\n"
        f"  TTFT error all requests P50 {_pct(err_all, 50) * 1e3:.1f} ms, "
        f"P95 {_pct(err_all, 95) * 1e3:.1f} ms,"
        f" max {max(err_all) * 1e3:.1f} ms (target P95 <= 20 ms)\n"
        f"  TTFT error after each stream's first request P50 {_pct(err_later, 50) * 1e3:.1f} ms, "
        f"P95 {_pct(err_later, 95) * 1e3:.1f} ms\n"
        f"  speed error mean {statistics.fmean(speed_err):+.3%} (|target| <= 1%), "
        f"P5 {_pct(speed_err, 5):+.2%}, P95 {_pct(speed_err, 95):+.2%}\n"
        f"  client CPU {cpu:.2f} s = {cpu / toks * 1e6:.2f} CPU-s per 1M tokens (target <= 15)\n"
        f"  server: CPU {srv_cpu:.2f} s ({srv_cpu / wall:.0%} of one core); send lateness P50 "
        f"{s1['late_p50_s'] * 1e3:.2f} ms, P99 {s1['late_p99_s'] * 1e3:.2f} ms, "
        f"max {s1['late_max_s'] * 1e3:.1f} ms;"
        f" first-token lateness P95 {s1['first_late_p95_s'] * 1e3:.2f} ms\n"
        f"  client event-loop lag (10 ms sleep) P50 {_pct(DIAG['lag_s'], 50) * 1e3:.1f} ms, "
        f"P95 {_pct(DIAG['lag_s'], 95) * 1e3:.1f} ms; request start -> body sent "
        f"P50 {_pct(DIAG['send_s'], 50) * 1e3:.1f} ms, P95 {_pct(DIAG['send_s'], 95) * 1e3:.1f} ms\n"
        f"  server exit line: {exit_line[:200]}"
    )
    return {"in_flight": in_flight / n, "p95_ttft_err_ms": _pct(err_all, 95) * 1e3}


def workload_agents(binary, args, parser):
    from agentperf_kit.replay import run_live

    trajs = []
    for i in range(64):
        turns, prev = [], 0
        for k in range(6):
            new = 200 + 37 * ((i + k) % 7)
            turns.append(
                Turn(0, prev, new, args.agents_out, tool_delay_s=args.agents_tool_s * (0.5 + (k % 3) / 2))
            )
            prev += new
        trajs.append(Trajectory(f"bench{i}", turns))
    rules = RunRules(
        warmup_s=5,
        duration_s=args.agents_duration,
        max_duration_s=args.agents_duration,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=args.agents_ramp,
        drain_timeout_s=30,
    )
    kw = {"fast_parse": parser == "fast"} if "fast_parse" in inspect.signature(run_live).parameters else {}
    with FastSSEServer(args.agents_ttft_ms, args.agents_itl_ms, binary=binary) as srv:
        ep = Endpoint(srv.base_url, "fast", api="completions")
        s0 = srv.stats()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = _run(run_live(ep, trajs, args.agents, rules, out_dir=tmp, progress=False, **kw), args.loop)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        s1 = srv.stats()
    df = res.requests
    win = df[df.in_window]
    send = df.t_send_s - df.t_scheduled_s
    first = df.groupby("agent").t_scheduled_s.transform("min") == df.t_scheduled_s
    toks = s1["tokens"] - s0["tokens"]
    srv_cpu = (s1["cpu_user_s"] + s1["cpu_sys_s"]) - (s0["cpu_user_s"] + s0["cpu_sys_s"])
    cc = res.manifest["client_check"]
    print(
        f"agents [{parser}, {args.loop}] N={args.agents}, server TTFT {args.agents_ttft_ms:g} ms, ITL "
        f"{args.agents_itl_ms:g} ms, {args.agents_out} output tokens, tool delays ~{args.agents_tool_s:g} s, "
        f"window {res.window.get('window_s', 0):.1f} s:\n"
        f"  client_ok={res.manifest['client_ok']} loop lag P95 {cc['loop_lag_p95_s'] * 1e3:.2f} ms, "
        f"send delay "
        f"P95 {cc['send_delay_p95_s'] * 1e3:.2f} ms, connection waits {cc['connection_waits']} "
        f"{'; '.join(cc['reasons'])}\n"
        f"  garbage collections during the run {cc.get('gc_pauses')}, longest "
        f"{cc.get('gc_pause_max_s', math.nan) * 1e3:.1f} ms, "
        f"total {cc.get('gc_pause_total_s', math.nan) * 1e3:.0f} ms\n"
        f"  send delay P50 / P95 / max: in window {send[df.in_window].median() * 1e3:.2f} / "
        f"{send[df.in_window].quantile(0.95) * 1e3:.2f} / {send[df.in_window].max() * 1e3:.1f} ms; "
        f"each agent's first request {send[first].median() * 1e3:.2f} / "
        f"{send[first].quantile(0.95) * 1e3:.2f} ms\n"
        f"  requests {len(df):,} (in window {len(win):,}, failed {int((~df.ok).sum())}), server max active "
        f"{s1['max_active']}, tokens {toks:,}\n"
        f"  TTFT P50 {win.ttft_s.median() * 1e3:.1f} ms P95 {win.ttft_s.quantile(0.95) * 1e3:.1f} ms (true "
        f"{args.agents_ttft_ms:g} ms); speed median {win.output_speed_tps.median():.2f} tok/s (true "
        f"{1e3 / args.agents_itl_ms if args.agents_itl_ms else math.inf:.2f})\n"
        f"  client CPU {cpu:.1f} s over {wall:.1f} s wall ({cpu / wall:.0%} of one core), "
        f"{cpu / max(toks, 1) * 1e6:.2f} CPU-s per 1M tokens; "
        f"server CPU {srv_cpu:.1f} s ({srv_cpu / wall:.0%})"
    )
    return {"client_ok": res.manifest["client_ok"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="A,B,agents", help="comma list of A, B, agents")
    ap.add_argument("--parser", default="both", choices=["fast", "json", "both"], help="A only runs both")
    default_loop = "uvloop"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        default_loop = "asyncio"
    ap.add_argument("--loop", default=default_loop, choices=["uvloop", "asyncio"])
    ap.add_argument(
        "--reader",
        default="protocol",
        choices=["protocol", "readany"],
        help="A, B: body read in the connection's protocol (open_session) or by readany (plain session)",
    )
    ap.add_argument("--rounds", type=int, default=4, help="A: requests per stream (1M tokens at 4)")
    ap.add_argument("--b-duration", type=float, default=20.0, help="B: seconds of closed-loop streaming")
    ap.add_argument("--b-warm", type=float, default=3.0, help="B: in-flight average starts here (s)")
    ap.add_argument("--agents", type=int, default=4096)
    ap.add_argument("--agents-duration", type=float, default=60.0)
    ap.add_argument("--agents-ramp", type=float, default=10.0)
    ap.add_argument("--agents-ttft-ms", type=float, default=200.0)
    ap.add_argument("--agents-itl-ms", type=float, default=50.0)
    ap.add_argument("--agents-out", type=int, default=100)
    ap.add_argument("--agents-tool-s", type=float, default=4.0)
    ap.add_argument(
        "--profile", action="store_true", help="cProfile workload A (fast parser) and print the top"
    )
    args = ap.parse_args()
    print(
        f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, loop {args.loop}, "
        f"cpus {os.cpu_count()}, parser flag {'available' if _HAS_FAST else 'absent (full JSON)'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        binary = compile_server(tmp)
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            workload_a(binary, args, "fast")
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        parsers = ["fast", "json"] if args.parser == "both" else [args.parser]
        for w in args.workload.split(","):
            if w == "A":
                for p in parsers:
                    workload_a(binary, args, p)
            elif w == "B":
                workload_b(binary, args, parsers[0])
            elif w == "agents":
                workload_agents(binary, args, parsers[0])
            else:
                raise SystemExit(f"unknown workload {w!r}: use A, B, agents")


if __name__ == "__main__":
    main()
