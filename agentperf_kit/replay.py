"""Live replay: N closed-loop agents against an OpenAI-compatible endpoint, in real time.

The agents' behaviour (phases, markers, trajectory order, tool delays, steady window, validity) is the
shared :class:`agentperf_kit.agents.AgentFleet`; this module owns the real clock (``perf_counter_ns``
since the run's origin) and the HTTP target. One ``aiohttp.ClientSession`` per run, its connector sized
for N (aiohttp's default of 100 connections would make requests wait for a free connection while their
clock runs). Rows go to disk as requests end (``requests.arrow``); at the end ``requests.parquet`` and
``manifest.json`` are written.

**Client self-check**: a monitor task measures event-loop lag (how late a 10 ms sleep wakes up); the run
also records each request's scheduled-to-sent delay. If the P95 of either exceeds ``lag_budget_s``
(default 5 ms) the run is marked ``client_ok: false`` with the reason: the client may have distorted TTFT.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

from .agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
from .client.bodies import body_bytes, prepare
from .client.http import (
    Endpoint,
    calibrate_chat_filler,
    endpoint_secrets,
    open_session,
    scrub,
    send_request,
)
from .errors import OutputError
from .percentiles import percentile
from .recorder import ChunkWriter, RunWriter
from .results import RunResult, finalize_chunks, finalize_run, toolkit_provenance, write_manifest
from .schema import json_safe
from .telemetry import TelemetryConfig, TelemetrySampler
from .trajectories.model import Trajectory

__all__ = ["Endpoint", "run_live", "run_live_sync"]


async def _loop_lag_monitor(samples: list[float], stop: asyncio.Event, interval: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(interval)
        samples.append(max(0.0, loop.time() - t - interval))


# net new container objects before the collector runs during a run (Python's default is 700)
RUN_GC_THRESHOLD = 200_000


@contextlib.asynccontextmanager
async def _still_heap(pauses: list[float]) -> Any:
    """For the run: collect once, freeze every object that exists (trajectories, modules, the session)
    out of the collector's reach, and let the collector run only after ``RUN_GC_THRESHOLD`` net new
    objects (a leak's safety valve; a steady run frees what it makes, by reference counting). Without
    this, 4,096 agents saw ~1,300 collections a minute (866 in a 41 s run), the longest 150-230 ms and
    finding no garbage, each stopping the event loop and delaying every send due meanwhile. Settings are
    restored at the end; every collection's pause is appended to ``pauses`` (seconds)."""
    t0 = 0.0

    def timed(phase: str, info: dict) -> None:
        nonlocal t0
        if phase == "start":
            t0 = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - t0)

    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(RUN_GC_THRESHOLD, 1000, 1000)
    gc.callbacks.append(timed)
    try:
        yield
    finally:
        gc.callbacks.remove(timed)
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _server_info(session: aiohttp.ClientSession, endpoint: Endpoint, secrets: tuple[str, ...]) -> dict:
    info: dict[str, Any] = {}
    try:
        async with asyncio.timeout(10):
            async with session.get(f"{endpoint.base_url}/models") as resp:
                info["models_status"] = resp.status
                info["server_header"] = resp.headers.get("Server")
                if resp.status == 200:
                    data = await resp.json(content_type=None)
                    models = data.get("data") if isinstance(data, dict) else None
                    models = models if isinstance(models, list) else []
                    info["models"] = [str(m.get("id"))[:200] for m in models if isinstance(m, dict)]
    except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
        info["models_error"] = scrub(f"{type(exc).__name__}: {exc}", secrets)[:200]
    return info


