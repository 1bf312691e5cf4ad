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
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from .agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
from .client.bodies import body_bytes, prepare
from .client.http import (
    Endpoint,
    RunConnector,
    calibrate_chat_filler,
    endpoint_secrets,
    open_session,
    scrub,
    send_request,
)
from .errors import OutputError
from .percentiles import percentile
from .recorder import ChunkWriter, RunWriter
from .results import (
    RunResult,
    finalize_chunks,
    finalize_run,
    prepare_run_dir,
    run_manifest,
    window_manifest,
    write_manifest,
)
from .schema import json_safe
from .telemetry import TelemetryConfig, TelemetrySampler
from .trajectories.model import Trajectory

if TYPE_CHECKING:
    import pandas as pd

    from .client.wire import WirePool
    from .sweep_early import EarlyStop

__all__ = ["Endpoint", "run_live", "run_live_sync"]

log = logging.getLogger(__name__)


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
    overwrite: bool = False,
    target_info: dict[str, Any] | None = None,
    early_stop: EarlyStop | None = None,
) -> RunResult:
    """Run one level live; returns (and with ``out_dir`` writes) the per-request table and manifest.

    ``seed`` makes the trajectory order, start turns and ramp reproducible; phase markers also mix in
    ``marker_nonce`` (default: drawn at random, recorded in the manifest), so that two runs against the
    same server never share a cached prompt. Passing a run's nonce back gives the same markers to phases
    begun in the same order (the first phase of every agent; later ones depend on timing).

    ``api_key`` (or the variable named by ``endpoint.api_key_env``) is sent as a bearer token and never
    written. ``connection_limit`` overrides the connector size (default: N + 8), e.g. to show what a
    capped pool does to the self-check.

    ``out_dir`` (default ``runs/RUN_ID``) must be new or empty; ``overwrite=True`` replaces a previous run
    there, never other files (:func:`~agentperf_kit.results.prepare_run_dir`; else
    :class:`~agentperf_kit.errors.OutputError` before anything is sent). ``target_info`` is added to the
    manifest's ``target`` section (e.g. accelerators, from a :class:`~agentperf_kit.targets.LiveTarget`).

    ``record_chunks`` also writes every visible chunk's time and token count to ``chunks.parquet``
    (docs/schema.md; streamed to ``chunks.arrow`` during the run). ``fast_parse=False`` JSON-decodes every
    chunk instead of the byte-level fast path (same results, more CPU; see docs/replay.md).

    Failures never end the run: every request becomes a row (``client.http.send_request``). The level
    ends early, with ``window.aborted_reason`` in the manifest, when every request fails for
    ``rules.abort_after_s`` or when results cannot be written; in the latter case
    :class:`~agentperf_kit.errors.OutputError` is raised after the agents stopped (one line; the rows
    written before stay readable).

    Interrupted (the task cancelled, Ctrl-C): every agent task, the telemetry sampler and the HTTP
    session are closed and the row files finished before the cancellation propagates, so the rows
    written so far stay readable (:func:`~agentperf_kit.results.load_run`) and no task is left running.

    ``telemetry`` (a :class:`~agentperf_kit.telemetry.TelemetryConfig`) samples the server's ``/metrics``
    and/or accelerator power on the run's clock: ``telemetry.parquet``, a ``telemetry`` section in the
    manifest and, with a power source, ``power_w`` (mean over the steady window) with
    ``power_scope = "measured"`` (docs/telemetry.md).

    ``early_stop`` (a sweep's, :class:`~agentperf_kit.sweep_early.EarlyStop`): interim looks that may
    close the window early once the verdicts the sweep needs are decided; a look reads and judges the
    rows in a worker thread (the event loop keeps reading streams) and ``window.stopped_early_reason``
    says why the window closed early.

    Progress (``progress=True``): a tqdm bar whose description says what the level is waiting for
    (:meth:`~agentperf_kit.agents.AgentFleet.window_progress`). Notes and the self-check verdict go to
    the ``agentperf_kit.replay`` logger (the CLI prints them as ``warning: ...`` lines).
    """
    key = api_key or (os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None)
    run_id = run_id or f"live-{uuid.uuid4().hex[:8]}"
    out_dir = prepare_run_dir(out_dir or os.path.join("runs", run_id), overwrite=overwrite)
    if marker_nonce is None:  # unique markers per run: a repeated run must not hit its own old prompts
        marker_nonce = random.SystemRandom().getrandbits(107)
    run = _LiveLevel(
        endpoint,
        key,
        out_dir,
        connection_limit or n_agents + 8,
        lag_budget_s,
        telemetry,
        record_chunks,
        fast_parse,
        progress,
        run_id,
        level,
    )
    run.fleet = AgentFleet(
        trajectories,
        n_agents,
        rules,
        seed=seed,
        sink=run.writer,
        run_id=run_id,
        level=level,
        marker_nonce=marker_nonce,
    )
    config = {
        "target": endpoint.public_dict(),
        "concurrency": n_agents,
        "rules": {k: getattr(rules, k) for k in rules.__dataclass_fields__},
        "seed": seed,
        "marker_nonce": f"{marker_nonce:027x}",
        "trajectories": len(run.fleet.trajectories),
        "lag_budget_s": lag_budget_s,
    }
    if telemetry is not None:
        config["telemetry"] = telemetry.public_dict()
    run.manifest = run_manifest(
        run_id=run_id,
        level=level,
        config=config,
        target={"kind": "live", **endpoint.public_dict(), **(target_info or {})},
        clock={"kind": "perf_counter_ns", "origin_ns": run.origin_ns, "origin_unix_s": time.time()},
    )
    write_manifest(out_dir, run.manifest)
    run.early_stop = early_stop
    if early_stop is not None:
        run.fleet.early_stop_looks = early_stop.looks
    await run.drive()
    return run.finish()


