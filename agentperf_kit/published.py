"""Published AA-AgentPerf results (DeepSeek V4 Pro, easiest tier) and what they imply.

The table (``sample_data/published_aa_agentperf.csv``, also package data) holds only published figures;
cells that were not published are empty. From it: implied accelerator watts per GPU =
agents_per_gpu / agents_per_mw * 1e6 (about 937 W for GB300, 540 W for H200: measured accelerator power,
well under TDP), and the GB300/H200 ratios (about 23.7x per MW, about 41x per GPU; NVIDIA's blog says
"up to 20x" per MW).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["implied_watts_per_gpu", "load_published_results", "load_sim_prediction_band", "published_ratios"]


def load_published_results() -> pd.DataFrame:
    """The published AA-AgentPerf table as a DataFrame (one row per system)."""
    with resources.files("agentperf_kit").joinpath("data/published_aa_agentperf.csv").open() as f:
        return pd.read_csv(f)


def implied_watts_per_gpu(df: pd.DataFrame | None = None) -> pd.Series:
    """Watts per GPU implied by agents/GPU and agents/MW, indexed by accelerator (NaN where unknown)."""
    df = load_published_results() if df is None else df
    return pd.Series(
        (df["agents_per_gpu"] / df["agents_per_mw"] * 1e6).to_numpy(),
        index=df["accelerator"],
        name="watts_per_gpu",
    )


def published_ratios(
    df: pd.DataFrame | None = None, *, high: str = "GB300", low: str = "H200"
) -> dict[str, float]:
    """Ratios of ``high`` to ``low`` per MW and per GPU."""
    df = (load_published_results() if df is None else df).set_index("accelerator")
    return {
        "per_mw": float(df.loc[high, "agents_per_mw"] / df.loc[low, "agents_per_mw"]),
        "per_gpu": float(df.loc[high, "agents_per_gpu"] / df.loc[low, "agents_per_gpu"]),
    }


def load_sim_prediction_band() -> pd.DataFrame:
    """The simulator's predicted agents per GPU for AA's published systems, per tier, at the low and high
    efficiency sets (``agents_per_gpu_low`` / ``_high``), beside the published figures: the committed output
    of ``python benchmarks/predict_aa.py`` (a prediction, never used to tune the simulator)."""
    with resources.files("agentperf_kit").joinpath("data/aa_prediction_band.csv").open() as f:
        return pd.read_csv(f)
