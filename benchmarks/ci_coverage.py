"""Coverage of the 95% intervals of P25 output speed and P95 TTFT on closed-loop runs.

Runs one simulated level of N agents with many seeds (independent runs), takes the pooled percentile of
all seeds' in-window requests as the reference value, and reports, per interval method, the share of
per-run intervals that cover it (target >= 90% at 95% confidence), their mean relative width, and the
ratio of the mean half-width to 1.96 x the across-seed standard deviation of the per-run estimate (1.0
= as wide as the run-to-run spread says it should be; < 1 too narrow, > 1 wider than needed).

Methods: ``iid`` (exact order-statistic interval, independent requests), ``agent`` (clusters = agents),
``time`` (clusters = consecutive time batches of the window), ``agent+time`` (the larger of the two:
the toolkit's default, ``agentperf_kit.slo.DEFAULT_CI_METHOD``).

    python benchmarks/ci_coverage.py [--agents 105] [--seeds 40] [--window 600]
        [--trajectories FILE | --import FORMAT:PATH] [--tiers aa-dsv4pro] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from agentperf_kit.agents import RunRules
from agentperf_kit.percentiles import percentile
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.slo import CI_METHODS, get_tier_preset, level_intervals

STATS = (("p25_output_speed_tps", "output_speed_tps", 25.0), ("p95_ttft_s", "ttft_s", 95.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=105)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--window", type=float, default=600.0, help="steady window, s")
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--deployment", default=None, help="simulator preset (default: the default)")
    ap.add_argument("--trajectories", help="trajectory file (default: the built-in set)")
    ap.add_argument("--import", dest="imp", help="FORMAT:PATH, imported with agentperf_kit importers")
    ap.add_argument("--tiers", default="aa-dsv4pro")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    from agentperf_kit.trajectories import default_trajectories, load_trajectories

    if args.imp:
        from agentperf_kit.trajectories.importers import import_trajectories

        fmt, _, path = args.imp.partition(":")
        trajs = import_trajectories(fmt, path)
        source = args.imp
    elif args.trajectories:
        trajs = load_trajectories(args.trajectories)
        source = args.trajectories
    else:
        trajs = default_trajectories()
        source = "built-in"
    # AA's validity rules (the window grows until every agent completed 3 trajectories), as a sweep does
    rules = RunRules(warmup_s=args.warmup, duration_s=args.window)
    tiers = get_tier_preset(args.tiers)
    kw = {"deployment": args.deployment} if args.deployment else {}
    runs = []
    t0 = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        res = run_sim_level(trajs, args.agents, rules, seed=seed, **kw)
        w = res.requests[res.requests["in_window"].astype(bool)]
        win = res.manifest.get("window", {})
        runs.append((w, win.get("window_start_s"), win.get("window_end_s")))
    sim_s = time.perf_counter() - t0
    pooled = {
        name: percentile(np.concatenate([w[col].to_numpy(dtype=float) for w, _, _ in runs]), q)
        for name, col, q in STATS
    }
    out: dict = {
        "command": "python benchmarks/ci_coverage.py "
        + " ".join(
            f"--{k.replace('_', '-') if k != 'imp' else 'import'} {v}"
            for k, v in vars(args).items()
            if v is not None and k != "out"
        ),
        "trajectories": source,
        "agents": args.agents,
        "seeds": args.seeds,
        "window_s": args.window,
        "mean_requests_per_run": float(np.mean([len(w) for w, _, _ in runs])),
        "pooled": pooled,
        "simulation_wall_s": sim_s,
        "methods": {},
    }
    est = {
        name: np.array([percentile(w[col].to_numpy(dtype=float), q) for w, _, _ in runs])
        for name, col, q in STATS
    }
    for method in CI_METHODS:
        t1 = time.perf_counter()
        per: dict = {}
        for name, col, q in STATS:
            los, his, deffs = [], [], []
            for w, ws, we in runs:
                ci = level_intervals(w, col, q, method=method, window=(ws, we))
                los.append(ci.low)
                his.append(ci.high)
                deffs.append(ci.deff)
            lo, hi = np.array(los), np.array(his)
            sd = float(np.std(est[name], ddof=1))
            half = (hi - lo) / 2
            per[name] = {
                "coverage": float(np.mean((lo <= pooled[name]) & (pooled[name] <= hi))),
                "mean_rel_width": float(np.mean((hi - lo) / abs(pooled[name]))),
                "width_over_spread": float(np.mean(half) / (1.959964 * sd)) if sd > 0 else math.nan,
                "mean_deff": float(np.mean(deffs)),
            }
        per["ci_wall_s_per_run"] = (time.perf_counter() - t1) / len(runs)
        out["methods"][method] = per
    out["across_seed_sd"] = {k: float(np.std(v, ddof=1)) for k, v in est.items()}
    # the verdicts a user would have seen, per method, for each tier
    from agentperf_kit.slo import level_verdicts

    out["verdicts"] = {
        m: {
            t.name: dict(
                zip(
                    *np.unique(
                        [level_verdicts(w, [t], ci_method=m, window=(ws, we))[t.name] for w, ws, we in runs],
                        return_counts=True,
                    )
                )
            )
            for t in tiers.tiers
        }
        for m in CI_METHODS
    }
    out["verdicts"] = json.loads(json.dumps(out["verdicts"], default=int))
    print(
        f"{source}: N={args.agents}, {args.seeds} seeds, {out['mean_requests_per_run']:.0f} in-window "
        f"requests per run (simulated in {sim_s:.1f} s)"
    )
    print(
        f"pooled: P25 speed {pooled['p25_output_speed_tps']:.2f} tok/s, P95 TTFT {pooled['p95_ttft_s']:.3f} s"
    )
    print(f"{'method':<12}{'statistic':<22}{'coverage':>9}{'rel width':>11}{'width/spread':>14}{'deff':>7}")
    for m, per in out["methods"].items():
        for name, _, _ in STATS:
            r = per[name]
            print(
                f"{m:<12}{name:<22}{r['coverage']:>9.0%}{r['mean_rel_width']:>11.3f}"
                f"{r['width_over_spread']:>14.2f}{r['mean_deff']:>7.1f}"
            )
    for m, v in out["verdicts"].items():
        print(f"verdicts {m:<11}" + "  ".join(f"{t}: {d}" for t, d in v.items()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
