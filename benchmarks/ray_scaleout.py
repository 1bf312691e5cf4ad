"""Scale-out on Ray (issue 14): agents per worker count, and the cost of the Ray path, side by side.

Against ``fast_sse_server.c`` (one C process per level, TTFT 200 ms, 20 ms between tokens = 50 tok/s per
stream, with its truth log: the true time of every request's first token on CLOCK_MONOTONIC, the clock the
client's stamps are on), with the default AA-shaped synthetic trajectories (completions endpoint):

1. **Largest N** for 1 worker (the in-process path, ``--workers 1``) and for 2 Ray workers
   (``--workers 2``): N climbs a ladder (x1.5 from ``--start``, x2 with ``--quick``; then one level at the
   geometric middle of the last pass and the first fail) until a level fails one of: ``client_ok``
   (every worker's self-check), rows == requests the server saw (its truth log's lines), P95 TTFT error
   <= 20 ms (client TTFT - the server's true TTFT, requests matched by phase marker and order, over the
   steady window). Target: 2 workers reach >= 1.7x the agents of 1 worker.
2. **CPU per 1M tokens**, Ray path at ``--workers 1`` against in-process, same N, same level (two in-process
   levels first, before Ray is started in this process). The Ray path two ways: one level on a new worker
   (its actor's and level process's start-ups counted in the level: what a single ``agentperf run`` pays),
   and three consecutive levels on one kept worker (``WorkerPool``, as a sweep runs its levels: the
   start-ups once, in the first), in all and its levels 2-3 alone. What counts is the whole process tree
   of the load generator over each level, user + system CPU, the server under test left out:
   - in-process: this process (the load generator: its event loop, row writer, every thread);
   - Ray: this process (the driver: polling, the row writer, Ray's driver-side threads), each worker's
     level process and actor process (a new one's start-up and imports too), and every other process of
     the local Ray runtime (GCS, raylet, its agents). Processes alive at the level's end count their CPU
     then minus at its start (0 for one started during the level); a worker's processes gone by then
     count the CPU they reported at their end (the manifest's worker ``stats``).
   Target: within 5 %. ``--cpu-only`` runs only this comparison.

The 2-worker ladder runs on one kept pair of workers (a ``WorkerPool``, as a sweep does), started in its
first level.

    python benchmarks/ray_scaleout.py --quick       # <= 8 min: short levels
    python benchmarks/ray_scaleout.py               # longer levels

Prints the figures with the 1-min load average before and after each level and appends the report to
``benchmarks/results/ray_scaleout.txt`` (``--no-append`` to only print). Latency figures depend on what
else runs on the machine: compare figures taken at a similar load.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from client_outside import _pct, git_commit, match_truth
from fast_sse_server import FastSSEServer, compile_server, read_truth_log

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ray_scaleout.txt"
TTFT_MS, ITL_MS = 200.0, 20.0
TTFT_ERR_MAX_S = 0.020


def markers_of(trajs, n: int, seed: int, nonce: int, workers: int, n_phases: int, rules) -> dict[int, str]:
    """Each ``phase_id``'s marker as the run's fleet(s) drew it: in one process (``workers`` 0) the fleet's
    draws; with K Ray workers each worker's :class:`SubFleet` (its own nonce; its later phases are
    ``N + w + j*K``)."""
    from agentperf_kit.agents import AgentFleet
    from agentperf_kit.scaleout.fleets import SubFleet, worker_nonce

    out: dict[int, str] = {}
    if workers == 0:
        fleet = AgentFleet(trajs, n, rules, seed=seed, sink=lambda r: None, marker_nonce=nonce)
        out = {p.phase_id: p.marker for p in fleet.start(0.0)}
        for pid in range(n, n_phases):
            out[pid] = f"{(fleet._rng.getrandbits(107) ^ nonce) % 10**32:032d}"
        return out
    for w in range(workers):
        wn = worker_nonce(nonce, w)
        sub = SubFleet(trajs, n, rules, seed=seed, sink=lambda r: None, marker_nonce=wn).split(
            w, workers, 0.0
        )
        out.update({p.phase_id: p.marker for p in sub.start(0.0)})
        for pid in range(n + w, n_phases, workers):
            out[pid] = f"{(sub._rng.getrandbits(107) ^ wn) % 10**32:032d}"
    return out


def tree_cpu_s(exclude: set[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of this process and every process below it (the local Ray
    runtime's GCS, raylet, agents and worker processes; the workers' level processes), by pid with a
    short name; the pids in ``exclude`` (the server under test) left out."""
    import psutil

    me = psutil.Process()
    out: dict[int, tuple[str, float]] = {}
    for p in [me, *me.children(recursive=True)]:
        if p.pid in exclude:
            continue
        try:
            c = p.cpu_times()
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        name = "driver" if p.pid == me.pid else _short(cmd)
        out[p.pid] = (name, c.user + c.system)
    return out


