"""``agentperf run`` end to end: simulated target, and a live run killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from agentperf_kit.cli import main
from agentperf_kit.results import load_run
from agentperf_kit.trajectories import default_trajectories, fit_context, trajectory_stats
from tests.conftest import assert_live_run_measured
from tests.sse_servers import SSEServer, serving


def test_run_sim_writes_the_same_files_as_a_live_run(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(
        [
            "run",
            "--target",
            "sim",
            "-n",
            "4",
            "--duration",
            "60",
            "--min-trajectories",
            "0",
            "--min-trajectories-per-agent",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "P25 output speed" in text and "meets AA rules: no" in text
    res = load_run(out)
    assert res.requests.in_window.any() and res.manifest["power_scope"] == "modelled"


def test_fit_context_keeps_structure():
    small = fit_context(default_trajectories()[:30], 4096)
    s = trajectory_stats(small)
    assert s["max_request_tokens"] <= 4096 - 64
    assert s["cached_fraction"] > 0.85
    for tr in small:
        for prev, t in zip(tr.turns, tr.turns[1:]):
            if t.phase == prev.phase:
                assert t.prefix_tokens == prev.input_tokens


@pytest.fixture
def server_thread():
    with serving(SSEServer(ttft_s=0.05, itl_s=0.002)) as server:
        yield server


def test_sigkilled_live_run_leaves_readable_rows(tmp_path, server_thread):
    out = tmp_path / "live"
    cmd = [
        sys.executable,
        "-m",
        "agentperf_kit.cli",
        "run",
        "--target",
        server_thread.base_url,
        "--model",
        "m",
        "--endpoint",
        "completions",
        "-n",
        "4",
        "--duration",
        "600",
        "--warmup",
        "1",
        "--max-context",
        "2000",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(server_thread.bodies) < 12:
        time.sleep(0.1)
    time.sleep(1.0)  # let the writer flush
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # waits and closes the stderr pipe
    res = load_run(out)
    assert res.extra.get("interrupted")
    assert len(res.requests) >= 6
    assert res.requests.ok.all()
    assert len(res.requests) <= len(server_thread.bodies)


def test_live_run_sends_extra_headers_and_body_fields_and_never_writes_a_credential(
    tmp_path, server_thread, capsys
):
    out = tmp_path / "hdr"
    rc = main(
        [
            "run",
            "--target",
            server_thread.base_url,
            "--model",
            "m",
            "-n",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--min-trajectories",
            "0",
            "--min-trajectories-per-agent",
            "0",
            "--max-context",
            "2000",
            "--header",
            "X-Bench-Run: cli-test",
            "--header",
            "Authorization: Bearer sk-notwrittenanywhere42",
            "--extra-body",
            '{"top_k": 1, "priority": 3}',
            "--on-error",
            "abandon",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert_live_run_measured(rc, out)
    assert server_thread.bodies and all(b["top_k"] == 1 and b["priority"] == 3 for b in server_thread.bodies)
    assert all(h.get("X-Bench-Run") == "cli-test" for h in server_thread.headers)
    assert load_run(out).manifest["config"]["rules"]["on_error"] == "abandon"
    for f in out.iterdir():
        assert b"sk-notwrittenanywhere42" not in f.read_bytes(), f.name
    assert "sk-notwrittenanywhere42" not in capsys.readouterr().out
    for bad in (["--header", "no colon here"], ["--extra-body", "[1, 2]"], ["--extra-body", "{not json"]):
        base = ["run", "--target", server_thread.base_url, "--model", "m", "-n", "1", "--duration", "1"]
        rc = main([*base, "--out", str(tmp_path / "x"), *bad])
        assert rc == 2
        assert "error:" in capsys.readouterr().err
