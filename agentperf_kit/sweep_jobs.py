"""Side jobs of a simulated sweep, in worker processes beside the sweep's own search when CPUs allow.

A sweep on the simulator has work that does not depend on its bisection: the band's ``low`` and
``high`` searches (:mod:`agentperf_kit.sweep_band`, which need only the ramp's levels) and the unloaded
replay behind the task slowdowns (:func:`agentperf_kit.tasks.unloaded_baseline`, which needs nothing
measured). :class:`SideJobs` runs them in worker processes while the main process bisects, or, when
:func:`workers` is 0, inline when their result is asked for. Each job is a pure function of the sweep's
configuration and the levels on disk, so both ways give the same results and write the same files.

A worker is ``python -m agentperf_kit.sweep_jobs``, started at once (it imports the toolkit while the
ramp runs), reading pickled jobs ``(function, arguments)`` on its stdin and writing each result on its
stdout in order. Unlike ``multiprocessing``'s spawn it never re-imports the caller's ``__main__``, so a
script that calls :func:`~agentperf_kit.sweep.run_sweep` at its top level works as before.

Workers: ``AGENTPERF_SWEEP_WORKERS`` (an integer; 0 runs everything inline), else one CPU fewer than
the machine has, at most 2 (the band's two searches): on 2 CPUs one worker, whose jobs (the baseline,
then the ``low`` and ``high`` searches) take about as long as the main process's bisection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ConfigError
from .orphans import die_with_parent

log = logging.getLogger(__name__)

__all__ = ["SideJobs", "workers"]


def workers() -> int:
    """Worker processes for a simulated sweep's side jobs (see the module docstring)."""
    env = os.environ.get("AGENTPERF_SWEEP_WORKERS")
    if env is not None and env.strip():
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(
                f"AGENTPERF_SWEEP_WORKERS must be an integer >= 0, got {env!r}: unset it or set e.g. 0 "
                "(inline) or 2"
            ) from None
        if n < 0:
            raise ConfigError(f"AGENTPERF_SWEEP_WORKERS must be >= 0, got {n}")
        return n
    return max(0, min(2, (os.cpu_count() or 1) - 1))


class _Worker:
    """One worker process and the names of the jobs sent to it, in order."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # the toolkit this process imported
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["AGENTPERF_SWEEP_PARENT"] = str(os.getpid())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentperf_kit.sweep_jobs"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.pending: list[str] = []

    def send(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        assert self.proc.stdin is not None
        pickle.dump((fn, args), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()
        self.pending.append(name)

    def receive(self) -> tuple[str, tuple[bool, Any, float, float]]:
        assert self.proc.stdout is not None
        try:
            reply = pickle.load(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(
                f"a sweep worker process (agentperf_kit.sweep_jobs) exited with status {code} before "
                f"finishing {self.pending[0]!r}; its error is on stderr above. Set "
                "AGENTPERF_SWEEP_WORKERS=0 to run the sweep's side jobs in this process."
            ) from None
        return self.pending.pop(0), reply

    def close(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # end of jobs: the worker exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class SideJobs:
    """Named jobs: :meth:`submit` starts one (in a worker, or deferred), :meth:`result` waits for it
    (running a deferred one now); :meth:`close` stops the workers (call it in a ``finally``).
    ``cpu_s`` (CPU seconds the jobs took in workers) and ``peak_rss_mb`` (the largest worker's peak
    resident memory, MB) say what the workers cost; both stay 0 inline."""

    def __init__(self, n_workers: int | None = None) -> None:
        self.n_workers = workers() if n_workers is None else n_workers
        self._workers = [_Worker() for _ in range(self.n_workers)]
        self._where: dict[str, _Worker] = {}
        self._deferred: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._results: dict[str, tuple[bool, Any]] = {}
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0

    @property
    def parallel(self) -> bool:
        return bool(self._workers)

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        if not self._workers:
            self._deferred[name] = (fn, args)
            return
        w = min(self._workers, key=lambda w: len(w.pending))
        w.send(name, fn, args)
        self._where[name] = w

    def __contains__(self, name: str) -> bool:
        return name in self._where or name in self._deferred or name in self._results

    def result(self, name: str) -> Any:
        if name in self._deferred:
            fn, args = self._deferred.pop(name)
            self._results[name] = (True, fn(*args))
        while name not in self._results:
            got, (ok, value, cpu_s, rss_mb) = self._where[name].receive()
            self.cpu_s += cpu_s
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb)
            self._results[got] = (ok, value)
        ok, value = self._results[name]
        if not ok:
            raise value
        return value

    def close(self, kill: bool = False) -> None:
        """Stop the workers: after their jobs (``kill=False``), or now (an error or an interrupt)."""
        for w in self._workers:
            w.close(kill)
        self._workers = []


def _serve(jobs: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: run each pickled job, reply (ok, value or exception, CPU s, peak RSS MB)."""
    while True:
        try:
            fn, args = pickle.load(jobs)
        except EOFError:
            return
        cpu0 = time.process_time()
        try:
            ok, value = True, fn(*args)
        except Exception as exc:  # sent back, raised by SideJobs.result in the sweep's process
            ok, value = False, exc
        cpu = time.process_time() - cpu0
        try:
            import resource

            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        except ImportError:  # not on this platform
            rss_mb = 0.0
        try:
            data = pickle.dumps((ok, value, cpu, rss_mb), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable value or exception
            data = pickle.dumps(
                (False, RuntimeError(f"{type(value).__name__}: {value} ({exc})"), cpu, rss_mb)
            )
        replies.write(data)
        replies.flush()


if __name__ == "__main__":
    die_with_parent(int(os.environ.get("AGENTPERF_SWEEP_PARENT", "0")) or os.getppid())
    # stdout carries the replies only: anything printed goes to stderr
    _replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, _replies)
