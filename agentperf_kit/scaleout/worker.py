"""One scale-out worker: a Ray actor that runs its share of a level's agents in a plain child process.

:class:`LevelWorker` is a plain class (the driver makes it a Ray actor with ``ray.remote``; nothing here
imports Ray). The agents do not run in the actor's process, which runs Ray's own threads (core worker,
gRPC, metrics): :meth:`LevelWorker.start` starts the level's process (:mod:`.child`, ``python -m
agentperf_kit.scaleout.child``) and feeds it the level over a pipe; there the agents run with the live
replay's own code, with no thread beside their event loop. A thread of the actor reads the child's
frames (rows, first sends, and at the end its self-check figures) as they come; the driver's calls:

- :meth:`poll` hands over the rows finished since the last poll, the agents' first sends, and at the end
  the worker's self-check figures (:meth:`stats`);
- :meth:`close_window` tells the agents the window closed (the driver's decision, over all workers): they
  stop sending, in-flight requests drain for ``rules.drain_timeout_s`` and the rest become
  ``cancelled_at_end`` rows, as in one process;
- :meth:`stop` cancels the level (the driver is ending the run early);
- :meth:`clock_ns` and :meth:`host` serve the driver's clock checks (:mod:`.clock`); the child shares
  this host's ``CLOCK_MONOTONIC``, so the actor's clock is the child's.

A child that dies (killed, out of memory) ends the worker: :meth:`poll` says ``done`` with the error
(its exit status), the rows it handed over are kept. An actor that dies takes its child with it (the
child gets SIGTERM on Linux; elsewhere its stdin closes and it stops).

Rows travel as the tuples of :data:`agentperf_kit.schema.RAW_COLUMNS` on the run's clock: the child's
``perf_counter_ns`` minus ``origin_ns``, which the driver chose so that the worker's clock reads the run's
time (the driver's origin on one host; the driver's origin plus the measured offset across hosts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .frames import host_identity, read_frame, write_frame

__all__ = ["LevelWorker", "host_identity"]


class LevelWorker:
    """A Ray actor's body: runs one level's share of agents at a time (module docstring)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # the state the reader thread fills
        self._stdin_lock = threading.Lock()
        self._rows: list[tuple] = []
        self._first: list[tuple[int, float]] = []
        self._sent = 0
        self._in_flight = 0
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: str | None = None
        self._stats: dict[str, Any] = {}
        self._cpu0 = 0.0

    def host(self) -> dict[str, Any]:
        return host_identity()

    def clock_ns(self) -> int:
        """This host's ``perf_counter_ns`` (the driver's offset measurement; the child shares it)."""
        return time.perf_counter_ns()

    def start(self, spec: bytes, trajectories: bytes) -> bool:
        """Start the level's process with the agents of ``spec`` (pickled: the keys of
        :func:`.child.build_level`) and the pickled list ``trajectories``: returns once its HTTP session
        is open and the prompts are prepared (True), or it failed (False: :meth:`poll` says why);
        :meth:`go` starts the agents."""
        if self._proc is not None:
            raise RuntimeError("this worker already ran a level")
        self._cpu0 = time.process_time()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the toolkit this process imported
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["AGENTPERF_LEVEL_PARENT"] = str(os.getpid())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "agentperf_kit.scaleout.child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:  # the driver reports it: the worker could not start
            self._error = f"the level's process did not start: {type(exc).__name__}: {exc}"[:500]
            self._done.set()
            return False
        threading.Thread(target=self._read, daemon=True, name="level-frames").start()
        self._send(("start", spec, trajectories))
        while not self._ready.wait(0.1):
            if self._done.is_set():
                break
        return self._ready.is_set() and self._error is None

    def go(self, t0_s: float) -> None:
        """Start the agents: the first plans are scheduled from ``t0_s`` (run seconds) over the ramp."""
        self._send(("go", t0_s))

    def poll(self) -> dict[str, Any]:
        """Rows and first sends since the last poll; ``done`` and the self-check figures at the end."""
        done = self._done.is_set()  # before the drain: a done worker's rows are all in this answer
        with self._lock:
            rows, self._rows = self._rows, []
            first, self._first = self._first, []
            out: dict[str, Any] = {
                "rows": rows,
                "first_sends": first,
                "sent": self._sent,
                "in_flight": self._in_flight,
                "done": done,
                "error": self._error,
            }
        if done:
            out["stats"] = self.stats()
        return out

    def close_window(self, t_end_s: float) -> None:
        """The driver closed the window at ``t_end_s`` (run seconds)."""
        self._send(("close", t_end_s))

    def stop(self) -> None:
        """Cancel the level now (rows of requests in flight become ``cancelled_at_end``)."""
        self._send(("stop",))

    def stats(self) -> dict[str, Any]:
        """The level's process's self-check figures (:func:`.child.level_stats`: seconds; its pid and
        CPU seconds), plus this actor's pid and CPU seconds: over the level (``cpu_actor_s``, from
        :meth:`start`) and over its process's whole life (``cpu_actor_process_s``)."""
        if not self._stats:
            return {}
        cpu = time.process_time()
        return {
            **self._stats,
            "actor_pid": os.getpid(),
            "cpu_actor_s": cpu - self._cpu0,
            "cpu_actor_process_s": cpu,
        }

    # -- the child --------------------------------------------------------------------------------------

    def _send(self, msg: tuple) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        # a child that is gone: the reader says why
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):
            write_frame(proc.stdin, msg)

    def _read(self) -> None:
        """The child's frames into this actor's state, until it ends (or dies: its exit status)."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                try:
                    msg = read_frame(proc.stdout)
                except EOFError:
                    break
                kind = msg[0]
                if kind == "ready":
                    self._ready.set()
                elif kind == "batch":
                    with self._lock:
                        self._rows += msg[1]
                        self._first += msg[2]
                        self._sent, self._in_flight = msg[3], msg[4]
                elif kind == "done":
                    with self._lock:
                        self._stats, self._error = msg[1], msg[2]
                    break
            code = proc.wait()
            if not self._stats and self._error is None:
                self._error = f"the level's process (pid {proc.pid}) {_exit_reason(code)}"
        except BaseException as exc:  # a torn frame: the worker failed
            self._error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            with self._stdin_lock:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
            self._done.set()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} before the end of the level (its error is in the worker's log)"
