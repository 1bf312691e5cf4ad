"""``agentperf sweep``: the main job."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="find the max concurrent agents per SLO tier (default: the simulated h200x8-dsv4pro)",
        description="Exponential ramp + bisection over the agent count; all tiers judged on the same levels.",
    )
    p.add_argument("--target", help="sim, sim:PRESET or a URL (default: sim)")
    p.add_argument("--model", help="model name (live targets)")
    p.add_argument("--trajectories", help="trajectory file (default: the built-in synthetic set)")
    p.add_argument("--tiers", help="tier preset (default aa-dsv4pro) or a spec like 'fast=100/2,slow=20/10'")
    p.add_argument("--accelerators", type=int, help="accelerator count (sim: from the preset)")
    p.add_argument("--accelerator-type", help="e.g. H200 (for provisioned power)")
    p.add_argument("--power-w", type=float, help="whole-system power in W")
    p.add_argument("--power-scope", choices=["measured", "declared", "modelled", "provisioned"])
    p.add_argument("--level-duration", type=float, help="minimum steady window per level, s (default 600)")
    p.add_argument("--max-agents", type=int, help="highest N to try (default 4096)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--efficiency", choices=["low", "mid", "high"], help="sim efficiency set (default mid)")
    p.add_argument("--endpoint", choices=["chat", "completions"], help="live targets: API (default chat)")
    p.add_argument("--api-key-env", help="live targets: environment variable holding the API key")
    p.add_argument("--max-context", type=int, help="scale the trajectories to fit this context (tokens)")
    p.add_argument(
        "--what-if",
        action="append",
        metavar="KNOB=VALUE",
        help="simulated targets: tool_delay=F, output=F, context=F, prefix_cache=off, trajectories=PATH, "
        "deployment=NAME (repeatable or comma-separated; docs/frontier.md)",
    )
    c = p.add_argument_group("live client (docs/replay.md)")
    c.add_argument(
        "--header", action="append", metavar="'NAME: VALUE'", help="extra request header (repeatable)"
    )
    c.add_argument("--extra-body", metavar="JSON", help="JSON object merged into every request body")
    c.add_argument("--request-timeout", type=float, help="whole-request limit, s (default 600)")
    c.add_argument("--stall-timeout", type=float, help="limit on silence mid-stream, s (default 120)")
    c.add_argument("--no-force-output", action="store_true", help="do not send ignore_eos/min_tokens")
    c.add_argument("--continuous-usage", action="store_true", help="usage in every chunk (vLLM)")
    add_telemetry_flags(p)
    p.add_argument("--out", help="output directory (default: a new directory under runs/)")
    p.add_argument("--config", help="TOML file with a [sweep] table; flags override it")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from ..sweep import SweepConfig, SweepConfigError, format_summary, plan_levels, run_sweep

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
        extra_body=args.extra_body,
        request_timeout_s=args.request_timeout,
        stall_timeout_s=args.stall_timeout,
        force_output=False if args.no_force_output else None,
        continuous_usage=True if args.continuous_usage else None,
        what_if=",".join(args.what_if) if args.what_if else None,
        out=args.out,
    )
    try:
        if args.config:
            cfg = SweepConfig.from_toml(args.config, **overrides)
        else:
            cfg = SweepConfig(**{k: v for k, v in overrides.items() if v is not None})
    except (SweepConfigError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(
            f"target {cfg.target}; tiers {cfg.tiers}; ramp levels {plan_levels(cfg.max_agents)} until every "
            f"tier fails, then bisection to {cfg.resolution} agent(s)"
        )
        print(
            f"per level: warm-up {cfg.warmup_s:g} s after all agents are active, steady window >= "
            f"{cfg.level_duration_s:g} s and >= {cfg.min_trajectories} trajectories, "
            f">= {cfg.min_trajectories_per_agent} per agent"
        )
        if not cfg.is_sim:
            print(_live_estimate(cfg))
            print(
                f"telemetry: /metrics {'scraped' if cfg.scrape_metrics else 'not scraped'}; power "
                + (
                    f"measured by {cfg.power_source} (GPUs {cfg.gpu_indices or 'all'}) every "
                    f"{cfg.telemetry_interval_s:g} s"
                    if cfg.measures_power
                    else "not measured (--power-source nvml|amdsmi|dcgm:URL)"
                )
            )
        else:
            print("simulated target: runs in virtual time (seconds of wall time)")
        return 0
    if not cfg.is_sim:
        print(_live_estimate(cfg), file=sys.stderr if args.json else sys.stdout, flush=True)
    try:
        result = run_sweep(cfg, progress=not args.json)
    except (SweepConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from ..schema import strict_json_dumps

        print(strict_json_dumps(result.summary, indent=2))
    else:
        print()
        print(format_summary(result.summary))
        print(f"\nresults: {result.directory}/ (summary.json, levels.csv, requests.parquet)")
    return 0


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
        type=float,
        default=1.0 if defaults else None,
        help="seconds between telemetry reads (default 1)",
    )


def _live_estimate(cfg) -> str:
    """Wall time a live sweep will take: ramp levels at least, ramp + bisection of every tier at most."""
    from ..slo import get_tier_preset
    from ..sweep import plan_levels

    ramp = len(plan_levels(cfg.max_agents))
    n_tiers = len(get_tier_preset(cfg.tiers).tiers)
    most = ramp + n_tiers * max(0, (cfg.max_agents - 1).bit_length() - 1)
    per_level = cfg.warmup_s + cfg.level_duration_s
    return (
        f"estimated wall time (live, real time): each level >= {per_level:g} s (warm-up + window, "
        f"longer until the trajectory counts are met, + drain <= {cfg.drain_timeout_s:g} s); "
        f"{ramp} ramp levels at most, up to {most} levels in all: "
        f"{ramp * per_level / 3600:.1f} h to {most * (per_level + cfg.drain_timeout_s) / 3600:.1f} h"
    )
