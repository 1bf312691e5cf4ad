"""One scale-out worker: a Ray actor that runs its share of each level's agents in a plain child process.

:class:`LevelWorker` is a plain class (the driver makes it a Ray actor with ``ray.remote``; nothing here
imports Ray). The agents do not run in the actor's process, which runs Ray's own threads (core worker,
gRPC, metrics): the first :meth:`LevelWorker.start` starts the worker's level process (:mod:`.child`,
``python -m agentperf_kit.scaleout.child``), which then runs every level the actor feeds it over a pipe,
one after another (a sweep's levels pay the start-ups of the actor and its level process once); there the
agents run with the live replay's own code, with no thread beside their event loop. A thread of the actor
reads the child's frames (rows, first sends, and at each level's end its self-check figures) as they come
(a blocking read: nothing polls); the driver's calls:

- :meth:`poll` hands over the rows finished since the last poll, the agents' first sends, and at the end
  of a level the worker's self-check figures (:meth:`stats`);
- :meth:`close_window` gives the agents the window's end (the driver's decision, over all workers; ahead
  of time when it is known): they do not send at or after it, in-flight requests drain for
  ``rules.drain_timeout_s`` and the rest become ``cancelled_at_end`` rows, as in one process;
- :meth:`stop` cancels the level (the driver is ending the run early); :meth:`shutdown` ends the level
  process (the driver is done with the worker);
- :meth:`clock_ns` and :meth:`host` serve the driver's clock checks (:mod:`.clock`); the child shares
  this host's ``CLOCK_MONOTONIC``, so the actor's clock is the child's.

A child that dies (killed, out of memory) during a level fails the level: :meth:`poll` says ``done`` with
the error (its exit status), the rows it handed over are kept (the driver replaces the whole worker
before its next level). One that dies between levels is started again by the next :meth:`start`. An
actor that dies takes its child with it (the child gets SIGTERM on Linux; elsewhere its stdin closes and
it stops).

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
    """A Ray actor's body: runs levels' shares of agents, one level at a time, in one level process that it
    keeps between levels (module docstring)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._level_proc: subprocess.Popen | None = None  # the process the current level runs in
        self._reader: threading.Thread | None = None  # the thread reading self._proc's frames
        self._lock = threading.Lock()  # the state the reader thread fills
        self._stdin_lock = threading.Lock()
        self._levels = 0  # levels started on this worker
        self._new_level()

    def _new_level(self) -> None:
        """Empty per-level state (the next level's)."""
        with self._lock:
            self._rows: list[tuple] = []
            self._first: list[tuple[int, float]] = []
            self._sent = 0
            self._in_flight = 0
            self._error: str | None = None
            self._stats: dict[str, Any] = {}
        self._ready = threading.Event()
        self._done = threading.Event()
        self._answer = threading.Event()  # ready or done: what start() waits for
        self._running = False
        self._cpu0 = time.process_time()

    def host(self) -> dict[str, Any]:
        return host_identity()

    def clock_ns(self) -> int:
        """This host's ``perf_counter_ns`` (the driver's offset measurement; the child shares it)."""
        return time.perf_counter_ns()

    def start(self, spec: bytes, trajectories: bytes) -> bool:
        """Start a level with the agents of ``spec`` (pickled: the keys of :func:`.child.build_level`) and
        the pickled list ``trajectories`` in this worker's level process (started on the first level, and
        again when it has died since): returns once its HTTP session is open and the prompts are prepared
        (True), or it failed (False: :meth:`poll` says why); :meth:`go` starts the agents."""
        if self._running and not self._done.is_set():
            raise RuntimeError("this worker is running a level")
        self._levels += 1
        for _ in range(2):
            self._level_proc = None  # a reader of a process that ended before this level leaves it alone
            self._new_level()
            self._running = True
            proc = self._proc
            fresh = proc is None or proc.poll() is not None
            if fresh and not self._spawn():
                return False
            self._level_proc, reader = self._proc, self._reader
            assert reader is not None  # _spawn started it with the process
            self._send(("start", spec, trajectories))
            # the reader sets it (its end sets done); a reader that ended before this level was its
            # process's never will
            while not self._answer.wait(0.25):
                if not reader.is_alive() and not self._answer.is_set():
                    code = self._level_proc.poll() if self._level_proc is not None else None
                    why = f"the level's process ended before the level started (status {code})"
                    self._finish_level({}, why)
            if self._ready.is_set() and self._error is None:
                return True
            if fresh or self._ready.is_set():
                return False
            # the kept process died between levels without its end being seen yet (``poll`` can answer
            # None while the reader thread waits on it): the level has not started; a new process runs it
            self._proc = None
        return False

    def _spawn(self) -> bool:
        """A new level process and its reader thread; False (the level failed) when it cannot start."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the toolkit this process imported
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["AGENTPERF_LEVEL_PARENT"] = str(os.getpid())
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agentperf_kit.scaleout.child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:  # the driver reports it: the worker could not start
            self._error = f"the level's process did not start: {type(exc).__name__}: {exc}"[:500]
            self._done.set()
            self._answer.set()
            return False
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True, name="level-frames")
        self._reader.start()
        return True

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
        """The window ends at ``t_end_s`` (run seconds; ahead of time or past): no agent sends at or after
        it (an earlier time than one given before wins)."""
        self._send(("close", t_end_s))

    def stop(self) -> None:
        """Cancel the level now (rows of requests in flight become ``cancelled_at_end``)."""
        self._send(("stop",))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """End the level process (its stdin closed: it stops a running level and exits; killed after
        ``timeout_s``). The actor can start a new one for a next level."""
        proc = self._proc
        if proc is None:
            return
        with self._stdin_lock:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stats(self) -> dict[str, Any]:
        """The level's process's self-check figures (:func:`.child.level_stats`: seconds; its pid and
        CPU seconds; ``levels``: the levels it has run), plus this actor's pid and CPU seconds: over the
        level (``cpu_actor_s``, from :meth:`start`) and over its process's whole life
        (``cpu_actor_process_s``), and ``actor_levels``: the levels this actor has run."""
        if not self._stats:
            return {}
        cpu = time.process_time()
        return {
            **self._stats,
            "actor_pid": os.getpid(),
            "actor_levels": self._levels,
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

    def _finish_level(self, stats: dict[str, Any], error: str | None) -> None:
        with self._lock:
            self._stats, self._error = stats, error
        self._done.set()
        self._answer.set()

    def _read(self, proc: subprocess.Popen) -> None:
        """The child's frames into this actor's state, level after level, until it ends (or dies: a
        level running then fails with its exit status)."""
        assert proc.stdout is not None
        why: str | None = None
        try:
            while True:
                try:
                    msg = read_frame(proc.stdout)
                except EOFError:
                    break
                kind = msg[0]
                if kind == "ready":
                    self._ready.set()
                    self._answer.set()
                elif kind == "batch":
                    with self._lock:
                        self._rows += msg[1]
                        self._first += msg[2]
                        self._sent, self._in_flight = msg[3], msg[4]
                elif kind == "done":
                    self._finish_level(msg[1], msg[2])
            code = proc.wait()
            why = f"the level's process (pid {proc.pid}) {_exit_reason(code)}"
        except BaseException as exc:  # a torn frame: the worker failed
            why = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            with self._stdin_lock:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
            if self._level_proc is proc and not self._done.is_set():  # it died in a level: that level failed
                self._finish_level({}, why or "the level's process ended")


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} before the end of the level (its error is in the worker's log)"
