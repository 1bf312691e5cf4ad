"""Fit the simulator's efficiency factors to the published throughput and latency points; print the table.

    python benchmarks/calibrate.py [--out benchmarks/results]

Fits (compute, bandwidth, latency) on the points not marked ``holdout`` in ``presets/calibration.toml``
and prints: the fit with its RMS log error, the low/high band, one row per published point (published and
simulated tok/s per GPU, error, regime, held out or not, what the point depends on that the model lacks),
then the error per regime and the fit vs held-out error. Writes ``calibration.csv`` and
``calibration_fit.json`` under ``--out``. The efficiency sets in
``agentperf_kit/sim/presets/deployments.toml`` are copied from this output (mid = the fit, low/high = the
band). AA-AgentPerf's agent results are never used (``benchmarks/predict_aa.py`` is the validation).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import pandas as pd

from agentperf_kit.sim.calibration import calibration_table, error_by_regime, fit_efficiency
from agentperf_kit.sim.presets import Efficiency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    fit = fit_efficiency()
    table = calibration_table(Efficiency("fit", fit["compute"], fit["bandwidth"], fit["latency"]))
    for name in ("low", "high"):
        band = fit["band"][name]
        eff = Efficiency(name, band["compute"], band["bandwidth"], band["latency"])
        table[f"simulated_{name}"] = calibration_table(eff)["simulated_tps_per_gpu"]
    regimes = error_by_regime(table)
    wall = time.perf_counter() - t0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "calibration.csv", index=False)
    regimes.to_csv(out / "calibration_regimes.csv", index=False)
    (out / "calibration_fit.json").write_text(json.dumps({**fit, "wall_s": wall}, indent=2) + "\n")
    print(
        f"fit: compute {fit['compute']:.2f}, bandwidth {fit['bandwidth']:.2f}, "
        f"latency x{fit['latency']:.2f}, "
        f"RMS log error {fit['rms_log_error']:.3f} (x{pow(2.718281828, fit['rms_log_error']):.2f}); "
        f"band low {fit['band']['low']}, high {fit['band']['high']}"
    )
    show = table[
        [
            "point",
            "published_tps_per_gpu",
            "simulated_tps_per_gpu",
            "simulated_low",
            "simulated_high",
            "error_pct",
            "regime",
            "holdout",
            "depends_on",
        ]
    ]
    with pd.option_context("display.width", 250, "display.max_colwidth", 70):
        print(show.round(1).to_string(index=False))
        print()
        print(regimes.round(3).to_string(index=False))
    n_in = int(table["within_25pct"].sum())
    print(f"{n_in} of {len(table)} points within +-25 %; wall {wall:.1f} s; wrote {out}/calibration.csv")


if __name__ == "__main__":
    main()