async def run_live(
    endpoint: Endpoint,
    trajectories: Sequence[Trajectory],
    n_agents: int,
    rules: RunRules,
    *,
    seed: int = 0,
    marker_nonce: int | None = None,
    out_dir: str | os.PathLike | None = None,
    level: int = 0,
    run_id: str | None = None,
    progress: bool = True,
    api_key: str | None = None,
    lag_budget_s: float = 0.005,
    connection_limit: int | None = None,
    telemetry: TelemetryConfig | None = None,
    record_chunks: bool = False,
    fast_parse: bool = True,
) -> RunResult:
    """Run one level live; returns (and with ``out_dir`` writes) the per-request table and manifest.

    ``seed`` makes the trajectory order, start turns and ramp reproducible; phase markers also mix in
    ``marker_nonce`` (default: drawn at random, recorded in the manifest), so that two runs against the
    same server never share a cached prompt. Passing a run's nonce back gives the same markers to phases
    begun in the same order (the first phase of every agent; later ones depend on timing).

    ``api_key`` (or the variable named by ``endpoint.api_key_env``) is sent as a bearer token and never
    written. ``connection_limit`` overrides the connector size (default: N + 8), e.g. to show what a
    capped pool does to the self-check.

    ``record_chunks`` also writes every visible chunk's time and token count to ``chunks.parquet``
    (docs/schema.md; streamed to ``chunks.arrow`` during the run). ``fast_parse=False`` JSON-decodes every
    chunk instead of the byte-level fast path (same results, more CPU; see docs/replay.md).

    Failures never end the run: every request becomes a row (``client.http.send_request``). The level
    ends early, with ``window.aborted_reason`` in the manifest, when every request fails for
    ``rules.abort_after_s`` or when results cannot be written; in the latter case
    :class:`~agentperf_kit.errors.OutputError` is raised after the agents stopped (one line; the rows
    written before stay readable).

    ``telemetry`` (a :class:`~agentperf_kit.telemetry.TelemetryConfig`) samples the server's ``/metrics``
    and/or accelerator power on the run's clock: ``telemetry.parquet``, a ``telemetry`` section in the
    manifest and, with a power source, ``power_w`` (mean over the steady window) with
    ``power_scope = "measured"`` (docs/telemetry.md).
    """
    key = api_key or (os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None)
    secrets = endpoint_secrets(endpoint, key)
    run_id = run_id or f"live-{uuid.uuid4().hex[:8]}"
    out_dir = out_dir or os.path.join("runs", run_id)
    writer = RunWriter(out_dir, flush_rows=256, flush_s=0.5)  # live: rows reach disk within 0.5 s
    if marker_nonce is None:  # unique markers per run: a repeated run must not hit its own old prompts
        marker_nonce = random.SystemRandom().getrandbits(107)
    fleet = AgentFleet(
        trajectories,
        n_agents,
        rules,
        seed=seed,
        sink=writer,
        run_id=run_id,
        level=level,
        marker_nonce=marker_nonce,
    )
    chunk_logs: dict[int, list] = {}
    config = {
        "target": endpoint.public_dict(),
        "concurrency": n_agents,
        "rules": {k: getattr(rules, k) for k in rules.__dataclass_fields__},
        "seed": seed,
        "marker_nonce": f"{marker_nonce:027x}",
        "trajectories": len(fleet.trajectories),
        "lag_budget_s": lag_budget_s,
    }
    if telemetry is not None:
        config["telemetry"] = telemetry.public_dict()
    manifest: dict[str, Any] = {
        "kind": "agentperf-run",
        "run_id": run_id,
        "level": level,
        **toolkit_provenance(),
        "config": config,
        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ],
        "target": {"kind": "live", **endpoint.public_dict()},
    }
    limit = connection_limit or n_agents + 8
    headers = dict(endpoint.headers)
    if key:  # one Authorization header: the key wins over a header of that name (any case)
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {key}"
    lag: list[float] = []
    stop = asyncio.Event()
    in_flight: dict[int, RequestPlan] = {}
    max_in_flight = 0  # requests sent and not yet ended, at most (never above N: each agent waits)
    origin_ns = time.perf_counter_ns()
    chunks = ChunkWriter(out_dir, origin_ns, run_id=run_id, level=level) if record_chunks else None
    manifest["clock"] = {"kind": "perf_counter_ns", "origin_ns": origin_ns, "origin_unix_s": time.time()}
    write_manifest(out_dir, manifest)

    def now() -> float:
        return (time.perf_counter_ns() - origin_ns) / 1e9

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"N={n_agents} requests", unit="req", leave=False)
    ttfts: list[float] = []
    speeds: list[float] = []
    errors = 0

    gc_pauses: list[float] = []
    async with open_session(limit, headers) as session, _still_heap(gc_pauses):
        conn_waits = session.connector.queue_waits_s
        body_reader = "protocol" if session.connector.sink_capable else "readany"
        manifest["server"] = await _server_info(session, endpoint, secrets)
        filler = endpoint.api == "chat" and any(
            t.messages is None for tr in fleet.trajectories for t in tr.turns
        )
        if filler and endpoint.overhead_tokens is None:  # size chat filler in the server's own tokens
            cal = await calibrate_chat_filler(session, endpoint, secrets)
            manifest["prompt_calibration"] = cal
            if "error" not in cal:
                endpoint = dataclasses.replace(
                    endpoint, tokens_per_word=cal["tokens_per_word"], overhead_tokens=cal["overhead_tokens"]
                )
            elif progress:
                print(f"note: chat filler not calibrated ({cal['error']}); prompt sizes may deviate")
        prepare(endpoint)  # the shared prompt stream, built before the first send
        monitor = asyncio.create_task(_loop_lag_monitor(lag, stop))
        sampler = None
        if telemetry is not None and telemetry.active:
            sampler = TelemetrySampler(
                telemetry,
                now=now,
                base_url=endpoint.base_url,
                out_dir=out_dir,
                headers=headers,
                secrets=secrets,
            )
            await sampler.start()

        async def agent(plan: RequestPlan | None) -> None:
            nonlocal errors, max_in_flight
            while plan is not None:
                while (delay := plan.t_scheduled_s - now()) > 0:  # timers may wake a little early
                    await asyncio.sleep(delay)
                if not fleet.may_send(now()):
                    return
                body = body_bytes(endpoint, plan)  # the JSON of endpoint.body(plan), built as bytes
                in_flight[id(plan)] = plan
                if len(in_flight) > max_in_flight:
                    max_in_flight = len(in_flight)
                fleet.on_send(plan, now())
                log = None
                if chunks is not None:
                    log = chunk_logs[id(plan)] = []
                outcome: RequestOutcome = await send_request(
                    session, endpoint, plan, body, origin_ns, secrets=secrets, fast=fast_parse, chunk_log=log
                )
                del in_flight[id(plan)]
                if chunks is not None:
                    chunks.add(plan.agent, plan.phase_id, plan.turn_index, chunk_logs.pop(id(plan)))
                if bar is not None:
                    bar.update(1)
                    if not outcome.ok:
                        errors += 1
                        speeds.append(0.0)  # a failed request counts as a miss, as in the metrics
                    elif outcome.t_first_s == outcome.t_first_s:
                        ttfts.append(outcome.t_first_s - outcome.t_send_s)
                        span = outcome.t_last_s - outcome.t_first_s
                        n_out = outcome.n_chunks if outcome.usage_mismatch else outcome.output_tokens or 0
                        if n_out >= 2:
                            speeds.append((n_out - 1) / span if span > 0 else float("inf"))
                    if bar.n % 50 == 0:  # over the last 500 requests
                        bar.set_postfix(
                            agents=fleet.active_agents(),
                            in_flight=len(in_flight),
                            errors=errors,
                            p25_speed=f"{percentile(speeds[-500:], 25):.1f}tok/s",
                            p95_ttft=f"{percentile(ttfts[-500:], 95):.2f}s",
                        )
                plan = fleet.complete(plan, outcome)

        tasks = [asyncio.create_task(agent(p)) for p in fleet.start(now())]  # after the set-up
        all_done = asyncio.gather(*tasks)
        while not all_done.done():
            await asyncio.wait({all_done}, timeout=0.2)
            failed = writer.error or (chunks.error if chunks is not None else None)
            if failed is not None:  # results cannot be written: end the level, say why at the end
                fleet.abort(now(), str(failed))
            if not fleet.may_send(now()):
                break
        if not all_done.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_done), timeout=rules.drain_timeout_s)
        t_cancel = now()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for plan in list(in_flight.values()):
            if chunks is None:
                fleet.cancel(plan, t_cancel)
                continue
            # what the cancelled request had received: its row and its chunk rows agree
            got = chunk_logs.pop(id(plan), [])
            first = last = float("nan")
            if got:
                first, last = (got[0][0] - origin_ns) / 1e9, (got[-1][0] - origin_ns) / 1e9
            fleet.cancel(plan, t_cancel, n_chunks=len(got), t_first_s=first, t_last_s=last)
            chunks.add(plan.agent, plan.phase_id, plan.turn_index, got)
        stop.set()
        await monitor
        if sampler is not None:
            await sampler.stop()
    if bar is not None:
        bar.close()
    try:
        writer.close()
    except OutputError:
        if chunks is not None:
            with contextlib.suppress(OutputError):
                chunks.close()
        raise  # one line: what could not be written, how many rows were kept
    if chunks is not None:
        chunks.close()
        finalize_chunks(out_dir)
        manifest["chunks"] = {"file": "chunks.parquet", "rows": chunks.rows_written}

    window = fleet.window_summary()
    lag_p95 = percentile(lag, 95) if lag else float("nan")
    reasons = []
    if lag_p95 > lag_budget_s:
        reasons.append(f"event-loop lag P95 {lag_p95 * 1e3:.1f} ms > budget {lag_budget_s * 1e3:.1f} ms")
    manifest.update(
        {
            "window": window,
            "meets_aa_rules": window["meets_aa_rules"],
            "aborted_reason": window["aborted_reason"],
        }
    )
    if sampler is not None:
        manifest.update(_telemetry_manifest(sampler, window))
    result = finalize_run(out_dir, manifest)
    df = result.requests
    send_lag = (df["t_send_s"] - df["t_scheduled_s"]).to_numpy(dtype=float)
    send_p95 = percentile(send_lag, 95)
    if send_p95 > lag_budget_s:
        reasons.append(
            f"scheduled-to-sent delay P95 {send_p95 * 1e3:.1f} ms > budget {lag_budget_s * 1e3:.1f} ms"
        )
    if conn_waits and max(conn_waits) > lag_budget_s:
        reasons.append(
            f"{len(conn_waits)} requests waited for a free connection "
            f"(max {max(conn_waits) * 1e3:.1f} ms; pool size {limit})"
        )
    in_win = df[df["in_window"]]
    prompt = in_win["prompt_tokens"].astype("Float64")
    dev = ((prompt - in_win["target_prompt_tokens"]) / in_win["target_prompt_tokens"]).dropna()
    manifest.update(
        {
            "client_ok": not reasons,
            "client_check": {
                "loop_lag_p95_s": lag_p95,
                "send_delay_p95_s": send_p95,
                "budget_s": lag_budget_s,
                "connection_limit": limit,
                "connection_waits": len(conn_waits),
                "max_in_flight": max_in_flight,
                "body_reader": body_reader,
                "gc_pauses": len(gc_pauses),
                "gc_pause_max_s": max(gc_pauses, default=0.0),
                "gc_pause_total_s": sum(gc_pauses),
                "stream_parser": "fast" if fast_parse else "json",
                "reasons": reasons,
            },
            "prompt_size_deviation": {
                "n": len(dev),
                "mean": float(dev.mean()) if len(dev) else None,
                "max_abs": float(dev.abs().max()) if len(dev) else None,
                "note": "(usage.prompt_tokens - target) / target over in-window requests",
            },
        }
    )
    write_manifest(out_dir, manifest)
    if reasons and progress:
        print("WARNING: client self-check failed, TTFT may be distorted: " + "; ".join(reasons))
    if window["aborted_reason"] and progress:
        print(f"level ended early: {window['aborted_reason']}")
    return RunResult(df, json_safe(manifest), result.directory)


def _telemetry_manifest(sampler: TelemetrySampler, window: dict) -> dict[str, Any]:
    """The manifest's ``telemetry`` section, and measured ``power_w`` when a power source worked."""
    summary = sampler.finalize(window.get("window_start_s"), window.get("window_end_s"))
    out: dict[str, Any] = {"telemetry": summary}
    power = summary.get("power") or {}
    if power.get("mean_power_w"):
        out.update(
            {
                "power_w": power["mean_power_w"],
                "power_scope": "measured",
                "power_detail": {**power, "note": "mean accelerator power over the steady window"},
            }
        )
    return out


def run_live_sync(*args: Any, **kwargs: Any) -> RunResult:
    """:func:`run_live` from synchronous code, including a Jupyter cell (where a loop already runs: the
    run then happens in a worker thread with its own loop). Uses uvloop when available."""

    def runner() -> RunResult:
        try:
            import uvloop

            return uvloop.run(run_live(*args, **kwargs))
        except ImportError:
            return asyncio.run(run_live(*args, **kwargs))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return runner()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(runner).result()
