"""Live runs you can trust: every fault a server can produce against a real run, through the real HTTP path.

Each fault runs N agents against the fault-injecting loopback server (``tests/sse_servers.py``) and
checks: one row per request the server saw, the error class, full timing (``t_end_s``) on failed rows,
the agent's next send no earlier than the end of the failed request plus the turn's tool delay, in
flight never above N (client and server), and the verdict effect where there is one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.errors import OutputError
from agentperf_kit.recorder import read_raw_rows
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.trajectories.model import Trajectory, Turn
from tests.sse_servers import SSEServer

N = 3
DELAY = 0.15  # tool delay of every turn (s)
RULES = RunRules(
    warmup_s=0.2,
    duration_s=1.5,
    min_trajectories=0,
    min_trajectories_per_agent=0,
    ramp_s=0.1,
    drain_timeout_s=3,
    random_start_turn=False,
    abort_after_s=0,
)
# Where no time limit is involved (the fault answers at once, or the stream is clean), a shorter window
# still gives every agent several requests, each followed by its tool delay; the timeouts keep RULES.
QUICK = dataclasses.replace(RULES, duration_s=0.6)
TIMEOUTS = ("first_token_timeout", "stall_timeout")


def _trajs(n=4, turns=3, out=12, delay=DELAY):
    return [
        Trajectory(
            f"t{i}",
            [
                Turn(0, 0 if k == 0 else 40 + 5 * (k - 1), 40 + 5 * k, out, tool_delay_s=delay)
                for k in range(turns)
            ],
        )
        for i in range(n)
    ]


def _run(server_kw, *, n=N, rules=RULES, api="chat", ep_kw=None, **kw):
    async def go(tmp):
        server = await SSEServer(**server_kw).start()
        try:
            ep = Endpoint(
                server.base_url,
                "test-model",
                api=api,
                stall_timeout_s=0.5,
                first_token_timeout_s=0.8,
                request_timeout_s=5,
                **(ep_kw or {}),
            )
            t0 = time.monotonic()
            res = await run_live(ep, _trajs(), n, rules, out_dir=tmp, progress=False, **kw)
            res.manifest["wall_s"] = time.monotonic() - t0
        finally:
            await server.stop()
        return res, server

    return asyncio.run(go(tempfile.mkdtemp()))


def _check_rows(res, server, n=N):
    df = res.requests
    assert len(df) == len(server.bodies) > 0  # one row per request the server saw
    assert server.max_in_flight <= n
    assert res.manifest["client_check"]["max_in_flight"] <= n
    done = df[df.error != "cancelled_at_end"]
    assert done.t_end_s.notna().all()
    assert (done.t_end_s >= done.t_send_s).all()
    waits = done.tool_wait_s.dropna()
    assert len(waits) > 0
    assert (waits >= DELAY - 1e-3).all(), waits.min()  # the next turn waited its tool delay
    return done


FAILS = [
    ("http500", "http_error", "500: "),
    ("http429", "rate_limited", "Retry-After=7"),
    ("http404", "http_error", "does not exist"),
    ("no_headers", "first_token_timeout", "within 0.8 s"),
    ("reset", "connect_error", ""),
    ("json200", "not_sse", "'application/json"),
    ("html200", "not_sse", "'text/html"),
    ("keepalive", "first_token_timeout", ""),
    ("drip", "first_token_timeout", ""),
    ("empty_events", "first_token_timeout", ""),
    ("keepalive_stall", "stall_timeout", "after the last one"),
    ("stall", "stall_timeout", ""),
    ("cut", "stream_cut", ""),
    ("malformed", "malformed_json", "not JSON"),
    ("stream_error", "stream_error", "engine died"),
]


@pytest.mark.parametrize(("fault", "error", "detail"), FAILS)
def test_every_fault_is_a_timed_row_and_the_agent_waits(fault, error, detail):
    rules = RULES if error in TIMEOUTS else QUICK
    res, server = _run({"fault": fault, "ttft_s": 0.01, "itl_s": 0.002}, rules=rules)
    done = _check_rows(res, server)
    assert set(done.error) == {error}, done[["error", "error_detail"]].drop_duplicates().to_string()
    assert done.error_detail.str.contains(detail, regex=False).all(), done.error_detail.iloc[0]
    assert (done.ttft_s[~done.t_first_s.notna()] == math.inf).all()
    assert (done.output_speed_tps.fillna(0) == 0).all()
    if fault == "http429":
        assert (done.retry_after_s == 7).all()
    else:
        assert done.retry_after_s.isna().all()
    if error in TIMEOUTS:  # timed out at the limit, not at the end
        lag = res.manifest["client_check"]["loop_lag_p95_s"]  # the run's own measure of its lateness
        assert (done.e2e_s < 0.8 + 0.5 + 20 * lag).all(), (done.e2e_s.max(), lag)
    cancelled = res.requests[res.requests.error == "cancelled_at_end"]
    assert len(cancelled) <= N


def test_in_flight_never_exceeds_n_with_mixed_faults():
    """Failures answered at once (429, 500, resets), timeouts and clean streams, mixed: the server never
    sees more than N requests at once (it counts a request until its client has gone)."""
    faults = ["http429", None, "stall", "reset", "http500", "cut", None, "keepalive", "malformed"]
    res, server = _run({"fault": faults, "ttft_s": 0.02, "itl_s": 0.002}, n=4)
    done = _check_rows(res, server, n=4)
    assert {"rate_limited", "stall_timeout", "connect_error", "http_error", ""} <= set(done.error)


LIES = [
    ("usage_10x", "completion_tokens 120 != forced output 12"),
    ("usage_cached", "cached_tokens"),
    ("usage_negative", "prompt_tokens=-3"),
    ("usage_huge", "completion_tokens=1180591620717411303424"),
]


@pytest.mark.parametrize(("fault", "note"), LIES)
def test_usage_that_disagrees_is_flagged_and_not_trusted(fault, note):
    res, server = _run({"fault": fault, "ttft_s": 0.01, "itl_s": 0.01}, rules=QUICK)
    done = _check_rows(res, server)
    assert done.ok.all()
    assert done.usage_mismatch.all()
    assert done.note.str.contains(note, regex=False).all(), done.note.iloc[0]
    # speed from the streamed chunks, not from the claimed count
    streamed = (done.n_chunks - 1) / (done.t_last_s - done.t_first_s)
    assert done.output_speed_tps.to_numpy() == pytest.approx(streamed.to_numpy())
    window = res.manifest["window"]
    assert window["usage_mismatch_in_window"] > 0
    assert res.manifest["meets_aa_rules"] is False
    assert any("usage_mismatch" in r for r in window["aa_rules_reasons"])


def test_clean_usage_is_not_flagged():
    res, server = _run({"ttft_s": 0.01, "itl_s": 0.002}, api="completions", rules=QUICK)
    done = _check_rows(res, server)
    assert done.ok.all() and not done.usage_mismatch.any() and (done.note == "").all()
    assert res.manifest["window"]["usage_mismatch_in_window"] == 0


def test_an_object_as_finish_reason_is_kept_as_text():
    res, server = _run({"fault": "finish_object", "ttft_s": 0.01, "itl_s": 0.002}, rules=QUICK)
    done = _check_rows(res, server)
    assert done.ok.all()
    assert (done.finish_reason == '{"reason":"length","n":[1,2]}').all()


def test_a_level_where_everything_fails_ends_early_as_a_fail():
    """A wrong model (404 on every request) with a 1 s abort limit and a 30 s window: the level ends
    within a few seconds, says why, and the agents sent a few requests each, not hundreds."""
    rules = RunRules(
        warmup_s=0.2,
        duration_s=30,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.1,
        drain_timeout_s=3,
        random_start_turn=False,
        abort_after_s=1.0,
    )
    res, server = _run({"fault": "http404"}, n=2, rules=rules)
    done = _check_rows(res, server, n=2)
    window = res.manifest["window"]
    assert window["aborted_reason"] and "every request failed" in window["aborted_reason"]
    assert res.manifest["aborted_reason"] == window["aborted_reason"]
    assert res.manifest["meets_aa_rules"] is False
    assert res.manifest["wall_s"] < 10
    # each agent waits DELAY after every failure: at most ~(1 s + DELAY) / DELAY requests each
    assert len(done) <= 2 * (1.0 + 2 * DELAY) / DELAY + 2


def test_one_success_resets_the_failure_clock():
    rules = RunRules(
        warmup_s=0.2,
        duration_s=2.5,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.1,
        drain_timeout_s=3,
        random_start_turn=False,
        abort_after_s=1.0,
    )
    res, _ = _run({"fault": ["http500", "http500", None], "ttft_s": 0.01, "itl_s": 0.002}, n=1, rules=rules)
    assert res.manifest["window"]["aborted_reason"] is None


def test_secrets_never_reach_error_details_or_files():
    """A server that echoes the request's headers in its error body: the API key and every header value
    the client sent are replaced by *** in error_detail, and no row file holds them."""
    key, token = "sk-live-key-0123456789", "tok-7f3e-secret-9a"
    os.environ["AGENTPERF_FAULT_KEY"] = key
    try:
        res, server = _run(
            {"fault": "http500_echo"},
            rules=QUICK,
            ep_kw={"api_key_env": "AGENTPERF_FAULT_KEY", "headers": {"X-Auth-Token": token}},
        )
    finally:
        del os.environ["AGENTPERF_FAULT_KEY"]
    assert server.headers[0]["X-Auth-Token"] == token  # it was sent, and echoed
    done = _check_rows(res, server)
    assert done.error_detail.str.contains("***", regex=False).all()
    for f in res.directory.iterdir():
        data = f.read_bytes()
        assert key.encode() not in data, f
        if f.name != "manifest.json":  # header values in the manifest: masked by the CLI's header rules
            assert token.encode() not in data, f


_FULL_DISK = textwrap.dedent(
    """
    import asyncio, resource, signal, sys
    from agentperf_kit.agents import RunRules
    from agentperf_kit.errors import OutputError
    from agentperf_kit.replay import Endpoint, run_live
    from tests.sse_servers import SSEServer
    from tests.test_live_faults import _trajs

    async def main(out):
        server = await SSEServer(ttft_s=0.001, itl_s=0.0005).start()
        rules = RunRules(warmup_s=0.1, duration_s=60, min_trajectories=0, min_trajectories_per_agent=0,
                         ramp_s=0.05, drain_timeout_s=2, random_start_turn=False)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (48_000, 48_000))
        try:
            await run_live(Endpoint(server.base_url, "m"), _trajs(8, delay=0.001), 8, rules, out_dir=out,
                           progress=False)
        except OutputError as exc:
            print("OutputError:", exc)
        finally:
            await server.stop()

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_rows(tmp_path):
    """A real write failure (RLIMIT_FSIZE: writes past 48 kB fail with EFBIG, as on a full disk) in the
    middle of a 60 s level: the run stops within seconds with one OutputError line, and the rows
    written before stay readable."""
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OutputError:")]
    assert len(lines) == 1, proc.stdout
    assert "requests.arrow" in lines[0] and "rows written before" in lines[0]
    assert time.monotonic() - t0 < 40
    assert "Traceback" not in proc.stderr
    rows = read_raw_rows(out)
    assert len(rows) > 0
    assert rows.t_end_s.notna().all()
    json.loads((out / "manifest.json").read_text())  # the manifest written at the start is intact
    assert OutputError.exit_code == 2 or OutputError.exit_code == 3


