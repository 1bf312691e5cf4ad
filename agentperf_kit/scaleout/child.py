"""The level's process: a scale-out worker's share of the agents, run in a plain Python process.

A Ray actor's process runs Ray's own threads (the core worker, gRPC, metrics) beside whatever the actor
does; an event loop there shares the GIL and the CPU with them, and each of their wake-ups delays the
loop (the scheduled-to-sent delay of the self-check is what suffers first). So the actor
(:class:`.worker.LevelWorker`) does not run the agents itself: it starts this module as a child process
(``python -m agentperf_kit.scaleout.child``), feeds it over a pipe and collects its rows. Here the
agents run with the live replay's own code (:class:`agentperf_kit.replay._LiveLevel`, the same
per-request and per-chunk path, HTTP session, event loop - uvloop when installed -, loop-lag monitor and
collector settings as an in-process run), in a process with no thread beside its event loop.

The process lives as long as its actor and runs the levels the actor gives it one after another (a
sweep pays its start-up once per worker, not once per level). The pipes carry frames (:mod:`.frames`): an
8-byte little-endian length, then a pickle.

- **stdin** (from the actor), per level: ``("start", spec, trajectories)`` first (both pickled by the
  driver: the actor passes them on without unpickling, so its process never imports the replay's
  modules), then ``("go", t0_s)``, ``("close", t_end_s)`` (the window's end, ahead of time or past; an
  earlier one wins), ``("stop",)`` (cancel this level). End of file (the actor is gone or done) stops
  the level and ends the process.
- **stdout** (to the actor), per level: ``("ready",)`` once the HTTP session is open and the prompts are
  prepared; ``("batch", rows, first_sends, sent, in_flight)`` every :data:`FLUSH_S` while the agents run
  (rows finished since the last batch, as tuples of :data:`agentperf_kit.schema.RAW_COLUMNS`, agents'
  first sends, requests sent so far, requests in flight); last ``("done", stats, error)``: the
  self-check figures (:func:`level_stats`, with ``levels``: the levels this process has run) and None or
  why the level failed.

The writes are non-blocking (an asyncio pipe transport): a slow reader never stalls the event loop.
On Linux the process gets SIGTERM when the actor's process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pickle
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from ..orphans import die_with_parent
from ..percentiles import percentile
from ..replay import _LiveLevel
from .fleets import SubFleet, worker_nonce
from .frames import HEADER, frame, host_identity

__all__ = ["FLUSH_S", "build_level", "level_stats", "serve"]

FLUSH_S = 0.25  # how often rows go to the actor (the driver polls the actor every 0.5 s)


class _RowSink:
    """Rows wait in a deque until the next batch takes them."""

    error = None  # the replay's watch reads it: this sink never fails

    def __init__(self) -> None:
        self.rows: deque[tuple] = deque()
        self.append = self.rows.append

    def drain(self) -> list[tuple]:
        rows = self.rows
        return [rows.popleft() for _ in range(len(rows))]

    def close(self) -> None:
        pass


class _ChildLevel(_LiveLevel):
    """The live level with a gate: the driver set up the server info and chat filler once, and gives
    every worker one start time."""

    on_ready: Any
    go: asyncio.Event

    async def _set_up(self, session: Any) -> None:
        """Nothing: the driver asked the server about itself and calibrated the chat filler once."""

    async def _run_agents(self, session: Any) -> None:
        """Wait at the gate (session open, prompts prepared) until the driver gives the start time."""
        self.on_ready()
        await self.go.wait()
        await super()._run_agents(session)


def build_level(spec: dict[str, Any], trajectories: list, sink: _RowSink) -> _ChildLevel:
    """The worker ``spec["worker"]``'s level (keys: ``endpoint``, ``api_key``, ``n_agents``, ``rules``,
    ``seed``, ``marker_nonce``, ``run_id``, ``level``, ``origin_ns``, ``worker``, ``workers``,
    ``lag_budget_s``, ``fast_parse``, optional ``connection_limit``): its agents ``a % workers ==
    worker``, its rows into ``sink``, stamped on the run's clock (``perf_counter_ns - origin_ns``)."""
    n, w, k = spec["n_agents"], spec["worker"], spec["workers"]
    mine = len(range(w, n, k))
    level = _ChildLevel(
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
        writer=sink,
    )
    level.origin_ns = spec["origin_ns"]
    level.fleet = SubFleet(
        trajectories,
        n,
        spec["rules"],
        seed=spec["seed"],
        sink=sink.append,
        run_id=spec["run_id"],
        level=spec["level"],
        marker_nonce=worker_nonce(spec["marker_nonce"], w),
    ).split(w, k, math.nan)
    level.go = asyncio.Event()
    return level


def level_stats(level: _LiveLevel | None, cpu_s: float, thread_s: float) -> dict[str, Any]:
    """The worker's self-check figures (seconds): event-loop lag P95, connection waits, collector pauses,
    the most requests in flight at once, CPU seconds of this process over the level (``cpu_level_s``,
    from the start frame) and over its whole life (``cpu_process_s``: its start-up and imports too),
    of its event loop's thread over the level (``cpu_thread_s``), and this process's host and pid."""
    if level is None:
        return {}
    waits = level.conn_waits
    return {
        "loop_lag_p95_s": percentile(level.lag, 95) if level.lag else float("nan"),
        "connection_limit": level.limit,
        "connection_waits": len(waits),
        "server_closes_connections": bool(level.wire is not None and level.wire.closes_after_response),
        "connection_wait_max_s": max(waits, default=0.0),
        "max_in_flight": level.max_in_flight,
        "body_reader": level.body_reader,
        "event_loop": level.event_loop,
        "gc_pauses": len(level.gc_pauses),
        "gc_pause_max_s": max(level.gc_pauses, default=0.0),
        "stream_parser": "fast" if level.fast_parse else "json",
        "cpu_level_s": cpu_s,
        "cpu_process_s": time.process_time(),
        "cpu_thread_s": thread_s,
        **host_identity(),
    }


