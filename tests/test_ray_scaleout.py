"""Scale-out live levels on Ray workers against loopback SSE servers (issue 14, docs/scale-out.md).

One local Ray head shared with test_ray_study.py (conftest.py's ``ray_head``); every test that needs it is
slow. The parts that need no Ray (the split fleet, the ledger, the clock, the no-Ray path) run in the
fast lane.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from agentperf_kit.agents import AgentFleet, RunRules
from agentperf_kit.client.http import Endpoint
from agentperf_kit.scaleout.clock import measure_offset
from agentperf_kit.scaleout.fleets import Ledger, SubFleet, worker_nonce
from agentperf_kit.trajectories.model import Trajectory, Turn
from tests.sse_servers import SSEServer, serving

# Ray's node leaves Popen objects of processes it stopped itself to the collector
pytestmark = [
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

_ENV_BEFORE = set(os.environ)  # what the tests' environment held before any Ray head started

RULES = RunRules(
    warmup_s=0.3,
    duration_s=2.0,
    min_trajectories=4,
    min_trajectories_per_agent=1,
    ramp_s=0.3,
    drain_timeout_s=3,
    random_start_turn=True,
)


def _trajs(n=6, turns=3, out=12, delay=0.02):
    res = []
    for i in range(n):
        ts = [Turn(0, 40 * k, 40, out, tool_delay_s=delay) for k in range(turns)]
        res.append(Trajectory(f"t{i}", ts))
    return res


# -- no Ray: the split fleet, the ledger, the clock ------------------------------------------------------


def test_split_fleets_give_each_agent_what_one_fleet_gives_it():
    """K sub-fleets together start the same agents, trajectories, turns and ramp times as one fleet;
    phase ids and markers never repeat across workers."""
    trajs, n, k = _trajs(n=6, turns=5), 10, 3  # gcd(10, 6) > 1: a stride of 11
    whole = AgentFleet(trajs, n, RULES, seed=4, sink=lambda r: None)
    one = whole.start(0.0)
    subs = [
        SubFleet(trajs, n, RULES, seed=4, sink=lambda r: None, marker_nonce=worker_nonce(99, w)).split(
            w, k, 0.0
        )
        for w in range(k)
    ]
    per_worker = [s.start(123.0) for s in subs]  # t0 comes from split(), not from the call
    assert all(p.agent % k == w for w, ps in enumerate(per_worker) for p in ps)
    plans = [p for ps in per_worker for p in ps]
    key = lambda p: (p.agent, p.trajectory_id, p.turn_index, p.t_scheduled_s)  # noqa: E731
    assert sorted(map(key, plans)) == sorted(map(key, one))
    # later phases: ids N + w + j*K, unique over all workers; markers unique too
    ids, markers = set(), set()
    for w, s in enumerate(subs):
        for p in [q for q in plans if q.agent % k == w]:
            ids.add(p.phase_id)
            markers.add(p.marker)
            for _ in range(6):
                s._take_trajectory(s._agents[p.agent])
                whole._take_trajectory(whole._agents[p.agent])  # the same next trajectories as one fleet
                assert s._agents[p.agent].traj_index == whole._agents[p.agent].traj_index
                nxt = s._plan(s._agents[p.agent], 1.0, force_fresh=True)
                assert nxt.phase_id % k == (n + w) % k and nxt.phase_id >= n
                assert nxt.phase_id not in ids and nxt.marker not in markers
                ids.add(nxt.phase_id)
                markers.add(nxt.marker)


def test_ledger_opens_the_window_after_the_latest_first_send_and_counts_all_workers():
    trajs = _trajs(n=2, turns=2)
    rules = RunRules(warmup_s=1.0, duration_s=2.0, min_trajectories=2, min_trajectories_per_agent=1)
    led = Ledger(trajs, 2, rules, seed=0, sink=lambda r: None)
    led.note_first_send(1, 0.5)
    assert not led.window_known
    led.note_first_send(0, 0.2)  # reported later, sent earlier: the latest send opens the window
    assert led.window_start_s == pytest.approx(1.5)

    def row(agent, traj, turn, t_send, t_end, ok=True):
        r = [None] * 32
        r[3], r[4], r[7], r[9], r[13], r[25], r[27], r[30] = agent, traj, turn, t_send, t_end, ok, "", False
        return tuple(r)

    led.record([row(0, "t0", 1, 1.6, 2.0), row(1, "t1", 0, 1.7, 2.1)])  # agent 1 mid-trajectory
    assert led.completed_in_window == 1 and led.may_send(4.0)  # counts not met: window stays open
    led.record([row(1, "t1", 1, 2.2, 2.5)])
    assert not led.may_send(3.6) and led.window_end_s == pytest.approx(3.5)
    w = led.window_summary()
    assert w["trajectories_completed_in_window"] == 2 and w["min_trajectories_per_agent_in_window"] == 1


def test_ledger_plans_the_windows_end_and_a_sub_fleet_stops_at_it():
    """The end the driver gives the workers: unknown before the window opens, the cap while the counts are
    short, ``duration_s`` after the start once they are met (or the time they were met, when later);
    a worker given it ahead of time sends until just before it and not at it, and a later time given
    afterwards does not move it."""
    import math

    trajs = _trajs(n=2, turns=1)
    rules = RunRules(
        warmup_s=1.0, duration_s=2.0, max_duration_s=9.0, min_trajectories=2, min_trajectories_per_agent=1
    )
    led = Ledger(trajs, 2, rules, seed=0, sink=lambda r: None)
    assert led.planned_end_s() == math.inf
    led.note_first_send(0, 0.1)
    led.note_first_send(1, 0.5)  # the window opens at 1.5
    assert led.planned_end_s() == pytest.approx(1.5 + 9.0)  # counts short: the cap

    def row(agent, t_send, t_end):
        r = [None] * 32
        r[3], r[4], r[7], r[9], r[13], r[25], r[27], r[30] = (
            agent,
            f"t{agent}",
            0,
            t_send,
            t_end,
            True,
            "",
            False,
        )
        return tuple(r)

    led.record([row(0, 1.6, 2.0), row(1, 1.7, 2.2)])  # met at 2.2, before 1.5 + 2.0
    assert led.planned_end_s() == pytest.approx(3.5)
    late = Ledger(trajs, 2, rules, seed=0, sink=lambda r: None)
    late.note_first_send(0, 0.0)
    late.note_first_send(1, 0.0)
    late.record([row(0, 1.1, 2.0), row(1, 3.1, 4.2)])  # met at 4.2, after 1.0 + 2.0
    assert late.planned_end_s() == pytest.approx(4.2)
    assert not late.may_send(4.3) and late.window_end_s == late.planned_end_s()  # the same rule

    sub = SubFleet(trajs, 2, rules, seed=0, sink=lambda r: None).split(0, 2, 0.0)
    sub.close_at(3.5)
    assert sub.may_send(3.499) and not sub.window_closed
    sub.close_at(7.0)  # later: changes nothing
    assert not sub.may_send(3.5) and sub.window_end_s == 3.5


def test_ledger_ends_the_level_when_every_worker_only_fails():
    rules = RunRules(
        warmup_s=0.0, duration_s=100.0, min_trajectories=0, min_trajectories_per_agent=0, abort_after_s=5
    )
    led = Ledger(_trajs(n=2), 2, rules, seed=0, sink=lambda r: None)
    led.note_first_send(0, 0.0)
    led.note_first_send(1, 0.0)

    def fail(agent, t):
        r = [None] * 32
        r[3], r[4], r[7], r[9], r[13], r[25], r[27], r[30] = (
            agent,
            "t0",
            0,
            t - 0.1,
            t,
            False,
            "http_500",
            False,
        )
        return tuple(r)

    led.record([fail(a, t) for t in range(1, 7) for a in (0, 1)])
    assert not led.may_send(7.0)
    assert "every request failed" in led.window_summary()["aborted_reason"]


def test_clock_offset_by_min_rtt_finds_a_known_offset():
    """A 'remote' clock 2.5 s ahead, read after a random delay: the offset is found within its
    uncertainty, and the uncertainty is half the best round trip."""
    import random

    def remote() -> int:
        time.sleep(random.uniform(0, 0.002))
        t = time.perf_counter_ns() + 2_500_000_000
        time.sleep(random.uniform(0, 0.002))
        return t

    off = measure_offset(remote, rounds=12)
    assert abs(off.offset_s - 2.5) <= off.uncertainty_s + 1e-6
    assert off.uncertainty_s == pytest.approx(off.rtt_min_s / 2)


def test_workers_without_ray_is_one_line_naming_the_extra(tmp_path):
    """``--workers 2`` where Ray cannot be imported: exit 2, one line naming the extra; ``--workers 1``
    does not import Ray at all."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "ray.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.getcwd()])}
    args = [
        sys.executable,
        "-m",
        "agentperf_kit.cli",
        "run",
        "--target",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
    ]
    args += ["-n", "2", "--out", str(tmp_path / "o"), "--no-preflight", "--workers", "2"]
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'agentperf-kit[ray]'" in lines[0], p.stderr
    code = (
        "import sys; from agentperf_kit.targets import parse_target; "
        "t = parse_target('http://127.0.0.1:9/v1', model='m', workers=1); "
        "assert 'ray' not in sys.modules and not t.scale_out; print('ok')"
    )
    q = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert q.stdout.strip() == "ok", q.stderr