class _LiveLevel:
    """One live level's resources and state; each method has one job. :meth:`drive` owns every resource
    (row writers, HTTP session, progress bar, loop-lag monitor, telemetry sampler, agent tasks) through
    ``async with``/``finally``; :meth:`finish` writes the results."""

    fleet: AgentFleet
    manifest: dict[str, Any]

    def __init__(
        self,
        endpoint: Endpoint,
        key: str | None,
        out_dir: os.PathLike,
        limit: int,
        lag_budget_s: float,
        telemetry: TelemetryConfig | None,
        record_chunks: bool,
        fast_parse: bool,
        progress: bool,
        run_id: str,
        level: int,
        writer: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.secrets = endpoint_secrets(endpoint, key)
        self.headers = dict(endpoint.headers)
        if key:  # one Authorization header: the key wins over a header of that name (any case)
            self.headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
            self.headers["Authorization"] = f"Bearer {key}"
        self.out_dir = out_dir
        self.limit = limit
        self.lag_budget_s = lag_budget_s
        self.telemetry = telemetry if telemetry is not None and telemetry.active else None
        self.fast_parse = fast_parse
        self.progress = progress
        self.origin_ns = time.perf_counter_ns()
        # live: rows on disk within 0.5 s; a scale-out worker passes its own sink (agentperf_kit.scaleout)
        self.writer = writer if writer is not None else RunWriter(out_dir, flush_rows=256, flush_s=0.5)
        self.chunks = (
            ChunkWriter(out_dir, self.origin_ns, run_id=run_id, level=level) if record_chunks else None
        )
        self.chunk_logs: dict[int, list] = {}
        self.in_flight: dict[int, RequestPlan] = {}
        self.max_in_flight = 0  # requests sent and not yet ended, at most (never above N: each agent waits)
        self.lag: list[float] = []
        self.gc_pauses: list[float] = []
        self.conn_waits: list[float] = []
        self.wire: WirePool | None = None  # the lean client's pool (what it learnt of the server)
        self.body_reader = "readany"
        self.event_loop = "asyncio"  # the running loop's package: "uvloop" where run_live_sync used it
        self.sampler: TelemetrySampler | None = None
        self.bar: Any = None
        self.ttfts: list[float] = []
        self.speeds: list[float] = []
        self.errors = 0
        self.interrupted = False  # a Ctrl-C seen while the level ran (:meth:`_interrupt_seen`)
        self.early_stop: EarlyStop | None = None  # a sweep's interim looks (:meth:`_look`)

    def now(self) -> float:
        return (time.perf_counter_ns() - self.origin_ns) / 1e9

    # -- resources --------------------------------------------------------------------------------------

    async def drive(self) -> None:
        """The whole level, every resource released on the way out (normal end, error or cancellation):
        agent tasks cancelled and awaited, sampler and session closed, row files finished."""
        self.event_loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        try:
            with self._interrupt_seen():
                await self._drive()
        finally:
            self._close_writers()

    async def _drive(self) -> None:
        async with (
            open_session(self.limit, self.headers) as session,
            _still_heap(self.gc_pauses),
            self._progress_bar(),
        ):
            connector = session.connector
            assert isinstance(connector, RunConnector)  # open_session's
            self.conn_waits = connector.queue_waits_s
            self.wire = connector.wire
            self.body_reader = (
                "wire"
                if connector.wire is not None and connector.wire.accepts(self.endpoint.url)
                else "protocol"
                if connector.sink_capable
                else "readany"
            )
            await self._set_up(session)
            prepare(self.endpoint)  # the shared prompt stream, built before the first send
            async with self._lag_monitor(), self._sampler():
                await self._run_agents(session)

    @contextlib.contextmanager
    def _interrupt_seen(self) -> Any:
        """While the level runs in the main thread, note a Ctrl-C (SIGINT) besides what the handler in
        place does (asyncio's runner cancels the run's task): the watch loop ends the level on the note
        too, so an interrupt whose cancellation some await swallowed (Python 3.11's ``wait_for`` can) is
        not lost and the run does not go on to the end of its window."""
        self.interrupted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):
            yield
            return

        def note(signum: int, frame: Any) -> None:
            self.interrupted = True
            previous(signum, frame)

        signal.signal(signal.SIGINT, note)
        try:
            yield
        finally:
            if signal.getsignal(signal.SIGINT) is note:
                signal.signal(signal.SIGINT, previous)

    @contextlib.asynccontextmanager
    async def _lag_monitor(self) -> Any:
        stop = asyncio.Event()
        task = asyncio.create_task(_loop_lag_monitor(self.lag, stop))
        try:
            yield
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _sampler(self) -> Any:
        if self.telemetry is None:
            yield
            return
        self.sampler = TelemetrySampler(
            self.telemetry,
            now=self.now,
            base_url=self.endpoint.base_url,
            out_dir=self.out_dir,
            headers=self.headers,
            secrets=self.secrets,
        )
        async with self.sampler:
            yield

    @contextlib.asynccontextmanager
    async def _progress_bar(self) -> Any:
        if not self.progress:
            yield
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(desc=f"N={self.fleet.n_agents}", unit="req", leave=False)
        try:
            yield
        finally:
            self.bar.close()

    def _close_writers(self) -> None:
        """Finish the row files (readable after any end); a write error is raised once both are closed."""
        try:
            self.writer.close()
        finally:
            if self.chunks is not None:
                try:
                    self.chunks.close()
                except OutputError:
                    if self.writer.error is None:
                        raise

    # -- the level --------------------------------------------------------------------------------------

    async def _set_up(self, session: aiohttp.ClientSession) -> None:
        """What the server says about itself, and chat filler sized in the server's own tokens."""
        self.manifest["server"] = await _server_info(session, self.endpoint, self.secrets)
        ep = self.endpoint
        trajs = self.fleet.trajectories
        filler = ep.api == "chat" and any(t.messages is None for tr in trajs for t in tr.turns)
        if not filler or ep.overhead_tokens is not None:
            return
        cal = await calibrate_chat_filler(session, ep, self.secrets)
        self.manifest["prompt_calibration"] = cal
        if "error" in cal:
            log.warning("chat filler not calibrated (%s); prompt sizes may deviate", cal["error"])
            return
        self.endpoint = dataclasses.replace(
            ep, tokens_per_word=cal["tokens_per_word"], overhead_tokens=cal["overhead_tokens"]
        )

    async def _run_agents(self, session: aiohttp.ClientSession) -> None:
        """Start the agents, watch the level until its window closes, drain, then cancel what is left;
        the tasks are cancelled and awaited however this ends."""
        tasks = [asyncio.create_task(self._agent(session, p)) for p in self.fleet.start(self.now())]
        try:
            await self._watch(tasks)
        finally:
            t_cancel = self.now()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._cancel_in_flight(t_cancel)

    async def _watch(self, tasks: list[asyncio.Task]) -> None:
        all_done = asyncio.gather(*tasks)
        all_done.add_done_callback(_retrieve)  # read on every path (an interrupt included): never logged
        shown = 0.0
        try:
            while not all_done.done():
                await asyncio.wait({all_done}, timeout=0.2)
                if self.interrupted:  # a Ctrl-C whose cancellation did not arrive: end the level now
                    raise asyncio.CancelledError("interrupted")
                failed = self.writer.error or (self.chunks.error if self.chunks is not None else None)
                if failed is not None:  # results cannot be written: end the level, say why at the end
                    self.fleet.abort(self.now(), str(failed))
                if self.bar is not None and self.now() - shown >= 1.0:
                    shown = self.now()
                    self.bar.set_description(self.fleet.window_progress(shown), refresh=True)
                if self.early_stop is not None and not self.fleet.window_closed:
                    await self._look()
                if not self.fleet.may_send(self.now()):
                    break
            if not all_done.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(all_done), timeout=self.fleet.rules.drain_timeout_s)
        finally:
            if not all_done.done():
                all_done.cancel()  # the agent tasks are cancelled and awaited by the caller
        bug = all_done.exception() if all_done.done() and not all_done.cancelled() else None
        if bug is not None:
            raise bug  # a bug in an agent, not a failed request (those are rows)

    async def _look(self) -> None:
        """An interim look of the early stop, if one is due: the window's requests sent before the earliest
        one still running (all of them ended), read from the row stream (flushed here) and judged in a
        worker thread; the window closes at that cut if the sweep's verdicts are decided."""
        es = self.early_stop
        assert es is not None
        window = es.window_to_judge(self.fleet, self.now(), self.in_flight.values())
        if window is None:
            return
        from .sweep_early import window_rows_from_stream

        self.writer.flush()
        names = (self.writer.path.name,)
        rows = await asyncio.to_thread(window_rows_from_stream, self.out_dir, names, *window)
        reason = await asyncio.to_thread(es.decide, rows, window)
        if reason is not None:
            self.fleet.stop_early(window[1], reason)

    async def _agent(self, session: aiohttp.ClientSession, plan: RequestPlan | None) -> None:
        """One closed-loop agent: wait for its plan's time, send, record, next plan."""
        fleet, in_flight, chunks = self.fleet, self.in_flight, self.chunks
        while plan is not None:
            while (delay := plan.t_scheduled_s - self.now()) > 0:  # timers may wake a little early
                await asyncio.sleep(delay)
            if not fleet.may_send(self.now()):
                return
            body = body_bytes(self.endpoint, plan)  # the JSON of endpoint.body(plan), built as bytes
            in_flight[id(plan)] = plan
            self.max_in_flight = max(self.max_in_flight, len(in_flight))
            fleet.on_send(plan, self.now())
            log_ = None
            if chunks is not None:
                log_ = self.chunk_logs[id(plan)] = []
            outcome: RequestOutcome = await send_request(
                session,
                self.endpoint,
                plan,
                body,
                self.origin_ns,
                secrets=self.secrets,
                fast=self.fast_parse,
                chunk_log=log_,
            )
            del in_flight[id(plan)]
            if chunks is not None:
                chunks.add(plan.agent, plan.phase_id, plan.turn_index, self.chunk_logs.pop(id(plan)))
            if self.bar is not None:
                self._show(outcome)
            plan = fleet.complete(plan, outcome)

    def _show(self, outcome: RequestOutcome) -> None:
        """Progress bar: one more request; every 50, the recent P25 speed and P95 TTFT."""
        bar = self.bar
        bar.update(1)
        if not outcome.ok:
            self.errors += 1
            self.speeds.append(0.0)  # a failed request counts as a miss, as in the metrics
        elif outcome.t_first_s == outcome.t_first_s:
            self.ttfts.append(outcome.t_first_s - outcome.t_send_s)
            span = outcome.t_last_s - outcome.t_first_s
            n_out = outcome.n_chunks if outcome.usage_mismatch else outcome.output_tokens or 0
            if n_out >= 2:
                self.speeds.append((n_out - 1) / span if span > 0 else float("inf"))
        if bar.n % 50 == 0:  # over the last 500 requests
            bar.set_postfix(
                agents=self.fleet.active_agents(),
                in_flight=len(self.in_flight),
                errors=self.errors,
                p25_speed=f"{percentile(self.speeds[-500:], 25):.1f}tok/s",
                p95_ttft=f"{percentile(self.ttfts[-500:], 95):.2f}s",
            )

    def _cancel_in_flight(self, t_cancel: float) -> None:
        """Rows for the requests still in flight when the agents were cancelled (``cancelled_at_end``)."""
        for plan in list(self.in_flight.values()):
            if self.chunks is None:
                self.fleet.cancel(plan, t_cancel)
                continue
            # what the cancelled request had received: its row and its chunk rows agree
            got = self.chunk_logs.pop(id(plan), [])
            first = last = float("nan")
            if got:
                first = (got[0][0] - self.origin_ns) / 1e9
                last = (got[-1][0] - self.origin_ns) / 1e9
            self.fleet.cancel(plan, t_cancel, n_chunks=len(got), t_first_s=first, t_last_s=last)
            self.chunks.add(plan.agent, plan.phase_id, plan.turn_index, got)
        self.in_flight.clear()

    # -- results ----------------------------------------------------------------------------------------

    def finish(self) -> RunResult:
        """``requests.parquet`` and the final manifest: window, telemetry, the client self-check."""
        manifest, out_dir = self.manifest, self.out_dir
        if self.chunks is not None:
            finalize_chunks(out_dir)
            manifest["chunks"] = {"file": "chunks.parquet", "rows": self.chunks.rows_written}
        return finish_level(out_dir, manifest, self.fleet.window_summary(), self.sampler, self._self_check)

    def _self_check(self, df: Any) -> dict[str, Any]:
        """``client_ok`` and ``client_check``: event-loop lag, scheduled-to-sent delay and connection
        waits against ``lag_budget_s`` (module docstring)."""
        budget = self.lag_budget_s
        reasons = []
        lag_p95 = percentile(self.lag, 95) if self.lag else float("nan")
        if lag_p95 > budget:
            reasons.append(f"event-loop lag P95 {lag_p95 * 1e3:.1f} ms > budget {budget * 1e3:.1f} ms")
        send_lag = (df["t_send_s"] - df["t_scheduled_s"]).to_numpy(dtype=float)
        send_p95 = percentile(send_lag, 95)
        if send_p95 > budget:
            reasons.append(
                f"scheduled-to-sent delay P95 {send_p95 * 1e3:.1f} ms > budget {budget * 1e3:.1f} ms"
            )
        waits = self.conn_waits
        if waits and max(waits) > budget:
            reasons.append(
                f"{len(waits)} requests waited for a free connection "
                f"(max {max(waits) * 1e3:.1f} ms; pool size {self.limit})"
            )
        return {
            "client_ok": not reasons,
            "client_check": {
                "loop_lag_p95_s": lag_p95,
                "send_delay_p95_s": send_p95,
                "budget_s": budget,
                "connection_limit": self.limit,
                "connection_waits": len(waits),
                "max_in_flight": self.max_in_flight,
                "body_reader": self.body_reader,
                # the server closes connections after each response although it says keep-alive
                # (llama.cpp's llama-server after a streamed response): a new connection per request
                "server_closes_connections": bool(self.wire is not None and self.wire.closes_after_response),
                "event_loop": self.event_loop,
                "gc_pauses": len(self.gc_pauses),
                "gc_pause_max_s": max(self.gc_pauses, default=0.0),
                "gc_pause_total_s": sum(self.gc_pauses),
                "stream_parser": "fast" if self.fast_parse else "json",
                "reasons": reasons,
            },
        }


