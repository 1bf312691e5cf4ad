"""Validate a digital twin: profile a server, predict its sweep, compare with the measured sweep.

Two modes, one command each (prints a table per tier and the TTFT / speed curves side by side, and writes
``validation.json`` and the twin under ``--out``):

    # ground truth known: agentperf serve-sim running PRESET; the "measured" sweep is the preset's own
    # virtual-time sweep (the engine serve-sim runs), so only the twin's error is measured
    python benchmarks/twin_validate.py serve-sim --preset h100x8-llama70b --max-context 16384

    # a real server (e.g. llama.cpp from shared/real-servers, port 8200): the measured sweep runs live;
    # outputs floored at 32 tokens, tiers derived from the twin's one-agent level (docs/simulator.md)
    python benchmarks/twin_validate.py live --target http://127.0.0.1:8200/v1 --model tiny-random-llama \\
        --max-context 2048 --chunk-tokens 2048 --decode-tokens 300 --min-output-tokens 32 \\
        --tiers single-stream --level-duration 15 --warmup 3 --max-agents 128 --resolution 4 \\
        --min-trajectories 0 --min-trajectories-per-agent 0 --max-extensions 0 --drain-timeout 5

Every sweep replays the same trajectory set, written to ``--out``/trajectories.jsonl: the built-in set
fitted to ``--max-context`` (one scale factor), its outputs floored at ``--min-output-tokens``. On a fast
small server give a floor (32 for the tiny llama.cpp model): scaled into 2,048 tokens the outputs shrink
to 1-9 tokens, a 1-token output has no speed and a few tokens arrive within one client read (unmeasurable),
and a level with more than 5 % unmeasurable speeds never passes. A live level's progress line carries the
load average, and the curve table its client self-check and unmeasurable share.

The measured sweep resumes from ``--out`` when run again with the same settings (a live one takes many
minutes), the twin sweeps are always redone. The twin's answer is the ``mid`` sweep; ``low`` / ``high``
sweeps (coefficients at their 95 % bounds) give the band. Pass ``--twin PATH`` to skip profiling and
reuse a twin. ``--insitu-agents N[,M...]`` fits the twin's per-request work in situ before the sweeps:
``agentperf run`` replays the same trajectories at each N agents (a seed of its own) for ``--insitu-s``
seconds (default 30) after ``--insitu-warmup`` (default 30, so the server is in a served state), and
``agentperf profile --insitu DIR ...`` takes admit_s and finish_s from their decode spans, pooled
(``agentperf_kit.twin.insitu``; a low and a high load of the range swept, e.g. ``32,96`` for
``--max-agents 128``: what a request costs the others moves with load on vLLM, so a fit at one load holds
near it only); the twins swept are then ``--out``/twin_insitu.toml. The 1-minute load
average is printed before and after each phase: the figures depend on it on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentperf_kit.sweep import SweepConfig, run_sweep
from agentperf_kit.twin.profile import ProfileConfig, profile_sync, write_twin


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve_sim(preset: str, time_scale: float) -> tuple[subprocess.Popen, str, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "agentperf_kit.cli", "serve-sim", "--preset", preset]
    cmd += ["--port", str(port), "--time-scale", str(time_scale)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                return proc, base, json.loads(r.read())["data"][0]["id"]
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("serve-sim did not come up") from None
            time.sleep(0.3)


def _workload(args: argparse.Namespace, out: Path) -> dict:
    """Write the trajectory set every sweep of this validation replays (``out/trajectories.jsonl``): the
    built-in set fitted to ``--max-context`` (scale mode) with outputs of at least ``--min-output-tokens``.
    Returns its description for the report."""
    import numpy as np

    from agentperf_kit.trajectories import default_trajectories, fit_context, save_trajectories

    trajs = default_trajectories()
    if args.max_context:
        trajs = fit_context(trajs, args.max_context, min_output_tokens=args.min_output_tokens)
    path = save_trajectories(
        trajs,
        out / "trajectories.jsonl",
        meta={
            "fitted_from": "default",
            "max_context_tokens": args.max_context,
            "min_output_tokens": args.min_output_tokens,
        },
    )
    turns = [t for tr in trajs for t in tr.turns]

    def q(vals: list[int]) -> list[float]:
        return [float(v) for v in np.percentile(vals, (5, 25, 50, 75, 95))]

    return {
        "path": str(path),
        "output_tokens_p5_25_50_75_95": q([t.output_tokens for t in turns]),
        "prompt_tokens_p5_25_50_75_95": q([t.input_tokens for t in turns]),
        "tool_delay_s_mean": float(np.mean([t.tool_delay_s for t in turns])),
    }


def _sweep(target: str, args: argparse.Namespace, out: Path, *, live: bool = False, **kw) -> dict:
    cfg = SweepConfig(
        target=target,
        tiers=args.tiers,
        trajectories=args.trajectories_file,
        level_duration_s=args.level_duration,
        warmup_s=args.warmup,
        max_agents=args.max_agents,
        resolution=args.resolution,
        seed=args.seed,
        min_trajectories=args.min_trajectories,
        min_trajectories_per_agent=args.min_trajectories_per_agent,
        max_extensions=args.max_extensions,
        drain_timeout_s=args.drain_timeout,
        out=str(out),
        band=False,  # the twin's band is its own low / high sweeps; the truth needs none
        **kw,
    )
    load_at: dict[int, float] = {}  # a live level's 1-minute load average when it ended

    def say(line: str) -> None:
        m = re.match(r"\s*N=(\d+)\s", line)
        if m:
            load_at[int(m.group(1))] = _load()
        print(f"  [{time.strftime('%H:%M:%S')} load {_load()}] {line.strip()}", flush=True)

    t0 = time.perf_counter()
    res = run_sweep(cfg, progress=say if live else False)
    s = res.summary
    return {
        "target": target,
        "wall_s": round(time.perf_counter() - t0, 1),
        "tiers": {t["name"]: t["max_agents"] for t in s["tiers"]},
        "lower_bound": {t["name"]: t["max_agents_is_lower_bound"] for t in s["tiers"]},
        "levels": {
            int(lv["concurrency"]): (lv["p95_ttft_s"], lv["p25_output_speed_tps"], lv.get("meets_aa_rules"))
            for lv in s["levels"]
        },
        # per level: the client's self-check, the share of unmeasurable speeds, the load when it ended
        "checks": {
            int(lv["concurrency"]): (
                lv.get("client_ok"),
                lv.get("speed_unmeasured_share"),
                load_at.get(int(lv["concurrency"])),
            )
            for lv in s["levels"]
        },
        "loadavg_after": _load(),
    }


def _insitu(twin: Path, base: str, model: str, args: argparse.Namespace, out: Path, report: dict) -> Path:
    """Replay the workload at each of ``--insitu-agents`` agent counts for ``--insitu-s`` seconds (a seed
    of its own, not the sweep's) with ``agentperf run``, fit the per-request work from the replays pooled
    (``agentperf profile --insitu DIR ...``) and return the twin with it (``out/twin_insitu.toml``; the
    profiled twin is left as it was)."""
    from agentperf_kit.twin.insitu import insitu_twin

    replays = []
    t0 = time.perf_counter()
    for n in args.insitu_agents:
        replay = out / f"insitu-replay-n{n}"
        cmd = [
            sys.executable, "-m", "agentperf_kit.cli", "run", "--target", base, "--model", model,
            "-n", str(n), "--duration", str(args.insitu_s), "--warmup", str(args.insitu_warmup),
            "--min-trajectories", "0", "--min-trajectories-per-agent", "0", "--drain-timeout", "5",
            "--trajectories", args.trajectories_file, "--endpoint", "completions", "--seed",
            str(args.seed + 7919 + n), "--out", str(replay), "--overwrite", "--quiet",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"in situ: replayed {n} agents -> {replay} (load {_load()})")
        replays.append(replay)
    dst, f = insitu_twin(twin, replays, out / "twin_insitu.toml")
    report["insitu"] = {
        "agents": list(args.insitu_agents),
        "window_s": args.insitu_s,
        "wall_s": round(time.perf_counter() - t0, 1),
        **f.as_dict(),
        "loadavg_after": _load(),
    }
    agents = ", ".join(str(n) for n in args.insitu_agents)
    print(
        f"in situ: {agents} agents pooled, {f.spans} decode spans ({f.arrivals_per_span:.2f} "
        f"arrivals per span): admit_s {f.admit_s * 1e3:.2f} +- {f.admit_s_se * 1e3:.2f} ms, finish_s "
        f"{f.finish_s * 1e3:.2f}, end_s {f.end_s * 1e3:.2f}, release_s {f.release_s * 1e3:.2f} ms, "
        f"queued_step_s {f.queued_step_s * 1e3:.3f} ms ({f.queued_steps_share:.0%} of steps queued), "
        f"left per step {f.leftover_per_step_s * 1e3:.3f} ms -> {dst} (load {_load()})"
    )
    return dst


def _agent_counts(text: str) -> list[int]:
    """``--insitu-agents``: agent counts separated by commas (``32,96``); ``0`` = off."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"agent counts like 32,96 expected, got {text!r}") from None
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError(f"agent counts must be >= 0, got {text!r}")
    return [n for n in counts if n > 0]


# --tiers single-stream: (name, speed divisor, TTFT multiple) of the twin's single-agent P25 speed / P95 TTFT
_SINGLE_STREAM_TIERS = (("fast", 2, 10), ("mid", 4, 40), ("slow", 8, 200))


def _sig2(x: float) -> str:
    return f"{float(f'{x:.2g}'):g}"


def _single_stream_tiers(twin: Path, args: argparse.Namespace, out: Path) -> str:
    """Tiers derived from the twin alone, before any measurement: its one-agent level (virtual time, the
    same trajectories) gives the P25 speed S1 and P95 TTFT T1; tier k asks for S1 / d_k and T1 x m_k
    (``_SINGLE_STREAM_TIERS``: 1/2, 1/4, 1/8 of the speed; 10, 40, 200 times the TTFT), 2 significant
    digits. So the tiers scale with the server, and they bind where agents start to queue for its slots."""
    shutil.rmtree(out / "twin-single", ignore_errors=True)
    one = argparse.Namespace(**{**vars(args), "tiers": "any=0.001/1000", "max_agents": 1, "resolution": 1})
    r = _sweep(f"sim:{twin}", one, out / "twin-single", efficiency="mid")
    t1, s1, _ = r["levels"][1]
    return ",".join(f"{n}={_sig2(s1 / d)}/{_sig2(t1 * m)}" for n, d, m in _SINGLE_STREAM_TIERS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["serve-sim", "live"])
    ap.add_argument("--preset", default="h100x8-llama70b", help="serve-sim mode: the ground-truth preset")
    ap.add_argument("--time-scale", type=float, default=1.0, help="serve-sim mode: its --time-scale")
    ap.add_argument("--target", help="live mode: base URL")
    ap.add_argument("--model", help="live mode: model name")
    ap.add_argument("--twin", help="reuse this twin preset (skip profiling)")
    ap.add_argument("--max-context", type=int, default=None, help="fit trajectories (and profile) to this")
    ap.add_argument(
        "--min-output-tokens",
        type=int,
        default=None,
        help="fit: floor on each turn's output tokens, so that a fast server's speeds are measurable",
    )
    ap.add_argument("--chunk-tokens", type=int, default=None, help="profile: the server's prefill chunk")
    ap.add_argument("--decode-tokens", type=int, default=128, help="profile: tokens per decode stream")
    ap.add_argument("--max-batch", type=int, default=None, help="profile: the server's largest batch")
    ap.add_argument("--repeats", type=int, default=3, help="profile: repeats per measurement (default 3)")
    ap.add_argument("--budget", type=float, default=240.0, help="profile: s before optional parts stop")
    ap.add_argument(
        "--tiers",
        default="aa-dsv4pro",
        help="tier preset or spec; 'single-stream': derived from the twin's one-agent level (see the code)",
    )
    ap.add_argument("--level-duration", type=float, default=600.0)
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--max-agents", type=int, default=4096)
    ap.add_argument(
        "--resolution", type=int, default=1, help="sweep: the bisection stops at this many agents (default 1)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-trajectories", type=int, default=30, help="sweep rule (default 30)")
    ap.add_argument("--min-trajectories-per-agent", type=int, default=3, help="sweep rule (default 3)")
    ap.add_argument("--max-extensions", type=int, default=2, help="sweep rule (default 2)")
    ap.add_argument("--drain-timeout", type=float, default=120.0, help="sweep rule, s (default 120)")
    ap.add_argument(
        "--tolerance", type=float, default=None, help="pass band (default 0.10 serve-sim, 0.20 live)"
    )
    ap.add_argument(
        "--insitu-agents",
        type=_agent_counts,
        default=[],
        help="fit the per-request work in situ from replays of these many agents, pooled (e.g. 32,96: a "
        "low and a high load of the sweep's range; 0: off)",
    )
    ap.add_argument(
        "--insitu-s", type=float, default=30.0, help="the in-situ replay's window, s (default 30)"
    )
    ap.add_argument(
        "--insitu-warmup",
        type=float,
        default=30.0,
        help="the in-situ replay's warm-up, s (default 30: brings the server to a served state)",
    )
    ap.add_argument("--out", default="runs/twin-validate")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tol = args.tolerance if args.tolerance is not None else (0.10 if args.mode == "serve-sim" else 0.20)
    report: dict = {"mode": args.mode, "argv": sys.argv[1:], "loadavg_start": _load(), "tolerance": tol}
    print(f"load average (1 min) at start: {report['loadavg_start']}")
    report["workload"] = w = _workload(args, out)
    args.trajectories_file = w["path"]
    print(
        f"trajectories {w['path']}: output tokens P5/25/50/75/95 {w['output_tokens_p5_25_50_75_95']}, "
        f"prompt tokens {w['prompt_tokens_p5_25_50_75_95']}, mean tool delay {w['tool_delay_s_mean']:.3f} s"
    )

    # 1. profile -> twin
    twin = Path(args.twin) if args.twin else out / "twin.toml"
    proc = None
    try:
        if args.mode == "serve-sim":
            proc, base, model = _start_serve_sim(args.preset, args.time_scale)
        else:
            if not (args.target and args.model):
                ap.error("live mode needs --target and --model")
            base, model = args.target, args.model
        if not args.twin:
            t0 = time.perf_counter()
            res = profile_sync(
                ProfileConfig(
                    base,
                    model,
                    max_context=args.max_context,
                    chunk_tokens=args.chunk_tokens,
                    decode_tokens=args.decode_tokens,
                    stream_tokens=args.min_output_tokens or 32,
                    repeats=args.repeats,
                    max_batch=args.max_batch,
                    budget_s=args.budget,
                )
            )
            write_twin(res, twin)
            report["profile"] = {
                "wall_s": round(time.perf_counter() - t0, 1),
                "coef": res.fit.coef,
                "se": res.fit.se,
                "rms_rel_residual": res.fit.rms_rel,
                "form": res.fit.form,
                "overlap_f_test_p": res.fit.overlap_p_value,
                "mixed_rows": sum(o.kind == "mixed" for o in res.observations),
                "limits": res.limits,
                "loadavg_after": _load(),
            }
            pr = report["profile"]
            print(
                f"profiled in {pr['wall_s']} s -> {twin} (load {pr['loadavg_after']}); fit form {pr['form']} "
                f"(F test p {pr['overlap_f_test_p']:.3g}, {pr['mixed_rows']} mixed-step rows), overlap "
                f"{pr['coef']['overlap']:.3f} +- {pr['se']['overlap']:.3f}, request_s "
                f"{pr['coef']['request_s'] * 1e3:.2f} ms, RMS relative residual {pr['rms_rel_residual']:.3f}"
            )
        if args.insitu_agents:
            twin = _insitu(twin, base, model, args, out, report)
        if args.tiers == "single-stream":
            args.tiers = report["tiers"] = _single_stream_tiers(twin, args, out)
            print(f"tiers from the twin's single stream: {args.tiers}")
        # 2. the measured sweep (live) while the server is up
        if args.mode == "live":
            report["measured"] = _sweep(
                base, args, out / "measured", live=True, model=model, accelerators=1, endpoint="completions"
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    if args.mode == "serve-sim":
        report["measured"] = _sweep(f"sim:{args.preset}", args, out / "truth")
    # 3. the twin's predictions (from scratch: a sweep directory is resumed, and the twin may be new)
    for eff in ("mid", "low", "high"):
        shutil.rmtree(out / f"twin-{eff}", ignore_errors=True)
        report[f"twin_{eff}"] = _sweep(f"sim:{twin}", args, out / f"twin-{eff}", efficiency=eff)
    if args.mode == "serve-sim":
        report["step_check"] = _step_check(args.preset, twin)
    report["loadavg_end"] = _load()
    (out / "validation.json").write_text(json.dumps(report, indent=1, default=str))
    _print(report, tol)
    return 0


# (decoding sequences, their context sum, prefill tokens, prefill prefix) of single steps to compare
_STEPS = [(1, 100, 0, 0), (30, 150_000, 0, 0), (100, 1_000_000, 0, 0), (30, 150_000, 500, 5_000),
          (30, 150_000, 8_162, 0), (0, 0, 8_192, 0), (0, 0, 200, 8_000)]  # fmt: skip


def _step_check(preset: str, twin: Path) -> list[dict]:
    """One engine step timed by the preset's engine and by the twin (ms): where the linear form fits."""
    from agentperf_kit.sim.engine import Engine
    from agentperf_kit.sim.presets import efficiency, get_deployment
    from agentperf_kit.sim.twin import TwinEngine

    eff = efficiency("mid")
    truth = Engine(get_deployment(preset), eff, lambda *a: None, lambda *a: None)
    model = TwinEngine(get_deployment(str(twin)), eff, lambda *a: None, lambda *a: None)
    rows = []
    for b, ctx, pre, prefix in _STEPS:
        pairs = pre * prefix + pre * pre / 2.0
        kv = prefix + pre if pre else 0
        args = (b + pre, b, 1.0, ctx, pairs, kv)
        t, m = truth._step(*args)[0], model._step(*args)[0]
        rows.append({"decoders": b, "context": ctx, "prefill": pre, "prefix": prefix,
                     "engine_ms": t * 1e3, "twin_ms": m * 1e3, "error": m / t - 1})  # fmt: skip
    return rows


def _print(r: dict, tol: float) -> None:
    m, mid, lo, hi = r["measured"], r["twin_mid"], r["twin_low"], r["twin_high"]
    kind = "ground truth (preset, virtual time)" if r["mode"] == "serve-sim" else "measured (live)"
    print(f"\nmax agents per tier: {kind} vs twin (band low..high), tolerance +-{tol:.0%}")
    print("| tier | measured | twin | band | error | within |")
    print("|---|---|---|---|---|---|")
    for t, n in m["tiers"].items():
        p = mid["tiers"][t]
        err = (p - n) / n if n else float("nan")
        ok = "yes" if n and abs(err) <= tol else ("n/a (0)" if not n else "no")
        lb = " (lower bound)" if m["lower_bound"][t] else ""
        print(f"| {t} | {n}{lb} | {p} | {lo['tiers'][t]}..{hi['tiers'][t]} | {err:+.1%} | {ok} |")
    print("\nP95 TTFT (s) and P25 output speed (tok/s) against N: measured | twin mid; the measured level's")
    print("client self-check, share of unmeasurable speeds and 1-minute load average when it ended")
    print("| N | TTFT measured | TTFT twin | speed measured | speed twin | client ok | unmeasurable | load |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sorted(set(m["levels"]) | set(mid["levels"])):
        a = m["levels"].get(n, (None, None, None))
        b = mid["levels"].get(n, (None, None, None))
        c = m.get("checks", {}).get(n, (None, None, None))

        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        print(
            f"| {n} | {f(a[0], '.3f')} | {f(b[0], '.3f')} | {f(a[1], '.1f')} | {f(b[1], '.1f')} | "
            f"{f(c[0], '')} | {f(c[1], '.1%')} | {f(c[2], '')} |"
        )
    if "step_check" in r:
        print("\none step, the preset's engine vs the twin (ms)")
        print("| decoders | context | prefill | on prefix | engine | twin | error |")
        print("|---|---|---|---|---|---|---|")
        for x in r["step_check"]:
            print(f"| {x['decoders']} | {x['context']:,} | {x['prefill']:,} | {x['prefix']:,} | "
                  f"{x['engine_ms']:.2f} | {x['twin_ms']:.2f} | {x['error']:+.1%} |")  # fmt: skip
    print(
        f"\nwall s: measured {m['wall_s']}, twin {mid['wall_s']}; load average start {r['loadavg_start']}, "
        f"end {r['loadavg_end']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
