"""``agentperf sweep``: the main job.

Everything is checked before anything runs or is written, ``--dry-run`` included (the configuration's
types and ranges, the trajectory file, the output directory, the API key variable); a live target is then
preflighted before the first level (``--no-preflight`` skips it). Exit codes: docs/cli.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._common import count, nonneg_float, positive_float, positive_int

if TYPE_CHECKING:
    from ..window_estimate import WindowEstimate


def register(sub: argparse._SubParsersAction) -> None:
    from ..sim.presets import list_deployments
    from ..slo import tier_preset_names

    p = sub.add_parser(
        "sweep",
        help="find the max concurrent agents per SLO tier (default: the simulated h200x8-dsv4pro)",
        description="Exponential ramp + bisection over the agent count; all tiers judged on the same levels.",
        epilog=f"simulated deployments (--target sim:NAME): {', '.join(list_deployments())}. Tier presets "
        f"(--tiers): {', '.join(tier_preset_names())}. Exit codes: 0 measured; 2 bad usage, bad input or "
        "failed preflight; 3 not validly measured; 130 interrupted (docs/cli.md).",
    )
    p.add_argument(
        "--target",
        help="sim, sim:PRESET, sim:PATH.toml (a twin from agentperf profile) or a URL (default: sim)",
    )
    p.add_argument("--model", help="model name (live targets)")
    p.add_argument("--trajectories", help="trajectory file (default: the built-in synthetic set)")
    p.add_argument("--tiers", help="tier preset (default aa-dsv4pro) or a spec like 'fast=100/2,slow=20/10'")
    p.add_argument("--accelerators", type=positive_int, help="accelerator count (sim: from the preset)")
    p.add_argument("--accelerator-type", help="e.g. H200 (for provisioned power)")
    p.add_argument("--power-w", type=positive_float, help="whole-system power in W")
    p.add_argument("--power-scope", choices=["measured", "declared", "modelled", "provisioned"])
    p.add_argument(
        "--level-duration", type=positive_float, help="minimum steady window per level, s (default 600)"
    )
    p.add_argument(
        "--max-agents",
        type=positive_int,
        help="highest N to try (default 4096 live; simulator: estimated from the model, docs/sweep.md)",
    )
    p.add_argument(
        "--no-band",
        action="store_true",
        help="simulator: skip the low-high band around the answer (docs/sweep.md)",
    )
    p.add_argument(
        "--no-early-stop",
        action="store_true",
        help="run every level's full window, also the levels whose verdict is decided at an interim look "
        "and that decide no answer (docs/sweep.md, Early stop)",
    )
    p.add_argument("--seed", type=count, help="seed (default 0)")
    p.add_argument("--efficiency", choices=["low", "mid", "high"], help="sim efficiency set (default mid)")
    p.add_argument("--endpoint", choices=["chat", "completions"], help="live targets: API (default chat)")
    p.add_argument("--api-key-env", help="live targets: environment variable holding the API key")
    p.add_argument(
        "--max-context", type=positive_int, help="scale the trajectories to fit this context (tokens)"
    )
    p.add_argument(
        "--what-if",
        action="append",
        metavar="KNOB=VALUE",
        help="simulated targets: tool_delay=F, output=F, context=F, prefix_cache=off, trajectories=PATH, "
        "deployment=NAME (repeatable or comma-separated; docs/frontier.md)",
    )
    p.add_argument(
        "--failure-policy",
        choices=["miss", "exclude"],
        help="failed requests: miss (default: TTFT +inf, speed 0) or exclude (the reference harness)",
    )
    p.add_argument(
        "--ci-method",
        choices=["agent+time", "agent", "time", "iid"],
        help="confidence intervals: clusters allowed for (default agent+time; docs/metrics.md)",
    )
    c = p.add_argument_group("live client (docs/replay.md)")
    from .run import add_header_flags

    add_header_flags(c)
    c.add_argument("--extra-body", metavar="JSON", help="JSON object merged into every request body")
    c.add_argument("--request-timeout", type=positive_float, help="whole-request limit, s (default 600)")
    c.add_argument(
        "--stall-timeout", type=positive_float, help="limit on silence mid-stream, s (default 120)"
    )
    c.add_argument(
        "--first-token-timeout",
        type=positive_float,
        help="limit on the wait for the first visible token, s from the send (default 120)",
    )
    c.add_argument(
        "--abort-after",
        type=nonneg_float,
        help="a level ends early as a failed level when every request fails for this long, s (default 30; "
        "0 = off)",
    )
    c.add_argument("--no-force-output", action="store_true", help="do not send ignore_eos/min_tokens")
    c.add_argument("--continuous-usage", action="store_true", help="usage in every chunk (vLLM)")
    c.add_argument(
        "--no-preflight", action="store_true", help="skip the check of a live target before the first level"
    )
    add_worker_flags(c)
    add_telemetry_flags(p)
    p.add_argument(
        "--out",
        help="output directory (default: a new directory under runs/); an existing one must hold this "
        "same sweep (it is resumed) or be empty",
    )
    p.add_argument("--config", help="TOML file with a [sweep] table; flags override it")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the plan and exit")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.set_defaults(func=_sweep)


def _config(args: argparse.Namespace):
    from ..sweep import SweepConfig

    overrides = dict(
        target=args.target,
        model=args.model,
        trajectories=args.trajectories,
        tiers=args.tiers,
        accelerators=args.accelerators,
        accelerator_type=args.accelerator_type,
        power_w=args.power_w,
        power_scope=args.power_scope,
        level_duration_s=args.level_duration,
        max_agents=args.max_agents,
        seed=args.seed,
        efficiency=args.efficiency,
        endpoint=args.endpoint,
        api_key_env=args.api_key_env,
        max_context=args.max_context,
        power_source=args.power_source,
        gpu_indices=args.gpu_indices,
        scrape_metrics=args.scrape_metrics,
        metrics_url=args.metrics_url,
        telemetry_interval_s=args.telemetry_interval,
        headers=tuple(args.header) if args.header else None,
        public_headers=tuple(args.public_header) if args.public_header else None,
        extra_body=args.extra_body,
        request_timeout_s=args.request_timeout,
        stall_timeout_s=args.stall_timeout,
        first_token_timeout_s=args.first_token_timeout,
        abort_after_s=args.abort_after,
        force_output=False if args.no_force_output else None,
        continuous_usage=True if args.continuous_usage else None,
        band=False if args.no_band else None,
        early_stop=False if args.no_early_stop else None,
        what_if=",".join(args.what_if) if args.what_if else None,
        workers=args.workers,
        ray_address=args.ray_address,
        failure_policy=args.failure_policy,
        ci_method=args.ci_method,
        out=args.out,
    )
    if args.config:
        return SweepConfig.from_toml(args.config, **overrides)
    return SweepConfig(**{k: v for k, v in overrides.items() if v is not None})


def _sweep(args: argparse.Namespace) -> int:
    from ..credentials import api_key_from_env
    from ..errors import MeasurementError
    from ..sweep import check_resumable, format_summary, plan_levels, run_sweep
    from ._common import load_trajectory_set

    # everything checked first, the same with --dry-run
    cfg = _config(args)
    trajs = load_trajectory_set(cfg.trajectories, cfg.max_context)
    resuming = check_resumable(cfg) if cfg.out else False
    target = cfg.target_object  # targets.parse_target read --target with the config
    virtual = target.virtual_time
    api_key_from_env(cfg.api_key_env)  # set and not empty
    if args.dry_run:
        print(
            f"target {cfg.target}; tiers {cfg.tiers}; ramp levels {plan_levels(_cap(cfg, trajs))} until "
            f"every tier fails, then bisection to {cfg.resolution} agent(s) or "
            f"{cfg.relative_resolution:.3g} of the bracket's lower end, whichever is coarser"
        )
        print(
            f"per level: warm-up {cfg.warmup_s:g} s after all agents are active, steady window >= "
            f"{cfg.level_duration_s:g} s and >= {cfg.min_trajectories} trajectories, "
            f">= {cfg.min_trajectories_per_agent} per agent"
        )
        print(_window_line(cfg, trajs))
        if cfg.out:
            print(f"output: {cfg.out} ({'resumes the sweep there' if resuming else 'new'})")
        if not virtual:
            print(_live_estimate(cfg, trajs))
            print(
                f"telemetry: /metrics {'scraped' if cfg.scrape_metrics else 'not scraped'}; power "
                + (
                    f"measured by {cfg.power_source} (GPUs {cfg.gpu_indices or 'all'}) every "
                    f"{cfg.telemetry_interval_s:g} s"
                    if cfg.measures_power
                    else "not measured (--power-source nvml|amdsmi|dcgm:URL)"
                )
            )
            print("preflight: not run by --dry-run (a run checks the target before its first level)")
        else:
            print("simulated target: runs in virtual time (seconds of wall time)")
        return 0
    if not args.no_preflight:
        line = target.preflight(timeout_s=min(cfg.request_timeout_s, 60.0))
        if line:
            print(line, file=sys.stderr)
    err = sys.stderr if args.json else sys.stdout
    if not virtual:
        print(_live_estimate(cfg, trajs), file=err, flush=True)
    # the expected window of the first level, as `run` prints it (each level's in the --dry-run plan)
    first, *warning = _window_line(cfg, trajs).split("\n")
    where = " (virtual time: the simulator takes seconds of wall time)" if virtual else ""
    plan = first.removeprefix("per level: ")
    print(f"plan: per level, warm-up {cfg.warmup_s:g} s, then {plan}{where}", file=sys.stderr, flush=True)
    if warning and not virtual:
        print(*warning, file=sys.stderr, flush=True)
    result = run_sweep(cfg, progress=not args.json)
    if args.json:
        from ..schema import strict_json_dumps

        print(strict_json_dumps(result.summary, indent=2))
    else:
        print()
        print(format_summary(result.summary))
        print(f"\nresults: {result.directory}/ (summary.json, levels.csv, levels/)", flush=True)
    why = sweep_not_measured_reason(result.summary)
    if why:
        raise MeasurementError(
            f"the sweep could not be measured validly: {why} (results kept in {result.directory})"
        )
    return 0


def sweep_not_measured_reason(summary: dict) -> str | None:
    """Why a finished sweep is not a valid measurement (exit 3), or None: its lowest level had no
    successful request in the window (the target never worked, so every "fail" is meaningless). Failing
    requests at higher levels are the overload a sweep looks for, not a reason; a level whose client
    self-check failed is reported (``client_ok`` per level and in the summary), not a reason either."""
    levels = sorted(summary.get("levels") or [], key=lambda r: r.get("concurrency", 0))
    if levels and not (levels[0].get("n_ok") or 0) > 0:
        first = levels[0]
        return (
            f"the lowest level (N={first.get('concurrency')}) had no successful request in its window "
            f"({first.get('n_requests') or 0} requests)"
        )
    return None


def add_worker_flags(p: argparse._ActionsContainer, *, defaults: bool = False) -> None:
    """``--workers`` and ``--ray-address`` (live targets; docs/scale-out.md)."""
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1 if defaults else None,
        help="worker processes that run each level's agents (default 1: this process; more: Ray actors, "
        "pip install 'agentperf-kit[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="place the workers on this Ray cluster: auto (ray start on this host) or ray://HOST:PORT "
        "(default: a local Ray runtime when --workers > 1)",
    )


def add_telemetry_flags(p: argparse.ArgumentParser, *, defaults: bool = False) -> None:
    """Telemetry flags of live runs (``agentperf run`` and ``sweep``; docs/telemetry.md). With
    ``defaults=False`` unset flags stay None so a config file can set them."""
    g = p.add_argument_group("telemetry (live targets; docs/telemetry.md)")
    g.add_argument(
        "--power-source",
        default="none" if defaults else None,
        help="measure accelerator power: nvml | amdsmi | dcgm:URL (a DCGM exporter's /metrics; several "
        "separated by commas) | none (default none); the steady-window mean becomes power_w with "
        "power_scope 'measured'",
    )
    g.add_argument("--gpu-indices", help="accelerators to sum, e.g. 0,1,2,3 (default: all the source sees)")
    g.add_argument(
        "--scrape-metrics",
        action=argparse.BooleanOptionalAction,
        default=True if defaults else None,
        help="sample the server's Prometheus /metrics (queue, KV usage, prefix hits) (default: on)",
    )
    g.add_argument("--metrics-url", help="the server's /metrics URL (default: the target without /v1)")
    g.add_argument(
        "--telemetry-interval",
        type=positive_float,
        default=1.0 if defaults else None,
        help="seconds between telemetry reads (default 1)",
    )


def _cap(cfg, trajs) -> int:
    """The sweep's cap: ``max_agents``, or its default (:func:`agentperf_kit.sweep.resolve_max_agents`)."""
    from ..sweep import resolve_max_agents

    return resolve_max_agents(cfg, trajs)[0]