def finish_level(
    out_dir: os.PathLike,
    manifest: dict[str, Any],
    window: dict[str, Any],
    sampler: TelemetrySampler | None,
    self_check: Callable[[pd.DataFrame], dict[str, Any]],
    *,
    raw: pd.DataFrame | None = None,
) -> RunResult:
    """The end of a live level, in one process or over scale-out workers: the window (and telemetry)
    into the manifest, ``requests.parquet`` from ``raw`` (default: the rows in ``out_dir``), the client
    self-check (``self_check(df)``: ``client_ok`` and ``client_check``) and the prompt size deviation
    into the final manifest; the self-check's reasons and an early end logged as warnings."""
    manifest.update(window_manifest(window))
    if sampler is not None:
        manifest.update(_telemetry_manifest(sampler, window))
    result = finalize_run(out_dir, manifest, raw=raw)
    df = result.requests
    manifest.update(self_check(df))
    manifest["prompt_size_deviation"] = _prompt_size_deviation(df)
    write_manifest(out_dir, manifest)
    reasons = manifest["client_check"]["reasons"]
    if reasons:
        log.warning("client self-check failed, TTFT may be distorted: %s", "; ".join(reasons))
    if window["aborted_reason"]:
        log.warning("level ended early: %s", window["aborted_reason"])
    return RunResult(df, json_safe(manifest), result.directory)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _prompt_size_deviation(df: Any) -> dict[str, Any]:
    in_win = df[df["in_window"]]
    prompt = in_win["prompt_tokens"].astype("Float64")
    dev = ((prompt - in_win["target_prompt_tokens"]) / in_win["target_prompt_tokens"]).dropna()
    return {
        "n": len(dev),
        "mean": float(dev.mean()) if len(dev) else None,
        "max_abs": float(dev.abs().max()) if len(dev) else None,
        "note": "(usage.prompt_tokens - target) / target over in-window requests",
    }


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
