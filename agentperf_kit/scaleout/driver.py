"""The driver of a scale-out live level: K Ray workers run the agents, this process owns the level.

:func:`run_live_workers` is :func:`agentperf_kit.replay.run_live` with the agents split across ``workers``
worker processes (Ray actors, :class:`.worker.LevelWorker`); agent ``a`` runs in worker ``a % workers``.
The driver:

1. asks the server about itself and calibrates the chat filler once (as ``run_live`` does), takes the
   workers from a :class:`.pool.WorkerPool` (kept from the caller's previous level, or placed now),
   measures each one's clock (:mod:`.clock`) and gives it the origin that puts its stamps on the run's
   clock;
2. starts every worker's agents from one start time (the ramp, seeded ranks and start turns are the whole
   fleet's, as in one process);
3. polls the workers every ``poll_s``: their finished rows go to ``requests.arrow`` (one writer, one file),
   their agents' first sends and rows to the :class:`.fleets.Ledger`, which opens and closes the steady
   window by AA's rules over all workers. As soon as the window's end is known (ahead of time in the
   usual case, :meth:`.fleets.Ledger.planned_end_s`) every worker is given it: its agents do not send at
   or after it, in-flight requests drain for ``rules.drain_timeout_s``, the rest become
   ``cancelled_at_end`` rows;
4. at the end measures the clocks again, writes ``requests.parquet`` (the columns of docs/schema.md plus
   ``worker``) and ``manifest.json`` with a ``workers`` section (placement, clock offsets, each worker's
   self-check figures) and the run's ``client_ok``: every worker's self-check passed (event-loop lag,
   scheduled-to-sent delay of its rows, connection waits, each against ``lag_budget_s``) and every clock
   offset is known well enough.

**Failures**: a worker that dies (its process killed, its node lost) or whose level raises, or that stops
answering for ``worker_timeout_s``, ends the level as a fail (``aborted_reason`` names the worker and
why): the other workers are told the window closed and drain as usual; the rows every worker handed over
are kept (a dead worker loses only the rows of its last ``poll_s`` and its requests in flight); the failed
worker leaves the pool (the next level gets a new one). Ctrl-C or an error in the driver stops and removes
every worker, keeps the rows written so far and re-raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import pickle
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..agents import RunRules
from ..client.http import Endpoint, calibrate_chat_filler, endpoint_secrets, open_session
from ..errors import TargetError
from ..percentiles import percentile
from ..recorder import RAW_PARTS_NAME, RunWriter, read_raw_rows
from ..replay import _server_info, finish_level
from ..results import RunResult, prepare_run_dir, run_manifest, with_worker_column, write_manifest
from ..telemetry import TelemetryConfig, TelemetrySampler
from ..trajectories.model import Trajectory
from .clock import ClockOffset, measure_offset
from .fleets import Ledger
from .pool import WorkerPool
from .worker import host_identity

__all__ = ["run_live_workers"]

log = logging.getLogger(__name__)

_TIME_COLUMNS = ("t_scheduled_s", "t_send_s", "t_first_s", "t_first_answer_s", "t_last_s", "t_end_s")


def run_live_workers(
    endpoint: Endpoint,
    trajectories: Sequence[Trajectory],
    n_agents: int,
    rules: RunRules,
    *,
    workers: int,
    ray_address: str | None = None,
    seed: int = 0,
    marker_nonce: int | None = None,
    out_dir: str | os.PathLike | None = None,
    level: int = 0,
    run_id: str | None = None,
    progress: bool = True,
    api_key: str | None = None,
    lag_budget_s: float = 0.005,
    fast_parse: bool = True,
    overwrite: bool = False,
    target_info: dict[str, Any] | None = None,
    telemetry: TelemetryConfig | None = None,
    poll_s: float = 0.5,
    worker_timeout_s: float = 60.0,
    start_timeout_s: float = 300.0,
    pool: WorkerPool | None = None,
) -> RunResult:
    """Run one live level with its agents split across ``workers`` Ray worker processes (module
    docstring); the same files as :func:`~agentperf_kit.replay.run_live` plus the ``worker`` column and
    the manifest's ``workers`` section.

    ``ray_address``: None starts (once per process) a local Ray runtime, unless this process already
    called ``ray.init``; ``auto`` or ``ray://host:port`` joins a cluster (:mod:`.runtime`). The other
    arguments are ``run_live``'s. ``poll_s``: how often the driver collects rows (the delay with which it
    sees the window's rules met). ``worker_timeout_s``: a worker that does not answer a poll for this long
    is taken for dead. ``telemetry`` is sampled by the driver, on the run's clock, as ``run_live`` does.
    ``start_timeout_s``: how long the workers may take to be placed and ready. ``pool``: the workers to
    run on, kept for the caller's next levels (:class:`.pool.WorkerPool` of ``workers`` workers: a sweep
    starts them once); None places workers for this level only and removes them at its end.

    Raises:
        ConfigError: Ray is not installed (the message names ``pip install 'agentperf-kit[ray]'``).
        TargetError: the Ray cluster cannot be reached or the workers cannot be placed in time.
        OutputError: ``out_dir`` holds something else, or results could not be written.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if pool is not None and pool.workers != workers:
        raise ValueError(f"pool has {pool.workers} workers, the level asks for workers={workers}")
    key = api_key or (os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None)
    run_id = run_id or f"live-{uuid.uuid4().hex[:8]}"
    out = prepare_run_dir(out_dir or os.path.join("runs", run_id), overwrite=overwrite)
    if marker_nonce is None:
        marker_nonce = random.SystemRandom().getrandbits(107)
    own = pool is None
    if pool is None:
        pool = WorkerPool(workers, ray_address)
    level_ = _Driver(
        pool.ray, workers, pool.ray_address, endpoint, key, lag_budget_s, poll_s, worker_timeout_s
    )
    level_.pool = pool
    level_.out_dir = out
    level_.telemetry = telemetry if telemetry is not None and telemetry.active else None
    ledger = Ledger(trajectories, n_agents, rules, seed=seed, sink=_drop, run_id=run_id, level=level)
    level_.ledger = ledger
    config = {
        "target": endpoint.public_dict(),
        "concurrency": n_agents,
        "rules": {k: getattr(rules, k) for k in rules.__dataclass_fields__},
        "seed": seed,
        "marker_nonce": f"{marker_nonce:027x}",
        "trajectories": len(ledger.trajectories),
        "lag_budget_s": lag_budget_s,
        "workers": workers,
    }
    if level_.telemetry is not None:
        config["telemetry"] = level_.telemetry.public_dict()
    level_.manifest = run_manifest(
        run_id=run_id,
        level=level,
        config=config,
        target={"kind": "live", **endpoint.public_dict(), **(target_info or {})},
        clock={
            "kind": "perf_counter_ns",
            "origin_ns": level_.origin_ns,
            "origin_unix_s": time.time(),
            "note": "the driver's clock; every worker's rows are on it (manifest: workers.clock)",
        },
    )
    write_manifest(out, level_.manifest)
    spec = {
        "api_key": key,
        "n_agents": n_agents,
        "rules": dataclasses.replace(rules, abort_after_s=0.0),  # the driver applies it, over all workers
        "seed": seed,
        "marker_nonce": marker_nonce,
        "run_id": run_id,
        "level": level,
        "workers": workers,
        "lag_budget_s": lag_budget_s,
        "fast_parse": fast_parse,
    }
    try:
        level_.drive(spec, list(ledger.trajectories), progress=progress, start_timeout_s=start_timeout_s)
    finally:
        if own:
            pool.close()
    return level_.finish()


