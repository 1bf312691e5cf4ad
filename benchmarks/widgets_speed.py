"""Speed of the SLO explorer on a large table: a slider change must stay well under a second.

Builds a synthetic requests table (default 2,000,000 in-window requests over 20 levels, with failures and
requests without a speed), builds an :class:`agentperf_kit.widgets.SLOExplorer` on it, then times slider
changes: the recomputation alone (percentiles, verdicts, max agents) and with the ECDF redraw. Prints the
figures; asserts nothing (unit tests do not time things).

    python benchmarks/widgets_speed.py [--rows 2000000] [--levels 20] [--changes 20]
"""

from __future__ import annotations

import argparse
import resource
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from agentperf_kit.widgets import SLOExplorer


def synthetic_requests(rows: int, levels: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` requests spread evenly over N = 1, 2, 3, ...: speed falls and TTFT grows with N."""
    rng = np.random.default_rng(seed)
    n = np.repeat(np.arange(1, levels + 1) * 8, -(-rows // levels))[:rows]
    speed = rng.lognormal(np.log(400.0 / np.sqrt(n)), 0.35)
    ttft = rng.lognormal(np.log(0.05 * np.sqrt(n)), 0.9)
    failed = rng.random(rows) < 0.002
    speed[failed], ttft[failed] = 0.0, np.inf
    speed[rng.random(rows) < 0.01] = np.nan  # fewer than 2 output tokens: no speed
    return pd.DataFrame(
        {
            "concurrency": n,
            "agent": rng.integers(0, 8, rows),
            "output_speed_tps": speed,
            "ttft_s": ttft,
            "ok": ~failed,
            "in_window": np.ones(rows, dtype=bool),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--changes", type=int, default=20, help="slider changes to time")
    args = ap.parse_args()
    df = synthetic_requests(args.rows, args.levels)
    t0 = time.perf_counter()
    ex = SLOExplorer(df, "aa-dsv4pro", draw=False)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    settings = [
        (
            float(rng.uniform(20, 150)),
            float(rng.uniform(0.5, 8)),
            float(rng.integers(5, 50)),
            float(rng.integers(50, 99)),
        )
        for _ in range(args.changes)
    ]

    results: list[int | None] = []

    def timed(draw: bool) -> list[float]:
        out = []
        for floor, ceiling, sp, tp in settings:
            ex._draw_enabled = False  # each assignment fires the observer: time the last one only
            ex.speed_floor.value = floor
            ex.ttft_ceiling.value = ceiling
            ex.speed_pct.value = sp
            ex._draw_enabled = draw
            t = time.perf_counter()
            ex.ttft_pct.value = tp
            out.append(time.perf_counter() - t)
            results.append(ex.max_agents)
        return out

    recompute = timed(False)
    redraw = timed(True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"SLOExplorer on {len(df):,} requests over {len(ex.samples.levels)} levels")
    print(f"build (sort each level once): {build:.2f} s")
    print(
        "slider change, recompute only (percentiles, verdicts, max agents): "
        f"median {np.median(recompute) * 1e3:.1f} ms, max {max(recompute) * 1e3:.1f} ms "
        f"over {len(recompute)} changes"
    )
    print(
        f"slider change with ECDF redraw (PNG): median {np.median(redraw) * 1e3:.0f} ms, "
        f"max {max(redraw) * 1e3:.0f} ms"
    )
    print(f"max agents over these settings: {sorted({r or 0 for r in results})} (0: no level passes)")
    print(f"peak memory (RSS): {rss_mb:,.0f} MB")


if __name__ == "__main__":
    main()