def test_tenfold_usage_without_forced_output_is_caught_by_the_text_streamed():
    """``--no-force-output`` (no target to compare with): a server that streams 12 tokens of " tok" (48
    bytes of text) and reports 120 is flagged because 120 tokens cannot fit in 48 bytes of text; its
    speed comes from the 12 chunks, not from the claim (10.8 times higher)."""
    res, server = _run(
        {"fault": "usage_10x", "ttft_s": 0.01, "itl_s": 0.01},
        rules=QUICK,
        ep_kw={"force_output_fields": False},
    )
    done = _check_rows(res, server)
    assert done.ok.all() and done.usage_mismatch.all()
    assert done.note.str.contains("bytes of visible text streamed", regex=False).all()
    assert not done.note.str.contains("forced output", regex=False).any()
    streamed = (done.n_chunks - 1) / (done.t_last_s - done.t_first_s)
    assert done.output_speed_tps.to_numpy() == pytest.approx(streamed.to_numpy())
    claimed = (done.output_tokens - 1) / (done.t_last_s - done.t_first_s)
    assert (claimed > 9 * done.output_speed_tps).all()


def test_a_cancelled_run_keeps_readable_rows_and_leaves_nothing_running(tmp_path):
    """Cancel a run_live task mid-window (what Ctrl-C or a notebook's interrupt does): the cancellation
    propagates, the rows written so far (and a cancelled row for each request in flight) are readable,
    no task of the run is left, and its HTTP session is closed."""
    import gc

    import aiohttp

    from agentperf_kit.results import load_run
    from tests.test_cli_errors import serving

    out = tmp_path / "run"
    rules = RunRules(
        warmup_s=0.2,
        duration_s=60,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.1,
        random_start_turn=False,
    )
    with serving(SSEServer(ttft_s=0.02, itl_s=0.02)) as srv:

        async def go() -> None:
            before = asyncio.all_tasks()
            ep = Endpoint(srv.base_url, "m")
            task = asyncio.create_task(
                run_live(ep, _trajs(delay=0.05), N, rules, out_dir=out, progress=False)
            )
            deadline = time.monotonic() + 60
            while len(srv.bodies) < 3 * N and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(srv.bodies) >= 3 * N, "the run never got going"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert asyncio.all_tasks() - before == set()
            sessions = [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession)]
            assert sessions and all(s.closed for s in sessions)

        asyncio.run(go())
        seen = len(srv.bodies)
    rows = read_raw_rows(out)
    assert len(rows) >= seen  # every request the server saw is a row (in-flight ones cancelled)
    assert (rows["error"] == "cancelled_at_end").sum() <= N
    assert len(load_run(out).requests) == len(rows)  # an interrupted run loads