def _spec(server, n, rules, **kw):
    import dataclasses
    import pickle

    ep = Endpoint(server.base_url, "m", api="completions", request_timeout_s=20, stall_timeout_s=5)
    spec = {
        "endpoint": ep,
        "api_key": None,
        "n_agents": n,
        "rules": dataclasses.replace(rules, abort_after_s=0.0),
        "seed": 0,
        "marker_nonce": 7,
        "run_id": "r",
        "level": 0,
        "workers": 1,
        "worker": 0,
        "lag_budget_s": 0.005,
        "fast_parse": True,
        "origin_ns": time.perf_counter_ns(),
        **kw,
    }
    return spec, pickle.dumps(spec), pickle.dumps(_trajs())


def test_a_worker_runs_its_agents_in_a_level_process_without_ray():
    """The actor's body as a plain object (no Ray): its level process runs the agents, every request the
    server saw comes back as a row, on the clock the driver gave, with the level process's figures."""
    from agentperf_kit.scaleout.worker import LevelWorker

    server = SSEServer(ttft_s=0.02, itl_s=0.01)
    w = LevelWorker()
    with serving(server), contextlib.ExitStack() as stack:
        stack.callback(w.shutdown)  # its level process ends with the test
        spec, spec_b, trajs_b = _spec(server, 3, RULES)
        assert w.start(spec_b, trajs_b)
        w.go((time.perf_counter_ns() - spec["origin_ns"]) / 1e9 + 0.05)
        rows, first, t_close = [], [], time.monotonic() + 1.5
        while True:
            res = w.poll()
            rows += res["rows"]
            first += res["first_sends"]
            if res["done"]:
                break
            if t_close is not None and time.monotonic() > t_close:
                w.close_window((time.perf_counter_ns() - spec["origin_ns"]) / 1e9)
                t_close = None
            time.sleep(0.05)
    assert res["error"] is None and len(rows) == server.requests > 0
    assert sorted(a for a, _ in first) == [0, 1, 2]
    st = res["stats"]
    assert st["pid"] != os.getpid() and st["actor_pid"] == os.getpid()
    assert st["cpu_level_s"] > 0 and st["cpu_process_s"] >= st["cpu_level_s"]
    now = (time.perf_counter_ns() - spec["origin_ns"]) / 1e9
    from agentperf_kit.schema import RAW_COLUMNS

    i = RAW_COLUMNS.index("t_send_s")
    t_send = [r[i] for r in rows]  # on the driver's clock: one CLOCK_MONOTONIC
    assert all(0 < t < now for t in t_send)


