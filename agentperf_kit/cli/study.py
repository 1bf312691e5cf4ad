"""``agentperf study``: a grid of simulated sweeps, run in parallel (Ray or a local process pool).

The configuration (``study.toml``: ``[study]`` axes, ``[sweep]`` shared settings; docs/study.md) and the
output directory are checked before anything runs, the same with ``--dry-run``. Exit 3 when a sweep of the
grid failed (its row carries the error; a rerun with the same ``--out`` retries it).
"""

from __future__ import annotations

import argparse
import math
import warnings

from ._common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="a grid of simulated sweeps (deployments x tiers x trajectories x efficiency x what-if) in "
        "parallel, on Ray or local processes",
        description="Run one simulated sweep per grid point of study.toml and write one table (one row per "
        "sweep and tier) to OUT/results.parquet and OUT/results.json as sweeps finish; resumable "
        "(docs/study.md).",
        epilog="exit codes: 0 every sweep ran; 2 bad configuration or output directory; 3 some sweep failed "
        "(rerun with the same --out to retry it); 130 interrupted.",
    )
    p.add_argument("--config", required=True, help="study TOML file: [study] axes, [sweep] shared settings")
    p.add_argument(
        "--out",
        help="study directory (default: a new one under runs/); one holding this same study is resumed",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        help="sweeps run at once (default: this machine's CPUs; on a Ray cluster: as its CPUs allow)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run on an existing Ray cluster: auto, ray://HOST:10001 or HOST:6379 (needs the ray extra)",
    )
    p.add_argument(
        "--executor",
        choices=["auto", "ray", "process"],
        default="auto",
        help="auto (default: Ray where there is a cluster to use: --ray-address, RAY_ADDRESS or a runtime "
        "started in this process; else a local process pool), ray (a private local head without an "
        "address), or process",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds a study with another configuration: discard its results and start again",
    )
    p.add_argument("--dry-run", action="store_true", help="check everything, print the grid and exit")
    p.add_argument("--json", action="store_true", help="print the table as JSON records to stdout")
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from ..errors import MeasurementError
    from ..study import run_study
    from ..study_config import StudyConfig
    from ..study_exec import resolve_executor

    cfg = StudyConfig.from_toml(args.config)
    kind = resolve_executor(args.executor, args.ray_address)
    points = cfg.points()
    if args.dry_run:
        from ..study import check_study_dir

        sizes = " x ".join(f"{len(getattr(cfg, a))} {a}" for a in ("deployments", "tiers", "trajectories"))
        sizes += f" x {len(cfg.efficiency)} efficiency x {len(cfg.what_if)} what_if"
        at = f" at {args.ray_address}" if args.ray_address else ""
        print(f"study: {len(points)} sweeps ({sizes}) on {kind}{at}")
        for pt in points:
            coords = (pt.deployment, pt.tiers, pt.trajectories, pt.efficiency, pt.what_if)
            print(f"  {pt.point_id}  " + "  ".join(coords))
        if args.out:
            done = check_study_dir(cfg, args.out, args.overwrite)
            print(f"output: {args.out} ({f'resumes: {done} sweeps already done' if done else 'new'})")
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = run_study(
            cfg,
            args.out,
            workers=args.workers,
            executor=args.executor,
            ray_address=args.ray_address,
            overwrite=args.overwrite,
            progress=not args.json,
        )
    for w in caught:
        if "of the study's sweeps failed" not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if args.json:
        print(table.to_json(orient="records", indent=1))
    else:
        print()
        print(format_table(table))
        print(f"\nresults: {table.attrs['directory']}/ (results.parquet, results.json, sweeps/)", flush=True)
    failed = table.loc[table["error"].notna(), ["point", "error"]].drop_duplicates("point")
    if len(failed):
        first = failed.iloc[0]
        raise MeasurementError(
            f"{len(failed)} of {len(points)} sweeps failed (first: {first['point']}: {first['error']}); "
            f"rerun with --out {table.attrs['directory']} to retry them"
        )
    return 0


def format_table(df) -> str:
    """The study table as text: one line per sweep and tier (max agents, per accelerator, per MW)."""
    import pandas as pd

    lines = [
        f"{'point':<6}{'deployment':<22}{'tiers':<20}{'traj':<10}{'eff':<5}{'what-if':<18}{'tier':<6}"
        f"{'max agents':>11}{'/accel':>9}{'/MW':>10}  valid"
    ]
    for r in df.itertuples(index=False):
        d = r._asdict()
        if not pd.isna(d["error"]):
            lines.append(f"{d['point']:<6}{d['deployment']:<22}failed: {d['error']}")
            continue
        n = f"{'>=' if d['max_agents_is_lower_bound'] else ''}{d['max_agents']}"
        traj = str(d["trajectories"])
        traj = traj if len(traj) <= 9 else "..." + traj[-6:]
        lines.append(
            f"{d['point']:<6}{d['deployment']:<22}{d['tier_preset']:<20}{traj:<10}{d['efficiency']:<5}"
            f"{d['what_if']:<18}{d['tier']:<6}{n:>11}{_f(d['agents_per_accelerator'], '{:.2f}'):>9}"
            f"{_f(d['agents_per_mw'], '{:,.0f}'):>10}  {'yes' if d['valid'] else 'no'}"
        )
    return "\n".join(lines)


def _f(v, fmt: str) -> str:
    try:
        return "-" if v is None or math.isnan(float(v)) else fmt.format(float(v))
    except (TypeError, ValueError):
        return "-"
