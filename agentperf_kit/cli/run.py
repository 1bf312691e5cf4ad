"""``agentperf run``: one level (N agents) against a URL or the simulated system.

Everything is checked before anything runs or is written (flags, trajectories, the output directory, the
API key variable, then a preflight of a live target); see docs/cli.md for the exit codes.
"""

from __future__ import annotations

import argparse
import sys

from ._common import count, nonneg_float, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run one level of N agents against a URL or the simulated system",
        epilog="exit codes: 0 measured; 2 bad usage, bad input or failed preflight; 3 not validly "
        "measured (the level ended early, no successful request in the steady window, or the client "
        "self-check failed); 130 "
        "interrupted (docs/cli.md)",
    )
    p.add_argument("--target", default="sim", help="URL like http://127.0.0.1:8000/v1, or sim / sim:PRESET")
    p.add_argument("--model", help="model name (required for a URL)")
    p.add_argument("--concurrency", "-n", type=positive_int, required=True, help="N agents alive at once")
    p.add_argument(
        "--duration", type=positive_float, default=600.0, help="minimum steady window, s (default 600)"
    )
    p.add_argument("--warmup", type=nonneg_float, default=60.0, help="warm-up after all agents are active, s")
    p.add_argument(
        "--min-trajectories", type=count, default=30, help="trajectories the window must hold (AA: 30)"
    )
    p.add_argument("--min-trajectories-per-agent", type=count, default=3, help="per agent (AA: 3)")
    p.add_argument(
        "--max-duration", type=positive_float, default=4 * 3600.0, help="cap on the steady window, s"
    )
    p.add_argument("--drain-timeout", type=nonneg_float, default=120.0, help="drain after the window, s")
    p.add_argument(
        "--ramp",
        type=nonneg_float,
        help="spread the agents' first requests over this long, s (default min(0.25 N, 30))",
    )
    p.add_argument("--trajectories", help="trajectory file (default: the built-in synthetic set)")
    p.add_argument(
        "--max-context", type=positive_int, help="scale the trajectories to fit this context (tokens)"
    )
    p.add_argument("--out", required=True, help="output directory (new or empty; see --overwrite)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the previous run in --out (only a run directory)"
    )
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--api-key-env", help="environment variable holding the API key (never written)")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    p.add_argument("--no-force-output", action="store_true", help="do not send ignore_eos/min_tokens")
    p.add_argument(
        "--continuous-usage",
        action="store_true",
        help="ask for usage in every chunk (vLLM's continuous_usage_stats): exact tokens per chunk",
    )
    add_header_flags(p)
    p.add_argument("--extra-body", metavar="JSON", help="JSON object merged into every request body")
    p.add_argument(
        "--on-error",
        choices=["continue", "abandon"],
        default="continue",
        help="after a failed request: the agent's next turn (default) or its next trajectory",
    )
    p.add_argument("--request-timeout", type=positive_float, default=600.0, help="whole-request limit, s")
    p.add_argument(
        "--stall-timeout", type=positive_float, default=120.0, help="limit on silence mid-stream, s"
    )
    p.add_argument(
        "--first-token-timeout",
        type=positive_float,
        default=120.0,
        help="limit on the wait for the first visible token, s from the send (default 120)",
    )
    p.add_argument(
        "--abort-after",
        type=nonneg_float,
        default=30.0,
        help="end the level early (exit 3) when every request fails for this long, s (default 30; 0 = off)",
    )
    p.add_argument(
        "--no-preflight", action="store_true", help="skip the check of a live target before the agents start"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--record-chunks",
        action="store_true",
        help="also write every chunk's time and token count to chunks.parquet (live targets)",
    )
    from .sweep import add_telemetry_flags, add_worker_flags

    add_worker_flags(p, defaults=True)
    add_telemetry_flags(p, defaults=True)
    p.set_defaults(func=_run)


def add_header_flags(p: argparse.ArgumentParser) -> None:
    """``--header`` (secret values) and ``--public-header`` (recorded as given); docs/cli.md."""
    p.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable); its value is a secret: sent, never written (manifests "
        "show NAME: ***)",
    )
    p.add_argument(
        "--public-header",
        action="append",
        metavar="'NAME: VALUE'",
        help="extra request header whose value is not a secret: recorded in the manifest as given",
    )


