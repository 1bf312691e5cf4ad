"""Client cost measured from outside (issue 18): ``agentperf run`` as a subprocess against the C server.

The client is the real CLI (``python -m agentperf_kit.cli run``, duration-based), the server is
``fast_sse_server.c`` with its truth log (the true send time of every request's first and last token on
CLOCK_MONOTONIC, which is ``time.perf_counter``'s clock on Linux, so the client's stamps, ``origin_ns`` +
seconds in ``requests.parquet``, are on the same clock). This script only watches:

- **client CPU**: utime + stime of the client process (all its threads, plus children it waited for) from
  ``/proc/PID/stat``, sampled every ``--sample-s`` together with the server's ``/stats`` (tokens sent, the
  time integral of streams in flight); ``os.wait4`` gives the whole run's total. CPU-s per 1M tokens is
  given over the **server's streaming window** (from the first token the server sent to the last, from
  the truth log; all tokens of the run) and over the client's **steady window** (the manifest's window,
  all N agents active; tokens the server sent in it).
- **TTFT error** per request = client TTFT (``t_first_s - t_send_s``) - the server's true TTFT (first
  token's send completed - request read), requests matched by their phase marker (the server decodes its
  first 16 digits from the prompt; the benchmark replays the run's ``AgentFleet`` with the manifest's
  seed and ``marker_nonce`` to get each ``phase_id``'s marker) and their order within the phase. The
  matched share is printed; for ``completions`` the prompt sizes must also agree.
- **speed error**: client (n - 1) / (t_last - t_first) against the server's true first-to-last span.
- **streams in flight**: the server's time-average of active streams over the steady window / N.

Workloads (issue 18):

- ``A``: 256 agents, uniform trajectories (1,000-token prompts, 1,024 output tokens, no tool delay),
  server as fast as it can: CPU-s per 1M tokens (target <= 2).
- ``B``: 1,024 agents, uniform (1,000-token prompts, 300 output tokens, no tool delay), server TTFT
  200 ms, 50 tok/s: TTFT error P50 / P95 (target P95 <= 20 ms), streams in flight (>= 99%), CPU-s per 1M
  tokens (<= 15).
- ``aa``: the default synthetic trajectories (~26K-token mean prompts, tool delays), ``--agents`` (1,024
  or 4,096), server TTFT 200 ms, 50 tok/s: TTFT error P50 / P95 (P95 <= 20 ms at 1,024), ``client_ok``,
  CPU-s per 1M output tokens.

    python benchmarks/client_outside.py --workload A
    python benchmarks/client_outside.py --workload B
    python benchmarks/client_outside.py --workload aa --agents 1024 --endpoint completions
    python benchmarks/client_outside.py --workload aa --agents 4096 --endpoint chat
    python benchmarks/client_outside.py --workload B --profile   # py-spy record of the client

Each run appends its report, with the command, the git commit and the 1-min load average before and after,
to ``benchmarks/results/client_outside.txt`` (``--no-append`` to only print). Latency figures depend on
what else runs on the machine: compare figures taken at a similar load.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fast_sse_server import FastSSEServer, compile_server, read_truth_log

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "client_outside.txt"
TICK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    # agents, server TTFT ms, server ITL ms, output tokens (uniform), endpoint default
    "A": {"agents": 256, "ttft_ms": 0.0, "itl_ms": 0.0, "out": 1024},
    "B": {"agents": 1024, "ttft_ms": 200.0, "itl_ms": 20.0, "out": 300},
    "aa": {"agents": 1024, "ttft_ms": 200.0, "itl_ms": 20.0, "out": None},
}


def _pct(xs, q):
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def uniform_trajectories(n_out: int, count: int = 64, turns: int = 8):
    """Every turn a fresh phase with a 1,000-token prompt, ``n_out`` output tokens, no tool delay."""
    from agentperf_kit.trajectories.model import Trajectory, Turn

    return [
        Trajectory(f"uniform{i}", [Turn(k, 0, 1000, n_out, tool_delay_s=0.0) for k in range(turns)])
        for i in range(count)
    ]


def proc_cpu_s(pid: int) -> float:
    """utime + stime (+ cutime + cstime) of ``pid`` in seconds, all threads; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def interp(ts: list[float], ys: list[float], t: float) -> float:
    """Linear interpolation of samples (clamped at the ends)."""
    if not ts:
        return math.nan
    i = bisect.bisect_left(ts, t)
    if i <= 0:
        return ys[0]
    if i >= len(ts):
        return ys[-1]
    t0, t1 = ts[i - 1], ts[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)