def _drop(row: tuple) -> None:
    pass


@dataclasses.dataclass
class _Worker:
    index: int
    actor: Any
    host: dict[str, Any] = dataclasses.field(default_factory=dict)
    same_host: bool = True
    clock_start: ClockOffset | None = None
    clock_end: ClockOffset | None = None
    origin_ns: int = 0
    done: bool = False
    failed: str | None = None
    rows: int = 0
    sent: int = 0
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


class _Driver:
    """One scale-out level's state (module docstring); :meth:`drive` runs it, :meth:`finish` writes it."""

    ledger: Ledger
    manifest: dict[str, Any]
    out_dir: Any
    pool: WorkerPool

    def __init__(
        self,
        ray: Any,
        workers: int,
        ray_address: str | None,
        endpoint: Endpoint,
        key: str | None,
        lag_budget_s: float,
        poll_s: float,
        worker_timeout_s: float,
    ) -> None:
        self.ray = ray
        self.k = workers
        self.ray_address = ray_address
        self.endpoint = endpoint
        self.key = key
        self.lag_budget_s = lag_budget_s
        self.poll_s = poll_s
        self.worker_timeout_s = worker_timeout_s
        self.origin_ns = time.perf_counter_ns()
        self.me = host_identity()
        self.workers: list[_Worker] = []
        self.told_end_s = float("inf")  # the window's end the workers were given
        self.t0_s = float("nan")
        self.telemetry: TelemetryConfig | None = None
        self.sampler: TelemetrySampler | None = None

    def now(self) -> float:
        return (time.perf_counter_ns() - self.origin_ns) / 1e9

    # -- the level --------------------------------------------------------------------------------------

    def drive(
        self, spec: dict[str, Any], trajectories: list, *, progress: bool, start_timeout_s: float
    ) -> None:
        """Set up, place and start the workers, poll them until every one is done. At the end the
        workers that failed are removed from the pool (all of them on an error or an interrupt)."""
        self._set_up()
        spec["endpoint"] = self.endpoint
        writer = RunWriter(self.out_dir, flush_rows=256, flush_s=0.5)
        bar = None
        stop_sampler = threading.Event()
        sampler_thread = None
        ended = False
        try:
            self._place(start_timeout_s)
            if self.telemetry is not None:
                sampler_thread = threading.Thread(target=self._sample, args=(stop_sampler,), daemon=True)
                sampler_thread.start()
            self._start(spec, trajectories, start_timeout_s)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(desc=f"N={self.ledger.n_agents} on {self.k} workers", unit="req", leave=False)
            self._poll_until_done(writer, bar)
            self._measure_clocks(end=True)
            ended = True
        finally:
            if bar is not None:
                bar.close()
            stop_sampler.set()
            self._end_workers(keep=ended)
            if sampler_thread is not None:
                sampler_thread.join(30)
            writer.close()  # raises the write error, if any, once everything is stopped

    def _sample(self, stop: threading.Event) -> None:
        """The telemetry sampler on the driver's clock, in a thread with its own loop, until ``stop``."""

        async def run() -> None:
            assert self.telemetry is not None
            headers, secrets = self._headers()
            self.sampler = TelemetrySampler(
                self.telemetry,
                now=self.now,
                base_url=self.endpoint.base_url,
                out_dir=self.out_dir,
                headers=headers,
                secrets=secrets,
            )
            async with self.sampler:
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        try:
            asyncio.run(run())
        except Exception as exc:
            log.warning("telemetry sampler failed: %s: %s", type(exc).__name__, exc)

    def _headers(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """Request headers (the key as a bearer token, winning over a header of that name) and secrets."""
        ep = self.endpoint
        headers = dict(ep.headers)
        if self.key:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {self.key}"
        return headers, endpoint_secrets(ep, self.key)

    def _set_up(self) -> None:
        """What the server says about itself and the chat filler in its own tokens, asked once here."""

        async def ask() -> None:
            ep = self.endpoint
            headers, secrets = self._headers()
            async with open_session(8, headers) as session:
                self.manifest["server"] = await _server_info(session, ep, secrets)
                trajs = self.ledger.trajectories
                filler = ep.api == "chat" and any(t.messages is None for tr in trajs for t in tr.turns)
                if not filler or ep.overhead_tokens is not None:
                    return
                cal = await calibrate_chat_filler(session, ep, secrets)
                self.manifest["prompt_calibration"] = cal
                if "error" in cal:
                    log.warning("chat filler not calibrated (%s); prompt sizes may deviate", cal["error"])
                    return
                self.endpoint = dataclasses.replace(
                    ep, tokens_per_word=cal["tokens_per_word"], overhead_tokens=cal["overhead_tokens"]
                )

        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own (a notebook has one)
            pool.submit(asyncio.run, ask()).result()

    def _place(self, timeout_s: float) -> None:
        """The K workers from the pool (kept ones, or new ones spread over the cluster's nodes), their
        hosts, their clocks."""
        self.workers = [_Worker(i, actor, host=host) for i, actor, host in self.pool.acquire(timeout_s)]
        for w in self.workers:
            w.same_host = w.host.get("boot_id") is not None and w.host.get("boot_id") == self.me.get(
                "boot_id"
            )
        lower = [w.index for w in self.workers if w.host.get("nice", 0) > self.me.get("nice", 0)]
        if lower:  # Ray's default for worker processes on a cluster started without RAY_worker_niceness=0
            log.warning(
                "workers %s run at a lower scheduling priority (nice %s) than the driver (nice %s): on a "
                "busy host their event loops wake late; start the Ray nodes with RAY_worker_niceness=0",
                lower,
                self.workers[lower[0]].host.get("nice"),
                self.me.get("nice"),
            )
        self._measure_clocks(end=False)
        for w in self.workers:
            offset = w.clock_start.offset_s if w.clock_start is not None else 0.0
            w.origin_ns = self.origin_ns + (0 if w.same_host else round(offset * 1e9))

    def _measure_clocks(self, *, end: bool) -> None:
        ray = self.ray
        for w in self.workers:
            if w.failed is not None:
                continue
            actor = w.actor

            def read(actor: Any = actor) -> int:
                return int(ray.get(actor.clock_ns.remote(), timeout=10))

            try:
                # one host, one CLOCK_MONOTONIC: the offset is a check (0), 4 round trips do; across hosts 16
                off = measure_offset(read, rounds=4 if w.same_host else 16)
            except ray.exceptions.RayError as exc:
                log.warning("worker %d: clock not measured (%s)", w.index, type(exc).__name__)
                continue
            if end:
                w.clock_end = off
            else:
                w.clock_start = off

    def _start(self, spec: dict[str, Any], trajectories: list, timeout_s: float) -> None:
        ray = self.ray
        # pickled here: the actors pass them on to their level processes without importing their classes
        trajs_ref = ray.put(pickle.dumps(trajectories, protocol=pickle.HIGHEST_PROTOCOL))
        specs = [{**spec, "worker": w.index, "origin_ns": w.origin_ns} for w in self.workers]
        refs = [
            w.actor.start.remote(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL), trajs_ref)
            for w, s in zip(self.workers, specs)
        ]
        try:
            ok = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TargetError(f"the {self.k} workers were not ready within {timeout_s:g} s") from None
        for w, good in zip(self.workers, ok):
            if not good:
                w.failed = ray.get(w.actor.poll.remote()).get("error") or "the worker failed to start"
        if any(w.failed for w in self.workers):
            bad = next(w for w in self.workers if w.failed)
            raise TargetError(f"worker {bad.index} could not start: {bad.failed}")
        self.t0_s = self.now() + 0.2  # every worker hears it well before: one start for all
        ray.get([w.actor.go.remote(self.t0_s) for w in self.workers], timeout=self.worker_timeout_s)

    def _poll_until_done(self, writer: RunWriter, bar: Any) -> None:
        ray, ledger = self.ray, self.ledger
        pending: list[tuple] = []  # rows the ledger counts once the window's start is known
        drain_deadline = float("inf")
        shown = 0.0
        while True:
            live = [w for w in self.workers if not w.done and w.failed is None]
            if not live:
                break
            refs = {w.index: w.actor.poll.remote() for w in live}
            new_rows: list[tuple] = []
            for w in live:
                try:
                    res = ray.get(refs[w.index], timeout=self.worker_timeout_s)
                except ray.exceptions.GetTimeoutError:
                    self._fail(w, f"no answer for {self.worker_timeout_s:g} s")
                    continue
                except ray.exceptions.RayError as exc:
                    self._fail(w, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    continue
                for row in res["rows"]:
                    writer(row)
                new_rows += res["rows"]
                w.rows += len(res["rows"])
                w.sent = res["sent"]
                for agent, t_send in res["first_sends"]:
                    ledger.note_first_send(agent, t_send)
                if res["error"]:
                    self._fail(w, res["error"])
                if res["done"]:
                    w.done, w.stats = True, res.get("stats") or {}
            if bar is not None and new_rows:
                bar.update(len(new_rows))
            if ledger.window_known:
                ledger.record(pending + new_rows)
                pending = []
            else:
                pending += new_rows
            ledger.sent(sum(w.sent for w in self.workers))
            now = self.now()
            failed = [w for w in self.workers if w.failed is not None]
            if failed:
                ledger.abort(now, f"worker {failed[0].index} failed: {failed[0].failed}")
            if writer.error is not None:
                ledger.abort(now, str(writer.error))
            open_ = ledger.may_send(now)  # closes the window when the rules say so (or after an abort)
            end = ledger.planned_end_s()  # known ahead of time in the usual case: the workers stop on time
            if end < self.told_end_s:
                self.told_end_s = end
                for w in self.workers:
                    if w.failed is None and not w.done:
                        w.actor.close_window.remote(end)
            if not open_ and drain_deadline == float("inf"):
                drain_deadline = time.monotonic() + ledger.rules.drain_timeout_s + self.worker_timeout_s
            if time.monotonic() > drain_deadline:  # a worker that does not finish its drain
                for w in self.workers:
                    if not w.done and w.failed is None:
                        self._fail(w, "did not finish its drain in time")
            if bar is not None and now - shown >= 1.0:
                shown = now
                bar.set_description(ledger.window_progress(now), refresh=True)
            time.sleep(self.poll_s)
        if pending:
            ledger.record(pending)

    def _fail(self, w: _Worker, reason: str) -> None:
        w.failed = reason
        log.warning("worker %d failed: %s", w.index, reason)

    def _end_workers(self, *, keep: bool) -> None:
        """Stop the levels still running; then (``keep``: the level ended) remove the workers that failed
        from the pool and keep the others for the next level, or (an error, an interrupt) remove all."""
        ray = self.ray
        for w in self.workers:
            if not w.done and w.failed is None:
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.get(w.actor.stop.remote(), timeout=5)
        if keep:
            self.pool.release(w.index for w in self.workers if w.failed is not None or not w.done)
        else:
            self.pool.close()

    # -- results ----------------------------------------------------------------------------------------

    def finish(self) -> RunResult:
        """``requests.parquet`` (with ``worker``) and the final manifest (module docstring)."""
        raw = with_worker_column(read_raw_rows(self.out_dir, names=(RAW_PARTS_NAME,)), self.k)
        raw = self._correct_drift(raw)
        self.manifest["workers"] = self._workers_manifest()
        window = self.ledger.window_summary()
        return finish_level(self.out_dir, self.manifest, window, self.sampler, self._self_check, raw=raw)

    def _correct_drift(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Rows of a worker on another host whose clock drifted (end offset - start offset) by more than
        the uncertainty: the drift is taken off linearly over the level (docs/scale-out.md)."""
        for w in self.workers:
            a, b = w.clock_start, w.clock_end
            if w.same_host or a is None or b is None or b.at_ns == a.at_ns:
                continue
            drift = b.offset_s - a.offset_s
            if abs(drift) <= a.uncertainty_s + b.uncertainty_s:
                continue
            t_a, t_b = (a.at_ns - self.origin_ns) / 1e9, (b.at_ns - self.origin_ns) / 1e9
            sel = raw["worker"] == w.index
            for col in _TIME_COLUMNS:
                t = raw.loc[sel, col]
                raw.loc[sel, col] = t - drift * (t - t_a) / (t_b - t_a)
        return raw

    def _workers_manifest(self) -> dict[str, Any]:
        out = []
        for w in self.workers:
            a, b = w.clock_start, w.clock_end
            clock: dict[str, Any] = {
                "shared_monotonic_clock": w.same_host,
                "origin_shift_s": (w.origin_ns - self.origin_ns) / 1e9,
                "start": a.as_dict() if a else None,
                "end": b.as_dict() if b else None,
                "drift_s": (b.offset_s - a.offset_s) if a and b else None,
            }
            out.append(
                {
                    "worker": w.index,
                    "hostname": w.host.get("hostname"),
                    "pid": w.host.get("pid"),
                    "nice": w.host.get("nice"),
                    "agents": len(range(w.index, self.ledger.n_agents, self.k)),
                    "rows": w.rows,
                    "requests_sent": w.sent,
                    "failed": w.failed,
                    "levels_on_worker": w.stats.get("actor_levels"),  # this one included (1: a new worker)
                    "clock": clock,
                    "stats": w.stats,
                }
            )
        pool = getattr(self, "pool", None)
        return {
            "count": self.k,
            "ray_address": self.ray_address or "local",
            "assignment": "agent % workers",
            "driver": self.me,
            # the pool's history: workers placed so far (K + replacements) and levels run on it, this one too
            "pool": {"workers_started": pool.started, "levels": pool.levels} if pool is not None else None,
            "workers": out,
        }

    def _self_check(self, df: pd.DataFrame) -> dict[str, Any]:
        """``client_ok``: every worker's self-check and clock check passed (module docstring)."""
        budget = self.lag_budget_s
        reasons: list[str] = []
        per: list[dict[str, Any]] = []
        send_lag = (df["t_send_s"] - df["t_scheduled_s"]).to_numpy(dtype=float)
        for w in self.workers:
            st = w.stats
            mine = send_lag[(df["worker"] == w.index).to_numpy()]
            send_p95 = percentile(mine, 95) if len(mine) else float("nan")
            lag_p95 = st.get("loop_lag_p95_s", float("nan"))
            why: list[str] = []
            if not st:
                why.append(
                    "no self-check figures (the worker failed)" if w.failed else "no self-check figures"
                )
            if lag_p95 > budget:
                why.append(f"event-loop lag P95 {lag_p95 * 1e3:.1f} ms > budget {budget * 1e3:.1f} ms")
            if send_p95 > budget:
                why.append(
                    f"scheduled-to-sent delay P95 {send_p95 * 1e3:.1f} ms > budget {budget * 1e3:.1f} ms"
                )
            if st.get("connection_wait_max_s", 0.0) > budget:
                why.append(
                    f"{st['connection_waits']} requests waited for a free connection (max "
                    f"{st['connection_wait_max_s'] * 1e3:.1f} ms; pool size {st.get('connection_limit')})"
                )
            for c in (w.clock_start, w.clock_end):
                if not w.same_host and c is not None and c.uncertainty_s > budget:
                    why.append(
                        f"clock offset uncertainty {c.uncertainty_s * 1e3:.1f} ms > {budget * 1e3:.1f} ms"
                    )
            a, b = w.clock_start, w.clock_end
            if not w.same_host and a and b and abs(b.offset_s - a.offset_s) > budget:
                why.append(f"clock drift {abs(b.offset_s - a.offset_s) * 1e3:.1f} ms over the level > budget")
            reasons += [f"worker {w.index}: {r}" for r in why]
            per.append(
                {
                    "worker": w.index,
                    "client_ok": not why,
                    "loop_lag_p95_s": lag_p95,
                    "send_delay_p95_s": send_p95,
                    "reasons": why,
                }
            )
        stats = [w.stats for w in self.workers if w.stats]
        return {
            "client_ok": not reasons,
            "client_check": {
                "loop_lag_p95_s": max((s["loop_lag_p95_s"] for s in stats), default=float("nan")),
                "send_delay_p95_s": percentile(send_lag, 95) if len(send_lag) else float("nan"),
                "budget_s": budget,
                "connection_limit": sum(s.get("connection_limit", 0) for s in stats),
                "connection_waits": sum(s.get("connection_waits", 0) for s in stats),
                "server_closes_connections": any(s.get("server_closes_connections") for s in stats),
                "max_in_flight": max_in_flight(df),
                "body_reader": ",".join(sorted({s.get("body_reader", "") for s in stats})),
                "gc_pauses": sum(s.get("gc_pauses", 0) for s in stats),
                "gc_pause_max_s": max((s.get("gc_pause_max_s", 0.0) for s in stats), default=0.0),
                "stream_parser": ",".join(sorted({s.get("stream_parser", "") for s in stats})),
                "workers": per,
                "reasons": reasons,
            },
        }


def max_in_flight(df: pd.DataFrame) -> int:
    """The most requests in flight at once over all workers: sent (``t_send_s``) and not yet ended
    (``t_end_s``; an end at the same time as a send counts first)."""
    send = df["t_send_s"].to_numpy(dtype=float)
    end = df["t_end_s"].to_numpy(dtype=float)
    ok = ~np.isnan(send)
    send, end = send[ok], np.where(np.isnan(end[ok]), np.inf, end[ok])
    if not len(send):
        return 0
    times = np.concatenate([end, send])
    steps = np.concatenate([-np.ones(len(end)), np.ones(len(send))])
    order = np.lexsort((steps, times))  # at equal times -1 (an end) before +1
    return int(np.cumsum(steps[order]).max())
