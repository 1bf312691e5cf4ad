"""``agentperf run``: one level (N agents) against a URL or the simulated system."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one level of N agents against a URL or the simulated system")
    p.add_argument("--target", default="sim", help="URL like http://127.0.0.1:8000/v1, or sim / sim:PRESET")
    p.add_argument("--model", help="model name (required for a URL)")
    p.add_argument("--concurrency", "-n", type=int, required=True, help="N agents alive at once")
    p.add_argument("--duration", type=float, default=600.0, help="minimum steady window, s (default 600)")
    p.add_argument("--warmup", type=float, default=60.0, help="warm-up after all agents are active, s")
    p.add_argument(
        "--min-trajectories", type=int, default=30, help="trajectories the window must hold (AA: 30)"
    )
    p.add_argument("--min-trajectories-per-agent", type=int, default=3, help="per agent (AA: 3)")
    p.add_argument("--max-duration", type=float, default=4 * 3600.0, help="cap on the steady window, s")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="drain after the window, s")
    p.add_argument(
        "--ramp",
        type=float,
        help="spread the agents' first requests over this long, s (default min(0.25 N, 30))",
    )
    p.add_argument("--trajectories", help="trajectory file (default: the built-in synthetic set)")
    p.add_argument("--max-context", type=int, help="scale the trajectories to fit this context (tokens)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key-env", help="environment variable holding the API key (never written)")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    p.add_argument("--no-force-output", action="store_true", help="do not send ignore_eos/min_tokens")
    p.add_argument(
        "--continuous-usage",
        action="store_true",
        help="ask for usage in every chunk (vLLM's continuous_usage_stats): exact tokens per chunk",
    )
    p.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable); keys go in --api-key-env, not here",
    )
    p.add_argument("--extra-body", metavar="JSON", help="JSON object merged into every request body")
    p.add_argument(
        "--on-error",
        choices=["continue", "abandon"],
        default="continue",
        help="after a failed request: the agent's next turn (default) or its next trajectory",
    )
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--stall-timeout", type=float, default=120.0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--record-chunks",
        action="store_true",
        help="also write every chunk's time and token count to chunks.parquet (live targets)",
    )
    from .sweep import add_telemetry_flags

    add_telemetry_flags(p, defaults=True)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..agents import RunRules
    from ..metrics import level_stats
    from ..trajectories import TrajectoryFormatError, default_trajectories, load_trajectories

    try:
        trajs = load_trajectories(args.trajectories) if args.trajectories else default_trajectories()
        if args.max_context:
            from ..trajectories import fit_context

            trajs = fit_context(trajs, args.max_context)
        rules = RunRules(
            warmup_s=args.warmup,
            duration_s=args.duration,
            min_trajectories=args.min_trajectories,
            min_trajectories_per_agent=args.min_trajectories_per_agent,
            max_duration_s=max(args.max_duration, args.duration),
            drain_timeout_s=args.drain_timeout,
            ramp_s=args.ramp,
            on_error=args.on_error,
        )
    except (TrajectoryFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.target == "sim" or args.target.startswith("sim:"):
        from ..sim.presets import DEFAULT_DEPLOYMENT
        from ..sim.virtual import run_sim_level

        dep = args.target.split(":", 1)[1] if ":" in args.target else DEFAULT_DEPLOYMENT
        try:
            res = run_sim_level(
                trajs, args.concurrency, rules, deployment=dep, seed=args.seed, out_dir=args.out
            )
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2
    else:
        if not args.model:
            print("error: a URL target needs --model", file=sys.stderr)
            return 2
        from ..client.http import parse_extra_body, parse_headers
        from ..replay import Endpoint, run_live_sync

        try:
            ep = Endpoint(
                args.target,
                args.model,
                api=args.endpoint,
                api_key_env=args.api_key_env,
                force_output_fields=not args.no_force_output,
                continuous_usage=args.continuous_usage,
                request_timeout_s=args.request_timeout,
                stall_timeout_s=args.stall_timeout,
                headers=parse_headers(args.header),
                extra_body=parse_extra_body(args.extra_body),
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from ..telemetry import TelemetryConfig, parse_gpu_indices

        try:
            telemetry = TelemetryConfig(
                interval_s=args.telemetry_interval,
                scrape_metrics=args.scrape_metrics,
                metrics_url=args.metrics_url,
                power=args.power_source,
                gpu_indices=parse_gpu_indices(args.gpu_indices),
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        res = run_live_sync(
            ep,
            trajs,
            args.concurrency,
            rules,
            seed=args.seed,
            out_dir=args.out,
            progress=not args.quiet,
            telemetry=telemetry if telemetry.active else None,
            record_chunks=args.record_chunks,
        )
    w = res.window
    s = level_stats(res.requests, window_start_s=w.get("window_start_s"), window_end_s=w.get("window_end_s"))
    print(f"target {args.target}  N={args.concurrency}  window {w.get('window_s') or 0:.1f} s")
    print(
        f"requests in window {s['n_requests']:,} (ok {s['n_ok']:,}, failed {s['n_failed']:,}, "
        f"error rate {s['error_rate']:.1%})"
    )
    print(
        f"P25 output speed {s['p25_output_speed_tps']:.1f} tok/s  P95 TTFT {s['p95_ttft_s']:.3f} s  "
        f"mean in flight {s['mean_in_flight']:.1f} (max {s['max_in_flight']:.0f})"
    )
    print(
        f"meets AA rules: {'yes' if w.get('meets_aa_rules') else 'no'}"
        + ("" if w.get("meets_aa_rules") else f" ({'; '.join(w.get('aa_rules_reasons', [])[:3])})")
    )
    tel = res.manifest.get("telemetry")
    if tel:
        m, pw = tel.get("metrics") or {}, tel.get("power") or {}
        if m:
            print(
                f"server ({m.get('engine')}): mean running {_f(m.get('mean_running'))}, waiting "
                f"{_f(m.get('mean_waiting'))}, KV usage {_f(m.get('mean_kv_usage'), '{:.1%}')}, prefix hits "
                f"{_f(m.get('prefix_hit_rate'), '{:.1%}')}; /metrics gaps in window {m.get('gaps_in_window')}"
            )
        if pw:
            print(
                f"power ({pw.get('source')}, {pw.get('power_method') or 'not measured'}): mean "
                f"{_f(pw.get('mean_power_w'), '{:,.0f}')} W over the window, energy "
                f"{_f(pw.get('energy_j'), '{:,.0f}')} J, {pw.get('reads_in_window')} reads"
            )
        for note in tel.get("notes", []):
            print(f"telemetry note: {note}")
    if res.manifest.get("client_ok") is False:
        print("client self-check FAILED: " + "; ".join(res.manifest["client_check"]["reasons"]))
    print(f"results: {args.out}/ (requests.parquet, manifest.json)")
    return 0


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)
