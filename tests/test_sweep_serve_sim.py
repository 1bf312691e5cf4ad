"""The sweep in real time against the simulated HTTP server (``agentperf serve-sim``), short levels.

The server runs at --time-scale 10, so measured latencies are a tenth of the simulated ones.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from agentperf_kit.sweep import SweepConfig, run_sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sweep_against_the_real_time_simulated_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentperf_kit.cli", "serve-sim", "--port", str(port), "--time-scale", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=1) as r:
                    model = __import__("json").loads(r.read())["data"][0]["id"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"serve-sim did not come up: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        cfg = SweepConfig(
            target=base,
            model=model,
            accelerators=8,
            level_duration_s=2,
            warmup_s=0.5,
            min_trajectories=0,
            min_trajectories_per_agent=0,
            max_agents=2,
            drain_timeout_s=5,
            confidence=0.5,
            max_extensions=0,
            tiers="easy=1/60",
            out=str(tmp_path / "live"),
        )
        res = run_sweep(cfg, progress=False)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # waits and closes the stderr pipe
    assert list(res.levels["concurrency"]) == [1, 2]
    assert res.requests["ok"].all() and len(res.requests) > 0
    assert res.summary["tiers"][0]["max_agents"] == 2