def _machine_busy_s() -> float:
    """CPU seconds all of the machine's cores have been busy so far (everything but idle and iowait)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _cpu_of(pid: int) -> float:
    import psutil

    try:
        c = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return c.user + c.system


def _short(cmd: str) -> str:
    if "agentperf_kit.scaleout.child" in cmd:
        return "level process"
    if cmd.startswith("ray::"):
        return cmd.split()[0]  # ray::LevelWorker, ray::IDLE
    for part in (
        "gcs_server",
        "raylet",
        "dashboard_agent",
        "runtime_env_agent",
        "dashboard.py",
        "log_monitor",
        "monitor",
    ):
        if part in cmd:
            return part
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?"


def level_cpu_s(
    before: dict, after: dict, reported: dict[int, tuple[str, float]], new: frozenset[int] = frozenset()
) -> dict[str, float]:
    """CPU seconds each kind of process spent over a level: for a process alive at its end, its CPU then
    minus its CPU at the level's start (0 for one started during it); for one that ended during the level
    (a worker's actor and level process when they are not kept), the CPU it reported itself at its end
    (``reported``: pid -> (name, CPU so far)), minus its CPU at the start when it existed then. A process in
    ``new`` (a worker's actor or level process on its first level) counts its whole life: Ray may have
    started the actor's process before the level, as an idle worker it then reused. Summed by name."""
    by: dict[str, float] = {}
    gone = {pid: v for pid, v in reported.items() if pid not in after}
    for pid, (name, cpu) in {**after, **gone}.items():
        base = 0.0 if pid in new else before.get(pid, ("", 0.0))[1]
        by[name] = by.get(name, 0.0) + max(0.0, cpu - base)
    return by


def run_level(binary, trajs, n: int, workers: int, args, tmp: Path, tag: str, pool=None) -> dict:
    """One level against a fresh server; ``workers`` 0 = in-process; ``pool``: the Ray workers to run on
    (kept for the next levels; None: new ones for this level only). Returns its figures."""
    from agentperf_kit.agents import RunRules
    from agentperf_kit.client.http import Endpoint
    from agentperf_kit.replay import run_live_sync
    from agentperf_kit.scaleout import run_live_workers

    rules = RunRules(
        warmup_s=args.warmup,
        duration_s=args.duration,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=args.ramp,
        drain_timeout_s=args.drain,
    )
    truth_path = tmp / f"{tag}.truth"
    out = tmp / tag
    load0 = os.getloadavg()[0]
    with FastSSEServer(TTFT_MS, ITL_MS, binary=binary, log=truth_path) as srv:
        ep = Endpoint(srv.base_url, "fast", api="completions")
        before = tree_cpu_s({srv.proc.pid})
        server0 = _cpu_of(srv.proc.pid)
        busy0 = _machine_busy_s()
        t0 = time.perf_counter()
        kw = dict(seed=args.seed, out_dir=out, progress=False)
        if workers == 0:
            res = run_live_sync(ep, trajs, n, rules, **kw)
        else:
            res = run_live_workers(ep, trajs, n, rules, workers=workers, pool=pool, **kw)
        wall = time.perf_counter() - t0
        after = tree_cpu_s({srv.proc.pid})
        cpu_server = _cpu_of(srv.proc.pid) - server0
        cpu_machine = _machine_busy_s() - busy0
    load1 = os.getloadavg()[0]
    df, m = res.requests, res.manifest
    truth = read_truth_log(truth_path)
    ws = (m.get("workers") or {}).get("workers", [])
    reported: dict[int, tuple[str, float]] = {}
    new: set[int] = set()
    for w in ws:  # a worker's processes gone (or going) when the level ends: their own figures
        st = w.get("stats") or {}
        if "pid" in st:
            reported[st["pid"]] = ("level process", st.get("cpu_process_s", 0.0))
            if st.get("levels") == 1:
                new.add(st["pid"])
        if "actor_pid" in st:
            reported[st["actor_pid"]] = ("ray::LevelWorker", st.get("cpu_actor_process_s", 0.0))
            if st.get("actor_levels") == 1:
                new.add(st["actor_pid"])
    by = level_cpu_s(before, after, reported, frozenset(new))
    if workers == 0:  # the load generator is this process (Ray's processes, if any, idle beside it)
        by = {"driver": by.get("driver", 0.0)}
    cpu_self = by.pop("driver", 0.0)
    cpu_workers = by.pop("level process", 0.0)
    cpu_actors = by.pop("ray::LevelWorker", 0.0)
    cpu_ray = sum(by.values())  # Ray's own processes: GCS, raylet, agents, idle workers
    tokens = float(df["output_tokens"].fillna(df["n_chunks"]).sum())
    nonce = int(m["config"]["marker_nonce"], 16)
    n_phases = int(df["phase_id"].max()) + 1 if len(df) else 0
    markers = markers_of(trajs, n, args.seed, nonce, workers, n_phases, rules)
    win = df[df["in_window"] & df["ok"]]
    pairs = match_truth(win, truth, markers)
    errs = [
        (row["t_first_s"] - row["t_send_s"]) - (line["t_first"] - line["t_req"])
        for row, line in pairs
        if line["t_first"] > 0
    ]
    p95_err = _pct(errs, 95)
    rows_ok = len(df) == len(truth)
    ok = bool(m.get("client_ok")) and rows_ok and p95_err <= TTFT_ERR_MAX_S and len(errs) > 0
    return {
        "tag": tag,
        "n": n,
        "workers": workers,
        "ok": ok,
        "client_ok": m.get("client_ok"),
        "reasons": m.get("client_check", {}).get("reasons", []),
        "rows": len(df),
        "server_requests": len(truth),
        "matched": len(errs),
        "in_window": int(df["in_window"].sum()),
        "p50_err_ms": _pct(errs, 50) * 1e3,
        "p95_err_ms": p95_err * 1e3,
        "tokens": tokens,
        "cpu_self_s": cpu_self,
        "cpu_workers_s": cpu_workers,
        "cpu_actors_s": cpu_actors,
        "cpu_ray_s": cpu_ray,
        "cpu_ray_detail": {k: v for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.05},
        "cpu_total_s": cpu_self + cpu_workers + cpu_actors + cpu_ray,
        "cpu_server_s": cpu_server,
        "cpu_machine_s": cpu_machine,
        "cpu_level_processes_s": sum((w.get("stats") or {}).get("cpu_level_s", 0.0) for w in ws),
        "worker_stats": [w.get("stats") or {} for w in ws],
        "wall_s": wall,
        "load": (load0, load1),
        "aborted": m.get("aborted_reason"),
    }


def describe(r: dict) -> str:
    who = "in-process" if r["workers"] == 0 else f"{r['workers']} Ray worker(s)"
    cpu = r["cpu_total_s"] / r["tokens"] * 1e6 if r["tokens"] else math.nan
    why = (
        ""
        if r["ok"]
        else "  FAIL: "
        + "; ".join(
            [*(r["reasons"][:2]), *(["rows != server requests"] if r["rows"] != r["server_requests"] else [])]
            + ([f"P95 TTFT error {r['p95_err_ms']:.1f} ms > 20"] if not r["p95_err_ms"] <= 20 else [])
            + ([f"ended early: {r['aborted']}"] if r["aborted"] else [])
        )
    )
    return (
        f"   N={r['n']:>5} {who:<18} rows {r['rows']:,} / server {r['server_requests']:,}, TTFT error "
        f"P50 {r['p50_err_ms']:.1f} ms P95 {r['p95_err_ms']:.1f} ms ({r['matched']:,} matched), "
        f"client_ok={r['client_ok']}, CPU {r['cpu_total_s']:.1f} s ({cpu_parts(r)}) = {cpu:.1f} CPU-s/1M "
        f"tokens, wall {r['wall_s']:.0f} s; server CPU {r['cpu_server_s']:.1f} s; load generator + server "
        f"{(r['cpu_total_s'] + r['cpu_server_s']) / r['wall_s']:.2f} and the whole machine "
        f"{r['cpu_machine_s'] / r['wall_s']:.2f} of {os.cpu_count()} cores busy over the level; "
        f"load {r['load'][0]:.2f} -> {r['load'][1]:.2f}{why}"
    )


def cpu_parts(r: dict) -> str:
    """Where a level's CPU went: the driver (in-process: the whole load generator), and on the Ray path
    the workers' level processes, their actors and Ray's own processes (the busiest named)."""
    if r["workers"] == 0:
        return f"load generator {r['cpu_self_s']:.1f}"
    ray = ", ".join(f"{k} {v:.1f}" for k, v in list(r["cpu_ray_detail"].items())[:4])
    st = r["worker_stats"]
    new = [w for w in st if w.get("levels") == 1]  # level processes started for this level
    startup = sum(w.get("cpu_process_s", 0.0) - w.get("cpu_level_s", 0.0) for w in new)
    actor_level = sum(w.get("cpu_actor_s", 0.0) for w in st)
    kept = f"{len(st) - len(new)} of {len(st)} kept from the last level" if st else "none"
    return (
        f"driver {r['cpu_self_s']:.1f}, level processes {r['cpu_workers_s']:.1f} (start-up "
        f"{startup:.1f}), actors {r['cpu_actors_s']:.1f} (from the level's start {actor_level:.1f}); "
        f"workers: {kept}; Ray {r['cpu_ray_s']:.1f}: {ray}"
    )


def per_1m(levels: list[dict]) -> float:
    """CPU seconds per 1M output tokens over ``levels`` together."""
    tokens = sum(r["tokens"] for r in levels)
    return sum(r["cpu_total_s"] for r in levels) / tokens * 1e6 if tokens else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short levels: the whole run in <= 8 min")
    ap.add_argument("--start", type=int, default=256, help="first N of the ladder (default 256)")
    ap.add_argument("--max-agents", type=int, default=8192)
    ap.add_argument("--cpu-agents", type=int, default=256, help="N of the CPU comparison (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU comparison at --cpu-agents")
    args = ap.parse_args()
    args.duration, args.warmup, args.ramp, args.drain = (
        (10.0, 3.0, 5.0, 5.0) if args.quick else (30, 5, 10, 10)
    )
    args.step = 2.0 if args.quick else 1.5  # the ladder's factor; then one level between pass and fail
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from agentperf_kit.trajectories import default_trajectories

    lines: list[str] = []

    def say(s: str = "") -> None:
        lines.append(s)
        print(s, flush=True)

    trajs = default_trajectories()
    say(
        f"== ray_scaleout{' --quick' if args.quick else ''}: server TTFT {TTFT_MS:g} ms, {1e3 / ITL_MS:g} "
        f"tok/s, AA-shaped default trajectories, levels: ramp {args.ramp:g} s, warm-up {args.warmup:g} s, "
        f"window {args.duration:g} s, drain {args.drain:g} s; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
        f"commit {git_commit()}; cpus {os.cpu_count()}, load average (1 min) {os.getloadavg()[0]:.2f}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="ray_scaleout_"))
    binary = compile_server(tmp)
    t_all = time.perf_counter()

    # CPU per 1M tokens: in-process first (before Ray exists in this process), then Ray at --workers 1
    from agentperf_kit.scaleout.pool import WorkerPool

    say(f"-- CPU per 1M tokens at N={args.cpu_agents}: in-process vs the Ray path at --workers 1")
    cpu_in = []
    for k in (1, 2):
        cpu_in.append(run_level(binary, trajs, args.cpu_agents, 0, args, tmp, f"cpu-inproc{k}"))
        say(describe(cpu_in[-1]))
    t = time.perf_counter()
    from agentperf_kit.errors import TargetError
    from agentperf_kit.scaleout.runtime import connect

    try:
        connect(None, 2)
    except TargetError as exc:  # a loaded machine: Ray's fixed start-up limits missed three times
        say(f"   Ray did not start, Ray figures not measured: {exc}")
        say(f"   load average (1 min) {os.getloadavg()[0]:.2f}")
        args.no_ray = True
    if not getattr(args, "no_ray", False):
        say(f"   (local Ray runtime started in {time.perf_counter() - t:.0f} s, not counted)")
        a, a1 = per_1m(cpu_in), per_1m(cpu_in[:1])
        cpu_ray = run_level(binary, trajs, args.cpu_agents, 1, args, tmp, "cpu-ray1-new")
        say(describe(cpu_ray))
        b = per_1m([cpu_ray])
        say(
            f"   Ray path at --workers 1, one level on a new worker (its start-ups counted): {b:.1f} vs "
            f"in-process {a:.1f} CPU-s per 1M tokens (its 2 levels; the first alone {a1:.1f}): "
            f"{b / a - 1:+.1%} (target within 5%)"
        )
        seq = []
        with WorkerPool(1) as pool:  # a sweep-like sequence: one worker kept across three levels
            for k in (1, 2, 3):
                seq.append(run_level(binary, trajs, args.cpu_agents, 1, args, tmp, f"cpu-ray1-seq{k}", pool))
                say(describe(seq[-1]))
        c, d = per_1m(seq), per_1m(seq[1:])
        say(
            f"   Ray path at --workers 1, 3 consecutive levels on one kept worker (a sweep; start-ups once, "
            f"in the first): {c:.1f} CPU-s per 1M tokens ({c / a - 1:+.1%}); levels 2-3 alone (what each "
            f"further level of a sweep costs): {d:.1f} ({d / a - 1:+.1%}); in-process {a:.1f} "
            "(target within 5%)"
        )
        e = sum(r["cpu_level_processes_s"] for r in seq[1:]) / sum(r["tokens"] for r in seq[1:]) * 1e6
        say(
            f"   of which the agents' own work (the level process from each start frame) in levels 2-3: "
            f"{e:.1f} CPU-s per 1M tokens ({e / a - 1:+.1%} of in-process); the rest: the actor, the driver, "
            "Ray's processes"
        )

    best: dict[int, int] = {}
    for workers in () if args.cpu_only else (0,) if getattr(args, "no_ray", False) else (0, 2):
        label = "1 worker (in-process)" if workers == 0 else f"{workers} Ray workers (kept across the levels)"
        say(f"-- largest N, {label}")
        pool = WorkerPool(workers) if workers else None
        n, best[workers], failed = args.start, 0, 0
        while n <= args.max_agents:
            r = run_level(binary, trajs, n, workers, args, tmp, f"w{workers}-n{n}", pool)
            say(describe(r))
            if not r["ok"]:
                failed = n
                break
            best[workers] = n
            n = int(n * args.step)
        while not best[workers] and failed > 32:  # the first level failed (a loaded machine): go down
            n = failed // 2
            r = run_level(binary, trajs, n, workers, args, tmp, f"w{workers}-n{n}", pool)
            say(describe(r))
            best[workers], failed = (n, failed) if r["ok"] else (0, n)
        if best[workers] and failed:  # one level between the last pass and the first fail
            mid = round(math.sqrt(best[workers] * failed))
            if best[workers] < mid < failed:
                r = run_level(binary, trajs, mid, workers, args, tmp, f"w{workers}-n{mid}", pool)
                say(describe(r))
                if r["ok"]:
                    best[workers] = mid
        if pool is not None:
            pool.close()
    one = best.get(0, 0)
    if args.cpu_only:
        two = "not measured (--cpu-only)"
    elif 2 in best:
        ratio = best[2] / one if one else math.nan
        two = f"2 workers {best[2]:,}: {ratio:.2f}x (target >= 1.7x)"
    else:
        two = "2 workers not measured (Ray did not start)"
    say(
        f"-- largest N: 1 worker {one:,}, {two}; whole run {time.perf_counter() - t_all:.0f} s, load "
        f"average (1 min) {os.getloadavg()[0]:.2f}"
    )
    if not args.no_append:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
