"""``agentperf trajectories synth|stats``: make and inspect trajectory sets."""

from __future__ import annotations

import argparse
import sys

from ..schema import strict_json_dumps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trajectories", help="make and inspect trajectory sets")
    tsub = p.add_subparsers(dest="trajectories_command", metavar="SUBCOMMAND", required=True)

    s = tsub.add_parser("synth", help="generate a seeded synthetic set")
    s.add_argument(
        "--count", type=int, default=None, help="number of trajectories (default: the default set's)"
    )
    s.add_argument("--seed", type=int, default=None, help="random seed (default: the default set's)")
    s.add_argument("--tool-delay-median", type=float, default=None, help="median tool delay in seconds")
    s.add_argument("--out", required=True, help="output file (.jsonl, .jsonl.gz or .parquet)")
    s.set_defaults(func=_synth)

    st = tsub.add_parser("stats", help="print the shape of a set (default: the built-in synthetic set)")
    st.add_argument("file", nargs="?", help="trajectory file (default: the built-in set)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=_stats)


def _synth(args: argparse.Namespace) -> int:
    from ..trajectories import DEFAULT_COUNT, DEFAULT_SEED, SynthConfig, save_trajectories, synthesize

    cfg = SynthConfig()
    if args.tool_delay_median is not None:
        import dataclasses

        lo, hi = cfg.tool_delay_range_s
        cfg = dataclasses.replace(
            cfg,
            tool_delay_median_s=args.tool_delay_median,
            tool_delay_range_s=(min(lo, args.tool_delay_median), max(hi, args.tool_delay_median)),
        )
    trajs = synthesize(
        cfg, count=args.count or DEFAULT_COUNT, seed=DEFAULT_SEED if args.seed is None else args.seed
    )
    path = save_trajectories(
        trajs, args.out, meta={"generator": "synth", "seed": args.seed, "count": len(trajs)}
    )
    print(f"wrote {len(trajs)} trajectories ({sum(len(t.turns) for t in trajs):,} turns) to {path}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..trajectories import (
        TrajectoryFormatError,
        default_trajectories,
        format_stats,
        load_trajectories,
        trajectory_stats,
    )

    try:
        trajs = load_trajectories(args.file) if args.file else default_trajectories()
    except (TrajectoryFormatError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = trajectory_stats(trajs)
    print(strict_json_dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
