"""Side jobs of a simulated sweep, in worker processes beside the sweep's own search when CPUs allow.

A sweep on the simulator has work that does not depend on its bisection: the band's ``low`` and
``high`` searches (:mod:`agentperf_kit.sweep_band`, which need only the ramp's levels) and the unloaded
replay behind the task slowdowns (:func:`agentperf_kit.tasks.unloaded_baseline`, which needs nothing
measured). :class:`SideJobs` runs them in a pool of worker processes (``forkserver``: a clean process
with the toolkit imported once, forked per worker) while the main process bisects, or, when
:func:`workers` is 0, inline when their result is asked for. Each job is a pure function of the sweep's
configuration and the levels on disk, so both ways give the same results and write the same files.

Workers: ``AGENTPERF_SWEEP_WORKERS`` (an integer; 0 runs everything inline), else 2 when the machine has
at least 2 CPUs, else 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SideJobs", "workers"]

_PRELOAD = [
    "agentperf_kit.sweep",
    "agentperf_kit.sim.virtual",
    "agentperf_kit.tasks",
    "agentperf_kit.metrics",
]


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
    return 2 if (os.cpu_count() or 1) >= 2 else 0


class SideJobs:
    """Named jobs: :meth:`submit` starts one (in a worker, or deferred), :meth:`result` waits for it
    (running a deferred one now); :meth:`close` stops the workers (call it in a ``finally``).
    ``cpu_s`` (CPU seconds the jobs took in workers) and ``peak_rss_mb`` (the largest worker's peak
    resident memory, MB) say what the workers cost; both stay 0 inline."""

    def __init__(self, n_workers: int | None = None) -> None:
        n = workers() if n_workers is None else n_workers
        self.n_workers = n
        self._pool: ProcessPoolExecutor | None = None
        if n > 0:
            self._pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
        self._jobs: dict[str, Future | tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is not None:
            self._jobs[name] = self._pool.submit(_timed, fn, *args)
        else:
            self._jobs[name] = (fn, args)

    def __contains__(self, name: str) -> bool:
        return name in self._jobs

    def result(self, name: str) -> Any:
        job = self._jobs[name]
        if isinstance(job, Future):
            value = job.result()
            if isinstance(value, _Timed):
                self.cpu_s += value.cpu_s
                self.peak_rss_mb = max(self.peak_rss_mb, value.peak_rss_mb)
                value = value.value
                self._jobs[name] = _done(value)
            return value
        fn, args = job
        value = fn(*args)
        self._jobs[name] = _done(value)
        return value

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Timed:
    """A job's value with the CPU time it took and its worker's peak resident memory."""

    def __init__(self, value: Any, cpu_s: float, peak_rss_mb: float) -> None:
        self.value, self.cpu_s, self.peak_rss_mb = value, cpu_s, peak_rss_mb


def _timed(fn: Callable[..., Any], *args: Any) -> _Timed:
    cpu0 = time.process_time()
    value = fn(*args)
    try:
        import resource

        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # not on this platform
        rss_mb = 0.0
    return _Timed(value, time.process_time() - cpu0, rss_mb)


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f