def _one_level(w, server, close_after_s=1.0, ahead_s=None):
    """One level of 3 agents on the plain worker ``w``: the window's end given ``ahead_s`` ahead of time
    (None: once ``close_after_s`` has passed, as now). Returns (poll's last answer, rows, the end given)."""
    spec, spec_b, trajs_b = _spec(server, 3, RULES)
    assert w.start(spec_b, trajs_b)
    now = lambda: (time.perf_counter_ns() - spec["origin_ns"]) / 1e9  # noqa: E731
    w.go(now() + 0.05)
    t_end = None
    if ahead_s is not None:
        t_end = now() + ahead_s
        w.close_window(t_end)
    rows, deadline = [], time.monotonic() + close_after_s
    while True:
        res = w.poll()
        rows += res["rows"]
        if res["done"]:
            return res, rows, t_end
        if t_end is None and time.monotonic() > deadline:
            t_end = now()
            w.close_window(t_end)
        time.sleep(0.05)


def test_a_worker_runs_levels_one_after_another_in_one_level_process():
    """The plain worker (no Ray) runs a second level in the same level process (started once), a window's
    end given ahead of time is where its agents stop sending, and a level process that died between
    levels is replaced by the next level's start."""
    from agentperf_kit.scaleout.worker import LevelWorker
    from agentperf_kit.schema import RAW_COLUMNS

    i = RAW_COLUMNS.index("t_send_s")
    server = SSEServer(ttft_s=0.02, itl_s=0.01)
    w = LevelWorker()
    try:
        with serving(server):
            first, rows1, _ = _one_level(w, server)
            second, rows2, t_end = _one_level(w, server, ahead_s=1.0)
            assert first["error"] is None and second["error"] is None and rows1 and rows2
            assert len(rows1) + len(rows2) == server.requests
            a, b = first["stats"], second["stats"]
            assert a["pid"] == b["pid"] and (a["levels"], b["levels"]) == (1, 2)
            assert b["actor_levels"] == 2 and b["cpu_process_s"] > b["cpu_level_s"]  # its start-up: level 1's
            assert max(r[i] for r in rows2) < t_end  # nothing sent at or after the end given ahead
            os.kill(b["pid"], signal.SIGKILL)  # between levels, seen ended before the next start
            deadline = time.monotonic() + 10
            while _running(b["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            third, rows3, _ = _one_level(w, server, close_after_s=0.5)
            c = third["stats"]
            os.kill(c["pid"], signal.SIGKILL)  # and started at once: its end not yet seen by the worker
            fourth, rows4, _ = _one_level(w, server, close_after_s=0.5)
        assert third["error"] is None and rows3 and c["pid"] != b["pid"]
        assert c["levels"] == 1  # a new level process
        assert fourth["error"] is None and rows4 and fourth["stats"]["pid"] not in (b["pid"], c["pid"])
        assert fourth["stats"]["levels"] == 1 and fourth["stats"]["actor_levels"] == 4
    finally:
        w.shutdown()


def test_a_level_process_that_cannot_start_is_a_failed_worker(tmp_path, monkeypatch):
    from agentperf_kit.scaleout import worker as worker_mod

    monkeypatch.setattr(worker_mod.sys, "executable", str(tmp_path / "no-python"))
    w = worker_mod.LevelWorker()
    assert w.start(b"", b"") is False
    res = w.poll()
    assert res["done"] and "did not start" in res["error"] and "no-python" in res["error"]


# -- a real local Ray head -------------------------------------------------------------------------------


def _level(server, tmp_path, n, k, rules=RULES, **kw):
    from agentperf_kit.scaleout import run_live_workers

    ep = Endpoint(server.base_url, "m", api="completions", request_timeout_s=20, stall_timeout_s=5)
    return run_live_workers(ep, _trajs(), n, rules, workers=k, out_dir=tmp_path / "run", progress=False, **kw)


@pytest.mark.slow
def test_a_level_on_two_workers_is_one_level(ray_head, tmp_path):
    """Two workers, 8 agents: one requests.parquet with a row for every request the server saw, the
    worker column, in-flight never above N counted over both workers, the window by the rules over all
    agents, and one clock (the workers' offsets measured and within their uncertainty of 0)."""
    from agentperf_kit.metrics import level_stats

    server = SSEServer(ttft_s=0.05, itl_s=0.01)
    with serving(server):
        res = _level(server, tmp_path, 8, 2)
    df, m = res.requests, res.manifest
    assert len(df) == server.requests  # every request the server saw, exactly one row
    assert df.ok.all(), df.error_detail.unique()[:3]
    assert set(df["worker"]) == {0, 1} and (df["worker"] == df["agent"] % 2).all()
    assert server.max_in_flight <= 8 and m["client_check"]["max_in_flight"] <= 8
    assert df.groupby(["phase_id"])["agent"].nunique().max() == 1  # a phase id is one agent's
    w = m["window"]
    # the latest first send over both workers (as the fleet stamps it: just before the request's own stamp)
    last_first = df.groupby("agent")["t_send_s"].min().max()
    assert last_first - 0.05 <= w["window_start_s"] - RULES.warmup_s <= last_first
    assert w["trajectories_completed_in_window"] >= RULES.min_trajectories
    assert w["min_trajectories_per_agent_in_window"] >= 1
    s = level_stats(df, window_start_s=w["window_start_s"], window_end_s=w["window_end_s"])
    assert s["n_requests"] > 0 and s["max_in_flight"] <= 8
    ws = m["workers"]["workers"]
    assert [x["worker"] for x in ws] == [0, 1] and sum(x["rows"] for x in ws) == len(df)
    for x in ws:
        c = x["clock"]
        assert c["shared_monotonic_clock"] and c["origin_shift_s"] == 0
        assert abs(c["start"]["offset_s"]) <= c["start"]["uncertainty_s"] + 1e-4  # one CLOCK_MONOTONIC
        assert x["stats"]["pid"] != os.getpid()  # the agents ran in the worker's level process
        assert x["stats"]["actor_pid"] not in (os.getpid(), x["stats"]["pid"])
        assert x["nice"] == os.nice(0)  # Ray's default would run workers at a lower priority
    per = m["client_check"]["workers"]
    assert m["client_ok"] == all(p["client_ok"] for p in per)  # the conjunction
    # the server's own TTFT (50 ms) is what the rows show, on the workers' clocks
    assert df["ttft_s"].median() >= 0.05


def _kill_one_midlevel(server, tmp_path, pattern: str, **kw):
    """A level of 6 agents on 2 workers whose window would last 60 s; once both processes whose command
    line holds ``pattern`` run and the server has seen 20 requests, SIGKILL one of them. Returns the
    result, the seconds the level took, the killed pid and its children's pids (when it was killed)."""
    import psutil

    rules = RunRules(
        warmup_s=0.2,
        duration_s=60,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.2,
        drain_timeout_s=2,
    )
    killed: list[int] = []
    orphans: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            procs = []
            for p in psutil.Process().children(recursive=True):
                try:  # a Ray worker's process (not one a test started here without Ray)
                    if pattern in " ".join(p.cmdline()) and p.ppid() != os.getpid():
                        procs.append(p.pid)
                except psutil.Error:
                    pass
            if len(procs) == 2 and server.requests >= 20:
                with contextlib.suppress(psutil.Error):
                    orphans.extend(c.pid for c in psutil.Process(max(procs)).children())
                os.kill(max(procs), signal.SIGKILL)
                killed.append(max(procs))
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    with serving(server):
        t.start()
        t0 = time.monotonic()
        res = _level(server, tmp_path, 6, 2, rules=rules, worker_timeout_s=20, **kw)
        took = time.monotonic() - t0
    t.join(5)
    assert killed, f"no process matching {pattern!r} was killed"
    return res, took, killed[0], orphans


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _assert_failed_worker_level(res, took, server):
    """The run ended long before its 60 s window, invalid, one worker failed and named, both workers'
    rows kept."""
    m, df = res.manifest, res.requests
    assert took < 50, took
    assert m["meets_aa_rules"] is False
    assert "worker" in m["aborted_reason"] and "failed" in m["aborted_reason"]
    dead = [x for x in m["workers"]["workers"] if x["failed"]]
    assert len(dead) == 1
    assert set(df["worker"]) == {0, 1}  # the dead worker's rows so far are kept
    assert m["client_ok"] is False and any(
        r.startswith(f"worker {dead[0]['worker']}") for r in m["client_check"]["reasons"]
    )
    assert len(df) <= server.requests
    return dead[0]


@pytest.mark.slow
def test_a_worker_that_dies_ends_the_level_with_its_rows_kept(ray_head, tmp_path):
    """SIGKILL one worker's actor process (Ray's ``ray::LevelWorker``) mid-level: the run ends (no hang),
    the level is invalid with the reason, the rows both workers handed over are in requests.parquet, and
    the dead actor's level process goes with it."""

    server = SSEServer(ttft_s=0.05, itl_s=0.02)
    res, took, _, orphans = _kill_one_midlevel(server, tmp_path, "LevelWorker")
    _assert_failed_worker_level(res, took, server)
    assert orphans, "the killed actor ran no level process"
    deadline = time.monotonic() + 30  # the killed actor's level process does not outlive it
    while any(_running(p) for p in orphans):
        assert time.monotonic() < deadline, orphans
        time.sleep(0.5)


@pytest.mark.slow
def test_a_level_process_that_dies_ends_the_level_with_its_rows_kept(ray_head, tmp_path):
    """SIGKILL one worker's level process (the actor's child that runs the agents) mid-level: the actor
    lives on and reports it; the level ends the same way, the reason naming the signal."""
    server = SSEServer(ttft_s=0.05, itl_s=0.02)
    res, took, pid, _ = _kill_one_midlevel(server, tmp_path, "agentperf_kit.scaleout.child")
    dead = _assert_failed_worker_level(res, took, server)
    assert f"pid {pid}" in dead["failed"] and "SIGKILL" in dead["failed"], dead["failed"]


def _pids(res) -> list[tuple[int, int]]:
    """(actor pid, level process pid) of each worker of a level."""
    return [(x["stats"]["actor_pid"], x["stats"]["pid"]) for x in res.manifest["workers"]["workers"]]


@pytest.mark.slow
def test_a_pool_keeps_its_workers_across_levels_and_replaces_failed_ones(ray_head, tmp_path):
    """Levels on one WorkerPool: a level whose worker's level process is killed fails as without a pool;
    the next level runs on a new worker in its place and the other worker kept (same actor and level
    process); an actor killed between levels is replaced too; close() ends every worker's processes."""
    from agentperf_kit.scaleout.pool import WorkerPool

    with WorkerPool(2) as pool:
        server = SSEServer(ttft_s=0.05, itl_s=0.02)
        res, took, pid, _ = _kill_one_midlevel(
            server, tmp_path / "l1", "agentperf_kit.scaleout.child", pool=pool
        )
        dead = _assert_failed_worker_level(res, took, server)
        assert f"pid {pid}" in dead["failed"]
        kept = 1 - dead["worker"]
        before = res.manifest["workers"]["workers"][kept]["stats"]
        levels = []
        for k in (2, 3):
            server = SSEServer(ttft_s=0.05, itl_s=0.01)
            with serving(server):
                levels.append(_level(server, tmp_path / f"l{k}", 8, 2, pool=pool))
            assert len(levels[-1].requests) == server.requests > 0
            assert not levels[-1].manifest["window"].get("aborted_reason")
            if k == 2:  # between levels 2 and 3: the kept worker's actor dies
                os.kill(before["actor_pid"], signal.SIGKILL)
        two, three = _pids(levels[0]), _pids(levels[1])
        assert two[kept] == (before["actor_pid"], before["pid"])  # kept: no start-up
        assert two[dead["worker"]][1] != pid  # replaced
        assert three[dead["worker"]] == two[dead["worker"]]  # kept since level 2
        assert three[kept][0] != before["actor_pid"]  # the actor killed between levels: replaced
        ws = levels[1].manifest["workers"]
        assert ws["pool"] == {"workers_started": 4, "levels": 3}
        on_worker = {x["worker"]: x["levels_on_worker"] for x in ws["workers"]}
        assert on_worker == {kept: 1, dead["worker"]: 2}
    deadline = time.monotonic() + 30  # closed: every worker's processes end
    while any(_running(p) for pair in three for p in pair):
        assert time.monotonic() < deadline, three
        time.sleep(0.5)


@pytest.mark.slow
def test_the_local_head_runs_without_optional_processes_and_restores_its_settings(ray_head):
    """The head start_local_ray made (conftest's): no log monitor or autoscaler monitor process, no idle
    worker kept, and nothing of its start left behind in this process (environment, Ray's RayParams)."""
    import psutil
    import ray._private.parameter as parameter

    from agentperf_kit.scaleout import runtime

    cmds = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmds.append(" ".join(p.cmdline()))
    assert any("raylet" in c for c in cmds), cmds  # this process's own head
    assert not [c for c in cmds if "log_monitor.py" in c or c.endswith("monitor.py") or "/monitor.py " in c]
    assert parameter.RayParams.__name__ == "RayParams"
    for k in (*runtime.QUIET_RUNTIME_ENV, *runtime._SLOW_START_ENV):
        assert k not in os.environ or k in _ENV_BEFORE, k


_SLOW_AGENT = """
import os, sys, time
if sys.argv and sys.argv[0].endswith(os.path.join("dashboard", "agent.py")):
    open(os.environ["SLOW_AGENT_MARK"], "w").close()
    time.sleep(float(os.environ["SLOW_AGENT_S"]))
"""


@pytest.mark.slow
def test_a_local_head_starts_when_its_dashboard_agent_starts_slowly(tmp_path):
    """Ray's raylet waits a fixed 15 s for each of its agents' port files and aborts after (what a loaded
    machine ran into); the local runtime gives the ports up front, so a dashboard agent that takes 20 s to
    start (delayed here by a sitecustomize, in a head of its own in a subprocess) does not fail the start,
    and the node runs an actor."""
    pytest.importorskip("ray")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_AGENT)
    mark = tmp_path / "agent-was-slow"
    code = (
        "import time, ray\n"
        "from agentperf_kit.scaleout.runtime import start_local_ray\n"
        "t = time.monotonic(); start_local_ray(1, attempts=1); took = time.monotonic() - t\n"
        "A = ray.remote(num_cpus=1)(type('A', (), {'f': lambda self: 42}))\n"
        "print('ok', ray.get(A.remote().f.remote(), timeout=120), round(took, 1))\n"
        "ray.shutdown()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
        "SLOW_AGENT_S": "20",
        "SLOW_AGENT_MARK": str(mark),
        "RAY_AUTH_MODE": "disabled",
    }
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert mark.exists(), "the dashboard agent was not delayed"
    assert p.stdout.split()[:2] == ["ok", "42"], p.stderr[-2000:]
    assert float(p.stdout.split()[2]) >= 20  # the start waited for the late agent (not beside a level)


@pytest.mark.slow
def test_an_interrupted_level_on_two_workers_loads_with_the_worker_column(ray_head, tmp_path):
    """Ctrl-C in the driver mid-level: the workers (actors and level processes) are removed, the rows
    written so far stay readable, and ``load_run`` of the interrupted run (no requests.parquet) gives the
    ``worker`` column too."""
    import _thread

    from agentperf_kit.results import load_run

    server = SSEServer(ttft_s=0.05, itl_s=0.02)
    rules = RunRules(
        warmup_s=0.2, duration_s=60, min_trajectories=0, min_trajectories_per_agent=0, ramp_s=0.2
    )

    level_pids: set[int] = set()

    def interrupt() -> None:
        import psutil

        deadline = time.monotonic() + 120
        while server.requests < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the driver has polled and written rows of both workers
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "agentperf_kit.scaleout.child" in " ".join(p.cmdline()):
                    level_pids.add(p.pid)
        _thread.interrupt_main()

    t = threading.Thread(target=interrupt, daemon=True)
    with serving(server):
        t.start()
        with pytest.raises(KeyboardInterrupt):
            _level(server, tmp_path, 6, 2, rules=rules)
    t.join(5)
    out = tmp_path / "run"
    assert not (out / "requests.parquet").exists()
    res = load_run(out)
    df = res.requests
    assert res.extra.get("interrupted") and len(df) > 0
    assert set(df["worker"]) == {0, 1} and (df["worker"] == df["agent"] % 2).all()
    assert df["worker"].dtype == "int64"
    assert len(level_pids) == 2  # the workers' level processes do not outlive the interrupted run
    deadline = time.monotonic() + 30
    while any(_running(p) for p in level_pids):
        assert time.monotonic() < deadline, level_pids
        time.sleep(0.5)


@pytest.mark.slow
def test_cli_run_with_two_workers_writes_the_worker_column(ray_head, tmp_path):
    """``agentperf run --workers 2`` in this process (the module's Ray head): exit 0 or 3 (a busy machine's
    self-check), one requests.parquet with ``worker`` and a row for every request the server saw (no
    preflight, no chat-filler probes: completions)."""
    from agentperf_kit.cli import main
    from agentperf_kit.results import load_run
    from tests.conftest import assert_live_run_measured

    server = SSEServer(ttft_s=0.05, itl_s=0.01)
    out = tmp_path / "cli"
    with serving(server):
        rc = main(
            ["run", "--target", server.base_url, "--model", "m", "-n", "4", "--workers", "2",
             "--duration", "1", "--warmup", "0.2", "--min-trajectories", "0",
             "--min-trajectories-per-agent", "0", "--ramp", "0.2", "--drain-timeout", "3", "--out", str(out),
             "--quiet", "--no-scrape-metrics", "--endpoint", "completions", "--no-preflight"]
        )  # fmt: skip
    assert_live_run_measured(rc, out)
    df = load_run(out).requests
    assert len(df) == server.requests and set(df["worker"]) == {0, 1}


def test_cross_host_clock_drift_is_taken_off_and_flagged():
    """A worker on another host whose clock drifted 10 ms over the level: its rows are corrected linearly
    (half the drift at the middle), and a drift or uncertainty above the budget fails the self-check;
    workers on the driver's host are left alone."""
    import pandas as pd

    from agentperf_kit.scaleout.clock import ClockOffset
    from agentperf_kit.scaleout.driver import _Driver, _Worker

    d = _Driver(None, 2, "ray://head:10001", None, None, 0.005, 0.2, 60.0)
    d.origin_ns = 0
    here = _Worker(0, None, same_host=True, stats={"loop_lag_p95_s": 0.001})
    there = _Worker(1, None, same_host=False, stats={"loop_lag_p95_s": 0.001})
    there.clock_start = ClockOffset(3.0, 0.0002, 0.0004, 16, 0)
    there.clock_end = ClockOffset(3.010, 0.0002, 0.0004, 16, 100_000_000_000)
    here.clock_start = ClockOffset(0.0, 0.0002, 0.0004, 16, 0)
    here.clock_end = ClockOffset(0.020, 0.0002, 0.0004, 16, 100_000_000_000)  # ignored: one clock
    d.workers = [here, there]
    raw = pd.DataFrame(
        {
            "agent": [0, 1],
            "worker": [0, 1],
            **{c: [50.0, 50.0] for c in ("t_scheduled_s", "t_send_s", "t_first_s", "t_first_answer_s")},
            **{c: [50.0, 50.0] for c in ("t_last_s", "t_end_s")},
        }
    )
    out = d._correct_drift(raw.copy())
    assert out.loc[0, "t_send_s"] == 50.0
    assert out.loc[1, "t_send_s"] == pytest.approx(50.0 - 0.005)
    check = d._self_check(out.assign(t_send_s=out["t_scheduled_s"]))
    assert check["client_ok"] is False
    assert check["client_check"]["reasons"] == ["worker 1: clock drift 10.0 ms over the level > budget"]