class _Frames(asyncio.Protocol):
    """Frames from the actor, decoded as they arrive; end of file becomes ``("eof",)``."""

    def __init__(self, on_frame: Any) -> None:
        self.buf = bytearray()
        self.on_frame = on_frame

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < HEADER.size + n:
                return
            obj = pickle.loads(bytes(self.buf[HEADER.size : HEADER.size + n]))
            del self.buf[: HEADER.size + n]
            self.on_frame(obj)

    def eof_received(self) -> bool:
        self.on_frame(("eof",))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_frame(("eof",))


class _Out(asyncio.Protocol):
    """The write side's protocol: knows when the transport has been closed (all data written)."""

    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class _Current:
    """The level this process runs now (between a start frame and its done frame), and how many it ran."""

    def __init__(self) -> None:
        self.active = False  # from its start frame to its done frame
        self.stopped = False
        self.level: _ChildLevel | None = None
        self.task: asyncio.Task | None = None
        self.levels = 0

    def stop(self) -> None:
        """Cancel the level now running (nothing between levels: a stop is about the level it was sent in)."""
        if not self.active or self.stopped:
            return
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


async def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Run levels one after another as the frames on ``stdin`` say, their rows and figures as frames on
    ``stdout``, until end of file (module docstring)."""
    loop = asyncio.get_running_loop()
    out_t, out = await loop.connect_write_pipe(_Out, stdout)
    starts: asyncio.Queue = asyncio.Queue()  # start frames; None at end of file
    cur = _Current()

    def on_frame(msg: tuple) -> None:
        kind = msg[0]
        if kind == "start":
            cur.active, cur.stopped = True, False
            starts.put_nowait(msg)
        elif kind == "go" and cur.level is not None:
            cur.level.fleet.t0_s = msg[1]  # type: ignore[attr-defined]
            cur.level.go.set()
        elif kind == "close" and cur.level is not None:
            cur.level.fleet.close_at(msg[1])  # type: ignore[attr-defined]
        elif kind == "stop":
            cur.stop()
        elif kind == "eof":  # the actor is gone: stop the level, then end
            cur.stop()
            starts.put_nowait(None)

    in_t, _ = await loop.connect_read_pipe(lambda: _Frames(on_frame), stdin)
    try:
        while (msg := await starts.get()) is not None:
            await _run_level(msg, out_t, cur)
    finally:
        in_t.close()
        out_t.close()  # written out before the transport closes
        with contextlib.suppress(Exception):
            await asyncio.wait_for(out.lost, 30)


async def _run_level(msg: tuple, out_t: asyncio.WriteTransport, cur: _Current) -> None:
    """One level from its start frame to its done frame (the done frame is written on every path)."""
    sink = _RowSink()
    error: str | None = None
    level: _ChildLevel | None = None
    p0, t0 = time.process_time(), time.thread_time()
    cur.levels += 1
    try:
        _, spec_pickle, trajectories_pickle = msg
        spec, trajectories = pickle.loads(spec_pickle), pickle.loads(trajectories_pickle)
        level = cur.level = build_level(spec, trajectories, sink)
        level.on_ready = lambda: out_t.write(frame(("ready",)))
        fleet = level.fleet

        def batch() -> None:
            first_sends = [fleet.first_sends.popleft() for _ in range(len(fleet.first_sends))]  # type: ignore[attr-defined]
            rows = sink.drain()
            out_t.write(frame(("batch", rows, first_sends, fleet.requests_sent, len(level.in_flight))))

        async def pump() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                if sink.rows or fleet.first_sends:  # type: ignore[attr-defined]
                    batch()

        task = cur.task = asyncio.create_task(level.drive())
        if cur.stopped:  # a stop that came with the start frame
            task.cancel()
        pumper = asyncio.create_task(pump())
        try:
            await task
        except asyncio.CancelledError:
            if not cur.stopped:
                raise
        except Exception as exc:  # the driver reports it; the level becomes invalid
            error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            pumper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumper
        batch()
    except Exception as exc:  # before the agents ran (a bad spec): the driver reports it
        error = error or f"{type(exc).__name__}: {exc}"[:500]
    finally:
        cur.active, cur.level, cur.task = False, None, None
        stats = level_stats(level, time.process_time() - p0, time.thread_time() - t0)
        if stats:
            stats["levels"] = cur.levels
        out_t.write(frame(("done", stats, error)))


def main() -> None:
    die_with_parent(int(os.environ.get("AGENTPERF_LEVEL_PARENT", "0")) or os.getppid())
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    stdout = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stdout carries the frames only: anything printed goes to stderr
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(stdin, stdout))
    else:
        uvloop.run(serve(stdin, stdout))


if __name__ == "__main__":
    main()
