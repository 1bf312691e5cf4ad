"""Side jobs of a simulated sweep in worker processes (agentperf_kit/sweep_jobs.py): the same results as
inline, errors raised where the result is asked for, workers gone after close."""

from __future__ import annotations

import math
import os

import pytest

from agentperf_kit.errors import ConfigError
from agentperf_kit.sweep_jobs import SideJobs, workers


@pytest.mark.parametrize("n", [0, 1, 2])
def test_jobs_give_the_same_results_in_workers_and_inline(n):
    jobs = SideJobs(n)
    try:
        jobs.submit("a", math.factorial, 10)
        jobs.submit("b", os.getpid)
        jobs.submit("c", int, "not a number")
        assert "a" in jobs and "z" not in jobs
        assert jobs.result("b") != os.getpid() if n else jobs.result("b") == os.getpid()
        assert jobs.result("a") == 3628800
        with pytest.raises(ValueError, match="not a number"):
            jobs.result("c")
        assert jobs.parallel == bool(n) and jobs.cpu_s >= 0 and (jobs.peak_rss_mb > 0) == bool(n)
        procs = [w.proc for w in jobs._workers]
    finally:
        jobs.close()
    assert all(p.returncode == 0 for p in procs)  # a closed worker has exited


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGENTPERF_SWEEP_WORKERS", "0")
    assert workers() == 0
    monkeypatch.setenv("AGENTPERF_SWEEP_WORKERS", "two")
    with pytest.raises(ConfigError, match="AGENTPERF_SWEEP_WORKERS"):
        workers()
    monkeypatch.delenv("AGENTPERF_SWEEP_WORKERS")
    assert workers() == max(0, min(2, (os.cpu_count() or 1) - 1))


def test_close_with_kill_stops_a_busy_worker_at_once():
    import time

    jobs = SideJobs(1)
    jobs.submit("sleep", time.sleep, 120)
    t0 = time.perf_counter()
    jobs.close(kill=True)
    assert time.perf_counter() - t0 < 60
