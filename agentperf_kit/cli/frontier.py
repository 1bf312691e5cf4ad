"""``agentperf frontier DIR [DIR...]``: max agents per accelerator and per MW over a grid of SLOs."""

from __future__ import annotations

import argparse
import sys


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return vals


def _percentiles(text: str) -> list[float]:
    vals = _floats(text)
    if any(v > 100 for v in vals):
        raise argparse.ArgumentTypeError(f"percentiles are in (0, 100], got {text!r}")
    return vals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "frontier",
        help="max agents per accelerator / per MW over a grid of speed floors x TTFT ceilings",
        description="The SLO frontier of finished sweeps, judged with the sweep's own verdict rules "
        "(docs/frontier.md). Writes OUT/frontier.csv, OUT/frontier_heatmap.png, OUT/frontier_tradeoff.png.",
    )
    p.add_argument("directories", nargs="+", metavar="DIR", help="finished sweep directories")
    p.add_argument("--speeds", type=_floats, help="speed floors, tokens/s (default 10,20,...,300)")
    p.add_argument("--ttfts", type=_floats, help="TTFT ceilings, s (default 1,2,3,5,10,20)")
    p.add_argument("--speed-percentiles", type=_percentiles, default=[25.0], help="default 25")
    p.add_argument("--ttft-percentiles", type=_percentiles, default=[95.0], help="default 95")
    p.add_argument(
        "--ceiling", type=float, help="TTFT ceiling of the trade-off plot, s (default: the largest)"
    )
    p.add_argument(
        "--value",
        choices=["agents_per_accelerator", "agents_per_mw", "max_agents"],
        default="agents_per_accelerator",
        help="what the figures show",
    )
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_frontier)


def _frontier(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from ..frontier import plot_frontier_heatmaps, plot_frontier_tradeoff, sweep_frontier

    out = Path(args.out)
    parts = []
    for d in args.directories:
        if not (Path(d) / "summary.json").exists():
            print(f"error: {d}: no summary.json; is this a finished sweep directory?", file=sys.stderr)
            return 2
        parts.append(
            sweep_frontier(
                d,
                speeds=args.speeds,
                ttfts=args.ttfts,
                speed_percentiles=args.speed_percentiles,
                ttft_percentiles=args.ttft_percentiles,
            )
        )
    tab = pd.concat(parts, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    tab.to_csv(out / "frontier.csv", index=False)
    print(f"frontier: {len(tab)} rows -> {out / 'frontier.csv'}")
    sp, tp = args.speed_percentiles[0], args.ttft_percentiles[0]
    first = tab[(tab["speed_percentile"] == sp) & (tab["ttft_percentile"] == tp)]
    for sysname, g in first.groupby("system", sort=False):
        piv = g.pivot_table(index="min_output_speed_tps", columns="max_ttft_s", values="max_agents")
        print(f"\n{sysname}: max agents (rows: P{sp:g} speed floor tok/s, columns: P{tp:g} TTFT ceiling s)")
        print(piv.to_string(float_format=lambda v: f"{v:g}"))
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ceiling = args.ceiling if args.ceiling is not None else float(tab["max_ttft_s"].max())
        fig = plot_frontier_heatmaps(tab, value=args.value, speed_percentile=sp, ttft_percentile=tp)
        fig.savefig(out / "frontier_heatmap.png", dpi=100)
        plt.close(fig)
        try:
            ax = plot_frontier_tradeoff(
                tab, ttft_ceiling=ceiling, value=args.value, speed_percentile=sp, ttft_percentile=tp
            )
        except ValueError as exc:
            print(f"error: --ceiling: {exc}", file=sys.stderr)
            return 2
        ax.figure.tight_layout()
        ax.figure.savefig(out / "frontier_tradeoff.png", dpi=100)
        plt.close(ax.figure)
        print(f"figures: {out / 'frontier_heatmap.png'}, {out / 'frontier_tradeoff.png'}")
    return 0
