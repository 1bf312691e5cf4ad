"""Plots read back: drawn data, tier lines and labels (no pixel comparison)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from agentperf_kit.plots import plot_level_metric, plot_levels
from agentperf_kit.slo import get_tier_preset

LEVELS = pd.DataFrame(
    {
        "concurrency": [4, 1, 2],
        "p25_output_speed_tps": [50.0, 150.0, 90.0],
        "p25_output_speed_tps_ci_low": [45.0, 140.0, 85.0],
        "p25_output_speed_tps_ci_high": [55.0, 160.0, 95.0],
        "p95_ttft_s": [2.0, 0.5, 1.0],
    }
)


def test_level_metric_draws_sorted_data_and_tier_limits():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plot_level_metric(LEVELS, "p25_output_speed_tps", tiers=get_tier_preset("aa-dsv4pro"), ax=ax)
    assert out is ax
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 4] and list(line.get_ydata()) == [150.0, 90.0, 50.0]
    hlines = sorted(ln.get_ydata()[0] for ln in ax.get_lines()[1:])
    assert hlines == [20, 60, 180]
    assert "tokens/s" in ax.get_ylabel()
    plt.close(fig)


def test_plot_levels_returns_a_two_panel_figure(tmp_path):
    fig = plot_levels(LEVELS, get_tier_preset("aa-dsv4pro"))
    assert len(fig.axes) == 2
    assert sorted(ln.get_ydata()[0] for ln in fig.axes[1].get_lines()[1:]) == [3, 5, 10]
    fig.savefig(tmp_path / "x.png")
    fig.savefig(tmp_path / "x.svg")
    assert (tmp_path / "x.png").stat().st_size > 0


def test_unknown_column_is_named():
    with pytest.raises(KeyError, match="p99_nothing"):
        plot_level_metric(LEVELS, "p99_nothing")
