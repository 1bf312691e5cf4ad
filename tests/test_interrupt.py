"""A Ctrl-C ends a live level even where its cancellation is lost on the way (an await that swallows it):
the level notes the signal itself and ends within a watch tick, keeping the rows written so far."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.replay import Endpoint, run_live_sync
from agentperf_kit.results import load_run
from agentperf_kit.trajectories import default_trajectories
from tests.sse_servers import SSEServer, serving


def test_a_ctrl_c_whose_cancellation_is_lost_still_ends_the_level(tmp_path):
    """A SIGINT handler that does nothing stands for asyncio's runner whose cancellation some await
    swallowed: the level still ends (cancelled) within seconds of the signal instead of running to the
    end of its 300-s window, and its file of rows is readable."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    rules = RunRules(warmup_s=0.2, duration_s=300, min_trajectories=0, min_trajectories_per_agent=0)
    sent: list[float] = []
    try:
        with serving(SSEServer(ttft_s=0.02, itl_s=0.01)) as srv:

            def interrupt() -> None:
                deadline = time.monotonic() + 60
                while len(srv.bodies) < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
                sent.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=interrupt, daemon=True).start()
            endpoint = Endpoint(srv.base_url, "m", api="completions")
            with pytest.raises(asyncio.CancelledError):
                run_live_sync(endpoint, default_trajectories()[:4], 2, rules, out_dir=tmp_path / "o",
                              progress=False)  # fmt: skip
            ended = time.monotonic()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and ended - sent[0] < 30  # the window was 300 s
    assert signal.getsignal(signal.SIGINT) is previous
    assert (tmp_path / "o").exists()
    assert len(load_run(tmp_path / "o").requests) >= 1  # the rows written so far load