def phase_markers(trajs, n_agents: int, seed: int, nonce: int, n_phases: int, rules) -> dict[int, str]:
    """Each ``phase_id``'s marker, by replaying the fleet's draws: the first N phases come from
    ``start()`` (interleaved with the start turns), later ones one draw each, in ``phase_id`` order."""
    from agentperf_kit.agents import AgentFleet

    fleet = AgentFleet(trajs, n_agents, rules, seed=seed, sink=lambda row: None, marker_nonce=nonce)
    out = {p.phase_id: p.marker for p in fleet.start(0.0)}
    for pid in range(len(out), n_phases):
        out[pid] = f"{(fleet._rng.getrandbits(107) ^ nonce) % 10**32:032d}"
    return out


def match_truth(df, truth: list[dict], markers: dict[int, str]):
    """Pair client rows with server log lines: same marker (16 digits), same rank within the phase (by
    client send time / server read time). Returns [(row, truth_line)]."""
    by_marker: dict[str, list[dict]] = defaultdict(list)
    for t in truth:
        if t["marker"] != "-":
            by_marker[t["marker"]].append(t)
    for lines in by_marker.values():
        lines.sort(key=lambda t: t["t_req"])
    pairs = []
    rows = df[df["t_send_s"] == df["t_send_s"]].sort_values("t_send_s")
    for pid, grp in rows.groupby("phase_id", sort=False):
        lines = by_marker.get(markers.get(int(pid), "")[:16], [])
        for (_, row), line in zip(grp.iterrows(), lines):
            pairs.append((row, line))
    return pairs


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %cs"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> str:
    spec = dict(WORKLOADS[args.workload])
    n = args.agents or spec["agents"]
    endpoint = args.endpoint or "completions"
    lines: list[str] = []

    def say(s: str = "") -> None:
        lines.append(s)
        print(s, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="client_outside_"))
    try:
        binary = compile_server(tmp)
        cmd = [
            sys.executable,
            "-m",
            "agentperf_kit.cli",
            "run",
            "--model",
            "fast",
            "--endpoint",
            endpoint,
            "--concurrency",
            str(n),
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--min-trajectories",
            "0",
            "--min-trajectories-per-agent",
            "0",
            "--drain-timeout",
            str(args.drain),
            "--seed",
            str(args.seed),
            *(["--ramp", str(args.ramp)] if args.ramp is not None else []),
            *(["--quiet"] if args.quiet else []),
            "--out",
            str(tmp / "run"),
        ]
        if spec["out"] is not None:
            from agentperf_kit.trajectories import save_trajectories

            trajs = uniform_trajectories(spec["out"])
            path = save_trajectories(trajs, tmp / "uniform.jsonl")
            cmd += ["--trajectories", str(path)]
        else:
            from agentperf_kit.trajectories import default_trajectories

            trajs = default_trajectories()
        load0 = os.getloadavg()
        say(
            f"== {args.workload} N={n} endpoint={endpoint} server TTFT {spec['ttft_ms']:g} ms ITL "
            f"{spec['itl_ms']:g} ms, duration {args.duration:g} s, warmup {args.warmup:g} s; "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; commit {git_commit()}"
        )
        say(
            f"   command: python benchmarks/client_outside.py {' '.join(sys.argv[1:])}; python "
            f"{sys.version.split()[0]}, cpus {os.cpu_count()}, load average (1 min) before {load0[0]:.2f}"
        )
        truth_path = tmp / "truth.log"
        with FastSSEServer(spec["ttft_ms"], spec["itl_ms"], binary=binary, log=truth_path) as srv:
            cmd[4:4] = ["--target", srv.base_url]
            stats_url = srv.base_url.rsplit("/v1", 1)[0] + "/stats"
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            if args.profile:
                pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                prof = tmp / "profile.txt"
                cmd = [pyspy, "record", "-r", "50", "-f", "raw", "-o", str(prof), "--", *cmd]
            log_path = tmp / "client.out"
            with open(log_path, "w") as log_f:
                client = subprocess.Popen(cmd, env=env, stdout=log_f, stderr=subprocess.STDOUT)
            pid = client.pid
            if args.profile:  # the python process is py-spy's child
                time.sleep(1.0)
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                pid = int(kids[0]) if kids else pid
            samples: list[tuple[float, float, float, float]] = []  # t, client cpu, tokens, active integral
            rusage = None
            while True:
                wpid, status, ru = os.wait4(client.pid, os.WNOHANG)
                if wpid:
                    client.returncode, rusage = os.waitstatus_to_exitcode(status), ru
                    break
                t = time.perf_counter()
                cpu = proc_cpu_s(pid)
                try:
                    with urllib.request.urlopen(stats_url, timeout=5) as r:
                        st = json.loads(r.read())
                    samples.append((t, cpu, float(st["tokens"]), float(st["active_integral"])))
                except OSError:
                    pass
                time.sleep(args.sample_s)
            out_text = log_path.read_text()
            if args.profile:
                rusage = None  # py-spy's own CPU would be in it
        load1 = os.getloadavg()
        if client.returncode not in (0, 3):  # 3: measured, but not validly (e.g. the self-check failed)
            say(f"   client exited with {client.returncode}:\n{out_text[-3000:]}")
            return "\n".join(lines)
        from agentperf_kit.results import read_requests_file

        run_dir = tmp / "run"
        df = read_requests_file(run_dir / "requests.parquet")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        truth = read_truth_log(truth_path)
        origin = manifest["clock"]["origin_ns"] / 1e9
        window = manifest["window"]
        w0, w1 = origin + window["window_start_s"], origin + window["window_end_s"]
        ts = [s[0] for s in samples]
        cpu_at = lambda t: interp(ts, [s[1] for s in samples], t)  # noqa: E731
        tok_at = lambda t: interp(ts, [s[2] for s in samples], t)  # noqa: E731
        act_at = lambda t: interp(ts, [s[3] for s in samples], t)  # noqa: E731
        streamed = [t for t in truth if t["t_first"] > 0]
        s0 = min(t["t_first"] for t in streamed)
        s1 = max(t["t_last"] for t in streamed if t["t_last"] > 0)
        toks_all = sum(t["tokens"] for t in truth)
        cpu_stream = cpu_at(s1) - cpu_at(s0)
        cpu_win = cpu_at(w1) - cpu_at(w0)
        toks_win = tok_at(w1) - tok_at(w0)
        in_flight = (act_at(w1) - act_at(w0)) / (w1 - w0) / n if w1 > w0 else math.nan
        cc = manifest.get("client_check", {})
        say(
            f"   load average (1 min) after {load1[0]:.2f}; client_ok={manifest.get('client_ok')} "
            f"(loop lag P95 {cc.get('loop_lag_p95_s', math.nan) * 1e3:.2f} ms, send delay P95 "
            f"{cc.get('send_delay_p95_s', math.nan) * 1e3:.2f} ms, connection waits "
            f"{cc.get('connection_waits')}, GC {cc.get('gc_pauses')}) {'; '.join(cc.get('reasons', []))}"
        )
        n_cancel = int((df.error == "cancelled_at_end").sum())
        say(
            f"   requests {len(df):,} (in window {int(df.in_window.sum()):,}, failed "
            f"{int((~df.ok).sum())}, of which cancelled at the end {n_cancel}); "
            f"server: {len(truth):,} streamed, {toks_all:,} tokens; windows: streaming "
            f"{s1 - s0:.1f} s, steady {w1 - w0:.1f} s"
        )
        say(
            f"   client CPU per 1M tokens: server's streaming window {cpu_stream / toks_all * 1e6:.2f} CPU-s "
            f"({cpu_stream:.1f} CPU-s, {cpu_stream / (s1 - s0):.0%} of a core); steady window "
            f"{cpu_win / max(toks_win, 1) * 1e6:.2f} CPU-s ({toks_win:,.0f} tokens, "
            f"{cpu_win / max(w1 - w0, 1e-9):.0%} of a core)"
            + (
                f"; whole process (start-up and write-out included, os.wait4) "
                f"{(rusage.ru_utime + rusage.ru_stime):.1f} CPU-s"
                if rusage is not None
                else ""
            )
        )
        if spec["itl_ms"] > 0:  # as fast as possible: the server's writes only fill socket buffers
            say(f"   streams in flight (server time-average over the steady window): {in_flight:.2%} of {n}")
        nonce = int(manifest["config"]["marker_nonce"], 16)
        markers = phase_markers(
            trajs, n, args.seed, nonce, int(df.phase_id.max()) + 1, _rules(args, manifest)
        )
        pairs = match_truth(df, truth, markers)
        size_bad = sum(
            1
            for row, line in pairs
            if endpoint == "completions" and row.ok and int(row.target_prompt_tokens) != line["prompt_tokens"]
        )
        say(
            f"   matched to the truth log: {len(pairs):,} of {len(df):,} client rows "
            f"(prompt size disagreements: {size_bad})"
        )
        err, err_win, send_d, recv_d, sp_err = [], [], [], [], []
        for row, line in pairs:
            if not (row.ok and line["t_first"] > 0):
                continue
            c_ttft = row.t_first_s - row.t_send_s
            s_ttft = line["t_first"] - line["t_req"]
            e = c_ttft - s_ttft
            err.append(e)
            if row.in_window:
                err_win.append(e)
            send_d.append(line["t_req"] - (origin + row.t_send_s))
            recv_d.append((origin + row.t_first_s) - line["t_first"])
            span_c, span_s = row.t_last_s - row.t_first_s, line["t_last"] - line["t_first"]
            if line["tokens"] >= 2 and span_c > 0 and span_s > 0:
                sp_err.append(span_s / span_c - 1)
        ms = lambda xs, q: _pct(xs, q) * 1e3  # noqa: E731
        say(
            f"   TTFT error (client TTFT - server's true TTFT) in window: P50 {ms(err_win, 50):.1f} ms, "
            f"P95 {ms(err_win, 95):.1f} ms, max {max(err_win, default=math.nan) * 1e3:.1f} ms "
            f"({len(err_win):,} requests); all requests P50 {ms(err, 50):.1f} / P95 {ms(err, 95):.1f} ms"
        )
        say(
            f"   of which: client send stamp -> server read P50 {ms(send_d, 50):.2f} / P95 "
            f"{ms(send_d, 95):.2f} ms; server first-token write -> client stamp P50 {ms(recv_d, 50):.2f} / "
            f"P95 {ms(recv_d, 95):.2f} ms; speed error P5 {_pct(sp_err, 5):+.2%} / median "
            f"{_pct(sp_err, 50):+.2%} / P95 {_pct(sp_err, 95):+.2%}"
        )
        if args.profile:
            say(f"   py-spy profile (raw folded stacks) kept at {args.profile_out}")
            shutil.copy(tmp / "profile.txt", args.profile_out)
            say(summarize_profile(Path(args.profile_out), args.profile_top))
        return "\n".join(lines)
    finally:
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _rules(args, manifest):
    from agentperf_kit.agents import RunRules

    r = manifest["config"]["rules"]
    return RunRules(**{k: v for k, v in r.items() if k in RunRules.__dataclass_fields__})