def _run(args: argparse.Namespace) -> int:
    from ..agents import RunRules
    from ..errors import ConfigError, MeasurementError
    from ..metrics import level_stats
    from ..results import prepare_run_dir
    from ._common import load_trajectory_set

    # 1. everything the user gave, checked before anything runs or is written
    target = _target(args)
    trajs = load_trajectory_set(args.trajectories, args.max_context)
    try:
        rules = RunRules(
            warmup_s=args.warmup,
            duration_s=args.duration,
            min_trajectories=args.min_trajectories,
            min_trajectories_per_agent=args.min_trajectories_per_agent,
            max_duration_s=max(args.max_duration, args.duration),
            drain_timeout_s=args.drain_timeout,
            ramp_s=args.ramp,
            on_error=args.on_error,
            abort_after_s=args.abort_after,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    prepare_run_dir(args.out, overwrite=args.overwrite, create=False)

    # 2. the target must answer before any agent starts (a live one; the simulator has nothing to check)
    if not args.no_preflight:
        line = target.preflight(timeout_s=min(args.request_timeout, 60.0))
        if line:
            print(line, file=sys.stderr)

    # 3. the run
    _print_expected_window(trajs, args.concurrency, rules, virtual_time=target.virtual_time)
    prepare_run_dir(args.out, overwrite=args.overwrite)
    try:
        res = target.run_level(
            trajs,
            args.concurrency,
            rules,
            seed=args.seed,
            out_dir=args.out,
            level=0,
            run_id=None,
            progress=not args.quiet,
        )
    finally:  # a live target's Ray workers (none in-process)
        close = getattr(target, "close", None)
        if callable(close):
            close()
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
    print(f"results: {args.out}/ (requests.parquet, manifest.json)", flush=True)
    why = not_measured_reason(res, s)
    if why:
        raise MeasurementError(f"the run could not be measured validly: {why} (results kept in {args.out})")
    return 0


def not_measured_reason(res, stats: dict) -> str | None:
    """Why a finished run is not a valid measurement (exit 3), or None: the level ended early (every
    request failed for ``RunRules.abort_after_s``, or its rows could not be written), no request in the
    window, no successful one (nothing was measured), or a failed client self-check (its TTFTs include the
    client's own delays; the reasons are in the manifest's ``client_check``)."""
    aborted = res.manifest.get("aborted_reason") or res.window.get("aborted_reason")
    if aborted:
        return f"the level ended early: {aborted}"
    if stats["n_requests"] == 0:
        return "no request was sent inside the steady window"
    if stats["n_ok"] == 0:
        df = res.requests
        errs = df.loc[df["in_window"] & ~df["ok"], "error"].value_counts()
        top = ", ".join(f"{k} x{v}" for k, v in errs.head(3).items())
        return f"every one of the {stats['n_requests']:,} requests in the window failed ({top})"
    if res.manifest.get("client_ok") is False:
        return "the client self-check failed (" + "; ".join(res.manifest["client_check"]["reasons"]) + ")"
    return None


def _target(args: argparse.Namespace):
    """The target of the run, from ``--target`` and the flags (``targets.parse_target``; options of a live
    target are checked whatever the target: ConfigError/TargetError when wrong)."""
    from ..client.http import parse_extra_body
    from ..client.preflight import check_base_url
    from ..credentials import api_key_from_env, dedupe_auth, merge_headers
    from ..errors import ConfigError
    from ..targets import parse_target
    from ..telemetry import TelemetryConfig, parse_gpu_indices

    if args.metrics_url:
        check_base_url(args.metrics_url, "metrics_url")
    key = api_key_from_env(args.api_key_env)  # set and not empty
    headers, public = merge_headers(args.header, args.public_header)
    try:
        endpoint_options = dict(
            api=args.endpoint,
            api_key_env=args.api_key_env,
            force_output_fields=not args.no_force_output,
            continuous_usage=args.continuous_usage,
            request_timeout_s=args.request_timeout,
            stall_timeout_s=args.stall_timeout,
            first_token_timeout_s=args.first_token_timeout,
            headers=dedupe_auth(headers, args.api_key_env),
            public_header_names=public,
            extra_body=parse_extra_body(args.extra_body),
        )
        telemetry = TelemetryConfig(
            interval_s=args.telemetry_interval,
            scrape_metrics=args.scrape_metrics,
            metrics_url=args.metrics_url,
            power=args.power_source,
            gpu_indices=parse_gpu_indices(args.gpu_indices),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    return parse_target(
        args.target,
        model=args.model,
        endpoint_options=endpoint_options,
        telemetry=telemetry,
        api_key=key,
        record_chunks=args.record_chunks,
        workers=args.workers,
        ray_address=args.ray_address,
    )


def _print_expected_window(trajs, n: int, rules, *, virtual_time: bool) -> None:
    """The window the run expects (the trajectory rules can stretch ``--duration``), and a warning when
    that is more than twice ``--duration``."""
    from ..slo import get_tier_preset
    from ..sweep_config import SweepConfig
    from ..window_estimate import expected_window

    loosest = min(get_tier_preset(SweepConfig.tiers).tiers, key=lambda t: t.min_output_speed_tps)
    est = expected_window(trajs, n, rules, speed_tps=loosest.min_output_speed_tps, ttft_s=loosest.max_ttft_s)
    where = " (virtual time: the simulator takes seconds of wall time)" if virtual_time else ""
    text = est.describe(per_agent_flag="--min-trajectories-per-agent", total_flag="--min-trajectories")
    print(f"plan: warm-up {rules.warmup_s:g} s, then {text}{where}", file=sys.stderr, flush=True)
    if est.stretched:
        print(
            f"warning: the steady window will last about {est.window_s / rules.duration_s:.0f}x --duration "
            f"({est.stretched_by} rule); see the plan line above",
            file=sys.stderr,
            flush=True,
        )


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)
