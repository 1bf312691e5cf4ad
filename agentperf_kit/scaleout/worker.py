"""One scale-out worker: a share of a level's agents, run by the live replay's own code in this process.

:class:`LevelWorker` is a plain class (the driver makes it a Ray actor with ``ray.remote``; nothing here
imports Ray). :meth:`LevelWorker.start` runs the worker's agents (:class:`~.fleets.SubFleet`) with
:class:`agentperf_kit.replay._LiveLevel` - the same per-request and per-chunk code as an in-process run,
its own HTTP session, event loop (uvloop when installed), event-loop lag monitor and collector settings -
in a thread of its own, so that the actor's other methods answer while it runs:

- :meth:`poll` hands over the rows finished since the last poll, the agents' first sends, and at the end
  the worker's self-check figures (:meth:`stats`);
- :meth:`close_window` tells the agents the window closed (the driver's decision, over all workers): they
  stop sending, in-flight requests drain for ``rules.drain_timeout_s`` and the rest become
  ``cancelled_at_end`` rows, as in one process;
- :meth:`stop` cancels the level (the driver is ending the run early);
- :meth:`clock_ns` and :meth:`host` serve the driver's clock checks (:mod:`.clock`).

Rows travel as the tuples of :data:`agentperf_kit.schema.RAW_COLUMNS` on the run's clock: the worker's
``perf_counter_ns`` minus ``origin_ns``, which the driver chose so that the worker's clock reads the run's
time (the driver's origin on one host; the driver's origin plus the measured offset across hosts).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..percentiles import percentile
from ..replay import _LiveLevel
from .fleets import SubFleet, worker_nonce

__all__ = ["LevelWorker", "host_identity"]

SWITCH_INTERVAL_S = 0.0005  # the worker process's GIL switch interval (Python's default: 5 ms)


def host_identity() -> dict[str, Any]:
    """This process's host: name, pid and the kernel's boot id (equal boot ids: one
    ``CLOCK_MONOTONIC``, which ``time.perf_counter_ns`` reads on Linux)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "boot_id": boot_id}


class _RowSink:
    """The worker's row sink: rows wait in a deque (thread-safe appends and pops) until :meth:`drain`."""

    error = None  # the replay's watch reads it: this sink never fails

    def __init__(self) -> None:
        self.rows: deque[tuple] = deque()
        self.append = self.rows.append

    def drain(self) -> list[tuple]:
        rows = self.rows
        return [rows.popleft() for _ in range(len(rows))]

    def close(self) -> None:
        pass


class _WorkerLevel(_LiveLevel):
    ready: threading.Event
    go: asyncio.Event

    async def _set_up(self, session: Any) -> None:
        """Nothing: the driver asked the server about itself and calibrated the chat filler once."""

    async def _run_agents(self, session: Any) -> None:
        """Wait at the gate (session open, prompts prepared) until the driver gives the start time."""
        self.ready.set()
        await self.go.wait()
        await super()._run_agents(session)


