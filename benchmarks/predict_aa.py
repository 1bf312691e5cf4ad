"""What the calibrated simulator predicts for AA-AgentPerf's published results, as a band (no tuning).

    python benchmarks/predict_aa.py [--systems H200,B300,MI355X,GB300] [--out benchmarks/results] [--jobs 2]

For each published system that has a simulated preset, runs the full default sweep (AA rules, the
``aa-dsv4pro`` tiers, default synthetic trajectories) at the ``low``, ``mid`` and ``high`` efficiency
sets (the calibration band from ``benchmarks/calibrate.py``) and prints, per tier, the published agents
per GPU beside the simulated band and where it falls (below, within or above). Writes
``aa_prediction_band.csv`` under ``--out``, and into ``agentperf_kit/data/`` (read by notebook 05
through ``load_sim_prediction_band``) only when every system was run. The efficiency
factors were fitted to throughput points only; AA's results are never used to tune them.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

from agentperf_kit.published import load_published_results
from agentperf_kit.sweep import SweepConfig, run_sweep

PRESETS = {
    "H200": "h200x8-dsv4pro",
    "B300": "b300x8-dsv4pro",
    "MI355X": "mi355x8-dsv4pro",
    "GB300": "gb300nvl72-dsv4pro",
}


EFFICIENCIES = ("low", "mid", "high")


def _sweep_rows(job: tuple[str, str, str, int]) -> list[dict]:
    """One default sweep of ``preset`` at efficiency set ``eff`` (no band of its own: the three sets are
    the band), as rows per tier."""
    acc, preset, eff, max_agents = job
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # max_agents above AA's 4,096 default so that no system's answer is capped
        cfg = SweepConfig(target=f"sim:{preset}", efficiency=eff, out=tmp, max_agents=max_agents, band=False)
        res = run_sweep(cfg, progress=False)
    wall = time.perf_counter() - t0
    print(f"{preset} {eff}: {wall:.1f} s", flush=True)
    return [
        {
            "accelerator": acc,
            "deployment": preset,
            "efficiency": eff,
            "tier": t["name"],
            "sim_max_agents": t["max_agents"],
            "sim_max_agents_is_lower_bound": t["max_agents_is_lower_bound"],
            "sim_agents_per_gpu": t["agents_per_accelerator"],
            "sim_agents_per_mw_modelled": t["agents_per_mw"],
            "sweep_wall_s": round(wall, 1),
        }
        for t in res.summary["tiers"]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="H200,B300,MI355X,GB300", help="accelerators to predict")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    ap.add_argument("--max-agents", type=int, default=16384, help="sweep cap (default 16384)")
    ap.add_argument("--jobs", type=int, default=1, help="sweeps run at once, one process each (default 1)")
    args = ap.parse_args()
    published = load_published_results()
    jobs = [
        (acc, PRESETS[acc], eff, args.max_agents) for acc in args.systems.split(",") for eff in EFFICIENCIES
    ]
    rows = []
    if args.jobs > 1:  # each sweep in a process of its own (one core each)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for done in pool.map(_sweep_rows, jobs):
                rows += done
    else:
        for job in jobs:
            rows += _sweep_rows(job)
    sim = pd.DataFrame(rows)
    band = sim.pivot_table(
        index=["accelerator", "deployment", "tier"],
        columns="efficiency",
        values=["sim_agents_per_gpu", "sim_agents_per_mw_modelled", "sim_max_agents_is_lower_bound"],
        aggfunc="first",
    )
    band.columns = [f"{v.removeprefix('sim_')}_{e}" for v, e in band.columns]
    band = band.reset_index()
    pub = published[["accelerator", "tier", "agents_per_gpu", "agents_per_mw"]].rename(
        columns={"agents_per_gpu": "published_agents_per_gpu", "agents_per_mw": "published_agents_per_mw"}
    )
    table = band.merge(pub, on=["accelerator", "tier"], how="left")
    table["published_within_band"] = (table["published_agents_per_gpu"] >= table["agents_per_gpu_low"]) & (
        table["published_agents_per_gpu"] <= table["agents_per_gpu_high"]
    )
    table["mid_over_published"] = table["agents_per_gpu_mid"] / table["published_agents_per_gpu"]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "aa_prediction_band.csv", index=False)
    if set(args.systems.split(",")) == set(PRESETS):
        # the copy that notebooks read through agentperf_kit.published.load_sim_prediction_band()
        table.to_csv(
            pathlib.Path(__file__).parent.parent / "agentperf_kit/data/aa_prediction_band.csv", index=False
        )
    else:
        print("not every system was run: agentperf_kit/data/aa_prediction_band.csv left as it was")
    with pd.option_context("display.width", 250):
        print(table.round(2).to_string(index=False))
    print(f"wrote {out}/aa_prediction_band.csv")


if __name__ == "__main__":
    main()