def _estimates(cfg, trajs) -> dict[int, WindowEstimate]:
    """Expected window of each ramp level at the loosest tier's speed floor and TTFT ceiling."""
    from ..slo import get_tier_preset
    from ..sweep import plan_levels
    from ..window_estimate import expected_window

    loosest = min(get_tier_preset(cfg.tiers).tiers, key=lambda t: t.min_output_speed_tps)
    rules = cfg.rules()
    return {
        n: expected_window(trajs, n, rules, speed_tps=loosest.min_output_speed_tps, ttft_s=loosest.max_ttft_s)
        for n in plan_levels(_cap(cfg, trajs))
    }


def _window_line(cfg, trajs) -> str:
    """The expected window of the first level, with a warning when the trajectory rules stretch it past
    twice ``level_duration_s``."""
    est = next(iter(_estimates(cfg, trajs).values()))
    text = "per level: " + est.describe()
    if est.stretched:
        text += (
            f"\nwarning: each level's steady window will last about "
            f"{est.window_s / cfg.level_duration_s:.0f}x "
            f"level_duration_s ({est.stretched_by} rule; set min_trajectories_per_agent / min_trajectories "
            "lower in --config to relax it, and the levels then no longer meet AA's rules)"
        )
    return text


def _live_estimate(cfg, trajs) -> str:
    """Wall time a live sweep will take: the ramp levels at least, ramp + bisection of every tier at most;
    each level's window as :mod:`agentperf_kit.window_estimate` expects it (not just level_duration_s)."""
    from ..slo import get_tier_preset

    est = _estimates(cfg, trajs)
    ramp = len(est)
    n_tiers = len(get_tier_preset(cfg.tiers).tiers)
    bisect = n_tiers * max(0, (_cap(cfg, trajs) - 1).bit_length() - 1)
    ramp_s = sum(cfg.warmup_s + e.window_s for e in est.values())
    worst = max(e.window_s for e in est.values())
    most_s = ramp_s + ramp * cfg.drain_timeout_s + bisect * (cfg.warmup_s + worst + cfg.drain_timeout_s)
    return (
        f"estimated wall time (live, real time): each level = warm-up {cfg.warmup_s:g} s + its window "
        f"(>= {cfg.level_duration_s:g} s, about {_h(worst)} where the trajectory rules stretch it) + drain "
        f"<= {cfg.drain_timeout_s:g} s; {ramp} ramp levels at most, up to {ramp + bisect} levels in all: "
        f"{ramp_s / 3600:.1f} h to {most_s / 3600:.1f} h"
    )


def _h(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
