"""Does early stop change a sweep's answer? Sweeps with and without it, side by side, on the simulator.

For each (system, tier preset, seed) runs the default sweep (AA's rules, no band) twice, with early stop
(the default) and with ``early_stop=False``, and prints per pair: each tier's answer both ways, the levels
measured both ways, the levels whose verdict differs (a stopped level's verdict against the full one),
the levels stopped and measured again, and the simulated requests both ways. A wrong early verdict can only
send the search another way (the levels that decide answers run in full, docs/sweep.md "Early stop"), so
the answers should agree; the line ``answers differ`` names any pair where they do not. Since the search's
guided steps and aimed points read the levels' margins, which cut windows move a little, the two sweeps
may take different paths to the same boundary and end apart by up to the bisection's resolution (1/32 by
default): the summary line counts the pairs within it.

    python benchmarks/early_stop_check.py [--systems h200x8-dsv4pro ...] [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import time
from pathlib import Path

SYSTEMS = {  # system -> its tier preset
    "h200x8-dsv4pro": "aa-dsv4pro",
    "b300x8-dsv4pro": "aa-dsv4pro",
    "mi355x8-dsv4pro": "aa-dsv4pro",
    "h200x8-dsv3": "nvidia-blog-dsv4pro",
    "h200x8-gptoss120b": "aa-gpt-oss-120b",
}


def _pair(system: str, tiers: str, seed: int, parent: str) -> dict:
    from agentperf_kit.sweep import SweepConfig, run_sweep

    out: dict = {"system": system, "tiers": tiers, "seed": seed}
    for mode, early in (("early", True), ("full", False)):
        cfg = SweepConfig(
            target=f"sim:{system}",
            tiers=tiers,
            seed=seed,
            band=False,
            early_stop=early,
            out=str(Path(parent) / f"{system}-{tiers}-{seed}-{mode}"),
        )
        t0 = time.perf_counter()
        res = run_sweep(cfg, progress=False)
        names = [t["name"] for t in res.summary["tiers"]]
        out[mode] = {
            "answers": [t["max_agents"] for t in res.summary["tiers"]],
            "verdicts": {
                int(r["concurrency"]): tuple(r[f"verdict_{t}"] for t in names)
                for _, r in res.levels.iterrows()
            },
            "stopped": int(res.summary["n_levels_stopped_early"]),
            "again": sum("measured again, in full" in n for n in res.summary["notes"]),
            "requests": int(res.summary["simulated_requests"]),
            "wall_s": time.perf_counter() - t0,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="pairs run at once (processes)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = [(s, SYSTEMS.get(s, "aa-dsv4pro"), seed, tmp) for s in args.systems for seed in args.seeds]
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            for r in pool.map(_pair, *zip(*work)):
                rows.append(r)
                e, f = r["early"], r["full"]
                shared = sorted(set(e["verdicts"]) & set(f["verdicts"]))
                differ = [n for n in shared if e["verdicts"][n] != f["verdicts"][n]]
                print(
                    f"{r['system']:<20} {r['tiers']:<20} seed {r['seed']}: answers {e['answers']} vs full "
                    f"{f['answers']}{'' if e['answers'] == f['answers'] else '  <- answers differ'}; levels "
                    f"{len(e['verdicts'])} vs {len(f['verdicts'])}, verdicts differ at {differ or 'none'}; "
                    f"stopped {e['stopped']}, measured again {e['again']}; requests {e['requests']:,} vs "
                    f"{f['requests']:,} ({e['requests'] / f['requests']:.0%}); wall {e['wall_s']:.1f} vs "
                    f"{f['wall_s']:.1f} s",
                    flush=True,
                )
    from agentperf_kit.sweep import SweepConfig
    from agentperf_kit.sweep_early import _step

    same = sum(r["early"]["answers"] == r["full"]["answers"] for r in rows)
    # the bisection stops within max(resolution, floor(lo x relative_resolution)) of a boundary (the
    # defaults: 1 agent and 1/32), so two searches that took different paths may end that far apart
    cfg = SweepConfig()
    near = sum(
        all(
            abs(a - b) <= _step(min(a, b), cfg.resolution, cfg.relative_resolution)
            for a, b in zip(r["early"]["answers"], r["full"]["answers"])
        )
        for r in rows
    )
    saved = sum(r["early"]["requests"] for r in rows) / sum(r["full"]["requests"] for r in rows)
    print(
        f"pairs {len(rows)}: answers the same in {same}, within the bisection's resolution in {near}; "
        f"requests with early stop {saved:.0%} of full"
    )


if __name__ == "__main__":
    main()