def _frame(f: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``: samples grouped by function, not line."""
    name, _, where = f.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})" if where else name


def summarize_profile(path: Path, top: int) -> str:
    """Self time and inclusive time per function from py-spy's raw (folded) output."""
    self_t: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if frames:
            self_t[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    out = [f"   py-spy: {total} samples; top self time:"]
    for f, c in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"     {c / total:6.1%}  {f}")
    out.append("   top inclusive time:")
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]:
        out.append(f"     {c / total:6.1%}  {f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--agents", type=int, help="N (default: A 256, B 1024, aa 1024)")
    ap.add_argument("--endpoint", choices=["chat", "completions"], help="default completions")
    ap.add_argument("--duration", type=float, default=20.0, help="steady window, s")
    ap.add_argument("--warmup", type=float, default=5.0, help="after all agents are active, s")
    ap.add_argument("--drain", type=float, default=15.0, help="drain after the window, s")
    ap.add_argument("--ramp", type=float, help="agents' start ramp, s (default: A, B 5 s; aa the CLI's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-s", type=float, default=0.1, help="CPU / server counter sampling period")
    ap.add_argument("--profile", action="store_true", help="run the client under py-spy (figures skewed)")
    ap.add_argument("--profile-out", default="/tmp/client_outside_profile.txt")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--quiet", action="store_true", help="run the client without its progress bar")
    ap.add_argument("--keep", help="copy the run directory, truth log and client output here")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to the results")
    args = ap.parse_args()
    if args.ramp is None and args.workload in ("A", "B"):
        args.ramp = 5.0
    report = run(args)
    if not args.no_append and not args.profile:
        with open(RESULTS, "a") as f:
            f.write(report + "\n\n")


if __name__ == "__main__":
    main()
