"""``agentperf trajectories synth|stats|import|fit``: make, inspect, import and resize trajectory sets."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..schema import strict_json_dumps


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``trajectories`` command group to ``sub``."""
    p = sub.add_parser("trajectories", help="make, inspect, import and resize trajectory sets")
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

    im = tsub.add_parser("import", help="convert a real trajectory format into this toolkit's format")
    im.add_argument(
        "--from",
        dest="fmt",
        required=True,
        choices=("aa-local", "mooncake", "mini-swe-agent"),
        help="source format: aa-local (replay directory), mooncake (trace JSONL), "
        "mini-swe-agent (.traj.json file or directory)",
    )
    im.add_argument("src", help="source file or directory")
    im.add_argument("--out", required=True, help="output file (.jsonl, .jsonl.gz or .parquet)")
    im.add_argument("--seed", type=int, default=0, help="seed of sampled tool delays (default 0)")
    im.add_argument(
        "--think-time",
        choices=("cap", "keep", "resample"),
        default="cap",
        help="mooncake: how the gap between linked requests becomes the tool delay (default cap)",
    )
    im.add_argument(
        "--max-think", type=float, default=5.0, help="mooncake: cap in seconds for --think-time cap"
    )
    im.add_argument(
        "--common-fanout",
        type=int,
        default=4,
        help="mooncake: a block prefix continued in this many ways is a shared prefix (default 4)",
    )
    im.add_argument(
        "--tool-delay",
        choices=("auto", "sample"),
        default="auto",
        help="mini-swe-agent: delays from extra.timestamp where present (auto) or always sampled",
    )
    im.add_argument(
        "--messages", action="store_true", help="mini-swe-agent: keep each turn's message history"
    )
    im.set_defaults(func=_import)

    fit = tsub.add_parser("fit", help="make a set fit a server's context window (scale or cap)")
    fit.add_argument("src", help="trajectory file, or 'default' for the built-in set")
    fit.add_argument("--max-context", type=int, required=True, help="server context window in tokens")
    fit.add_argument("--mode", choices=("scale", "cap"), default="scale", help="default scale")
    fit.add_argument("--max-output", type=int, default=None, help="cap on output tokens per turn")
    fit.add_argument(
        "--min-output", type=int, default=None, help="floor on output tokens per turn (speed measurable)"
    )
    fit.add_argument("--reserve", type=int, default=64, help="tokens kept free for marker and template (64)")
    fit.add_argument("--out", required=True, help="output file (.jsonl, .jsonl.gz or .parquet)")
    fit.set_defaults(func=_fit)


def _error(exc: BaseException) -> NoReturn:
    """Raise a user's mistake as an AgentperfError: the CLI prints it as one line, exit 2."""
    from ._common import as_error

    raise as_error(exc) from None


def _synth(args: argparse.Namespace) -> int:
    import dataclasses

    from ..trajectories import DEFAULT_COUNT, DEFAULT_SEED, SynthConfig, save_trajectories, synthesize

    cfg = SynthConfig()
    try:
        if args.tool_delay_median is not None:
            lo, hi = cfg.tool_delay_range_s
            cfg = dataclasses.replace(
                cfg,
                tool_delay_median_s=args.tool_delay_median,
                tool_delay_range_s=(min(lo, args.tool_delay_median), max(hi, args.tool_delay_median)),
            )
        seed = DEFAULT_SEED if args.seed is None else args.seed
        trajs = synthesize(cfg, count=args.count or DEFAULT_COUNT, seed=seed)
    except ValueError as exc:
        _error(exc)
    meta = {"generator": "synth", "seed": seed, "count": len(trajs)}
    if cfg != SynthConfig():
        meta["config"] = dataclasses.asdict(cfg)
    path = save_trajectories(trajs, args.out, meta=meta)
    print(f"wrote {len(trajs)} trajectories ({sum(len(t.turns) for t in trajs):,} turns) to {path}")
    return 0


def _load(src: str | None):
    from ._common import load_trajectory_set  # a bad file is one line, exit 2

    return load_trajectory_set(src if src and src != "default" else None, None)


def _stats(args: argparse.Namespace) -> int:
    from ..trajectories import TrajectoryFormatError, format_stats, trajectory_stats

    try:
        trajs = _load(args.file)
    except (TrajectoryFormatError, FileNotFoundError) as exc:
        _error(exc)
    stats = trajectory_stats(trajs)
    print(strict_json_dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..trajectories import TrajectoryFormatError, save_trajectories
    from ..trajectories.importers import import_trajectories

    options: dict = {}
    if args.fmt == "mooncake":
        options = {
            "think_time": args.think_time,
            "max_think_s": args.max_think,
            "common_fanout": args.common_fanout,
            "seed": args.seed,
        }
    elif args.fmt == "mini-swe-agent":
        options = {"tool_delay": args.tool_delay, "seed": args.seed, "with_messages": args.messages}
    try:
        trajs = import_trajectories(args.fmt, args.src, **options)
    except (TrajectoryFormatError, FileNotFoundError, ValueError) as exc:
        _error(exc)
    meta = {"imported_from": args.fmt, "src": str(args.src), "options": options}
    path = save_trajectories(trajs, args.out, meta=meta)
    turns = [t for tr in trajs for t in tr.turns]
    print(
        f"imported {len(trajs)} trajectories, {len(turns):,} model calls "
        f"({sum(t.input_tokens for t in turns):,} prompt tokens, "
        f"{sum(t.output_tokens for t in turns):,} output tokens) from {args.fmt} {args.src} to {path}"
    )
    for tr in trajs:
        for w in tr.meta.get("warnings", []):
            print(f"warning: {tr.trajectory_id}: {w}", file=sys.stderr)
    return 0


def _fit(args: argparse.Namespace) -> int:
    from ..trajectories import TrajectoryFormatError, fit_context, save_trajectories, trajectory_stats

    try:
        trajs = fit_context(
            _load(args.src),
            args.max_context,
            mode=args.mode,
            max_output_tokens=args.max_output,
            min_output_tokens=args.min_output,
            reserve_tokens=args.reserve,
        )
    except (TrajectoryFormatError, FileNotFoundError, ValueError) as exc:
        _error(exc)
    meta = {"fitted_from": args.src, "max_context_tokens": args.max_context, "mode": args.mode}
    if args.min_output is not None:
        meta["min_output_tokens"] = args.min_output
    path = save_trajectories(trajs, args.out, meta=meta)
    s = trajectory_stats(trajs)
    print(
        f"wrote {s['trajectories']} trajectories ({s['turns']:,} turns, {s['phases']:,} phases) to {path}; "
        f"largest request {s['max_request_tokens']:,} tokens, cached fraction {s['cached_fraction']:.1%}"
    )
    return 0