class LevelWorker:
    """A Ray actor's body: runs one level's share of agents at a time (module docstring)."""

    def __init__(self) -> None:
        # the level's event loop shares this process's GIL with Ray's own threads and the actor's calls
        # (poll); with Python's 5 ms switch interval a send waited up to 5 ms for the GIL (the
        # scheduled-to-sent delay P95 sat at 5-6 ms at 32-64 agents per worker)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._sink = _RowSink()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._level: _WorkerLevel | None = None
        self._fleet: SubFleet | None = None
        self._done = threading.Event()
        self._error: str | None = None
        self._cpu: tuple[float, float] = (0.0, 0.0)

    def host(self) -> dict[str, Any]:
        return host_identity()

    def clock_ns(self) -> int:
        """This process's ``perf_counter_ns`` (the driver's offset measurement)."""
        return time.perf_counter_ns()

    def start(self, spec: dict[str, Any], trajectories: list) -> bool:
        """Get the agents of ``spec`` ready (keys: ``endpoint``, ``api_key``, ``n_agents``, ``rules``,
        ``seed``, ``marker_nonce``, ``run_id``, ``level``, ``origin_ns``, ``worker``, ``workers``,
        ``lag_budget_s``, ``fast_parse``, optional ``connection_limit``): returns once the HTTP session is
        open and the prompts are prepared (or the level failed: :meth:`poll` says why); :meth:`go` starts
        them."""
        if self._thread is not None:
            raise RuntimeError("this worker already ran a level")
        ready = threading.Event()
        args = (spec, trajectories, ready)
        self._thread = threading.Thread(target=self._run, args=args, daemon=True, name="level")
        self._thread.start()
        ready.wait()
        return self._error is None

    def go(self, t0_s: float) -> None:
        """Start the agents: the first plans are scheduled from ``t0_s`` (run seconds) over the ramp."""
        level, loop = self._level, self._loop
        if level is None or loop is None:
            return

        def release() -> None:
            level.fleet.t0_s = t0_s  # type: ignore[attr-defined]
            level.go.set()

        loop.call_soon_threadsafe(release)

    def poll(self) -> dict[str, Any]:
        """Rows and first sends since the last poll; ``done`` and the self-check figures at the end."""
        done = self._done.is_set()  # before the drain: a done worker's rows are all in this answer
        fleet = self._fleet
        first = list(fleet.first_sends) if fleet is not None else []
        if fleet is not None:
            for _ in range(len(first)):
                fleet.first_sends.popleft()
        out: dict[str, Any] = {
            "rows": self._sink.drain(),
            "first_sends": first,
            "sent": fleet.requests_sent if fleet is not None else 0,
            "in_flight": len(self._level.in_flight) if self._level is not None else 0,
            "done": done,
            "error": self._error,
        }
        if done:
            out["stats"] = self.stats()
        return out

    def close_window(self, t_end_s: float) -> None:
        """The driver closed the window at ``t_end_s`` (run seconds)."""
        if self._loop is not None and self._fleet is not None:
            self._loop.call_soon_threadsafe(self._fleet.close_at, t_end_s)

    def stop(self) -> None:
        """Cancel the level now (rows of requests in flight become ``cancelled_at_end``)."""
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)

    def stats(self) -> dict[str, Any]:
        """The worker's self-check figures (seconds): event-loop lag P95, connection waits, collector
        pauses, the most requests in flight at once, and CPU seconds of the process and of the level's
        thread."""
        lv = self._level
        if lv is None:
            return {}
        waits = lv.conn_waits
        return {
            "loop_lag_p95_s": percentile(lv.lag, 95) if lv.lag else float("nan"),
            "connection_limit": lv.limit,
            "connection_waits": len(waits),
            "connection_wait_max_s": max(waits, default=0.0),
            "max_in_flight": lv.max_in_flight,
            "body_reader": lv.body_reader,
            "gc_pauses": len(lv.gc_pauses),
            "gc_pause_max_s": max(lv.gc_pauses, default=0.0),
            "stream_parser": "fast" if lv.fast_parse else "json",
            "cpu_process_s": self._cpu[0],
            "cpu_thread_s": self._cpu[1],
            **host_identity(),
        }

    # -- the level's thread -----------------------------------------------------------------------------

    def _run(self, spec: dict[str, Any], trajectories: list, ready: threading.Event) -> None:
        p0 = time.process_time()
        try:
            try:
                import uvloop

                uvloop.run(self._main(spec, trajectories, ready))
            except ImportError:
                asyncio.run(self._main(spec, trajectories, ready))
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # the driver reports it; the level becomes invalid
            self._error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            self._cpu = (time.process_time() - p0, time.thread_time())
            ready.set()
            self._done.set()

    async def _main(self, spec: dict[str, Any], trajectories: list, ready: threading.Event) -> None:
        n, w, k = spec["n_agents"], spec["worker"], spec["workers"]
        mine = len(range(w, n, k))
        level = _WorkerLevel(
            spec["endpoint"],
            spec["api_key"],
            Path(os.devnull),  # nothing is written here: rows go to the sink
            spec.get("connection_limit") or mine + 8,
            spec["lag_budget_s"],
            None,
            False,
            spec["fast_parse"],
            False,
            spec["run_id"],
            spec["level"],
            writer=self._sink,
        )
        level.origin_ns = spec["origin_ns"]
        fleet = SubFleet(
            trajectories,
            n,
            spec["rules"],
            seed=spec["seed"],
            sink=self._sink.append,
            run_id=spec["run_id"],
            level=spec["level"],
            marker_nonce=worker_nonce(spec["marker_nonce"], w),
        ).split(w, k, math.nan)
        level.fleet = self._fleet = fleet
        level.ready, level.go = ready, asyncio.Event()
        self._level = level
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        await level.drive()
