"""The SLO frontier: agrees with the sweep's tiers at the tier points, never allows more agents when
stricter (over a measured sweep and as a property over random levels), CLI and figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentperf_kit.cli import main
from agentperf_kit.frontier import (
    frontier_from_levels,
    plot_frontier_heatmaps,
    plot_frontier_tradeoff,
    sweep_frontier,
)
from agentperf_kit.slo import Tier


def test_frontier_agrees_with_the_sweeps_tiers_exactly(small_sweep):
    summary = json.loads((small_sweep / "summary.json").read_text())
    f = sweep_frontier(small_sweep, speeds=[25.0], ttfts=[4.0])
    at = f[f["sweep_tier"].notna()].set_index("sweep_tier")
    assert set(at.index) == {t["name"] for t in summary["tiers"]}
    for t in summary["tiers"]:
        row = at.loc[t["name"]]
        for col in ("max_agents", "max_agents_is_lower_bound", "lowest_failing_agents", "binding_constraint"):
            got, want = row[col], t[col]
            assert (pd.isna(got) and want is None) or got == want, (t["name"], col, got, want)
        assert row["agents_per_accelerator"] == pytest.approx(t["agents_per_accelerator"])
        if t["agents_per_mw"] is None:
            assert pd.isna(row["agents_per_mw"])
        else:
            assert row["agents_per_mw"] == pytest.approx(t["agents_per_mw"])
    tasks = pd.read_csv(small_sweep / "tasks.csv").set_index("concurrency")
    for t in summary["tiers"]:
        row, n = at.loc[t["name"]], t["max_agents"]
        if n:
            assert row["tasks_per_hour_per_mw"] == pytest.approx(tasks.at[n, "tasks_per_hour_per_mw"])
        else:
            assert pd.isna(row["tasks_per_hour_per_mw"])
    # the sweep's tiers span a lower bound, a bracketed boundary and 0 (so all three cases are compared)
    maxes = sorted(t["max_agents"] for t in summary["tiers"])
    assert maxes[0] == 0 and any(t["max_agents_is_lower_bound"] for t in summary["tiers"])


def _stricter_pairs(f: pd.DataFrame):
    rows = list(f.itertuples())
    for a in rows:
        for b in rows:
            if (
                b.min_output_speed_tps >= a.min_output_speed_tps
                and b.max_ttft_s <= a.max_ttft_s
                and b.speed_percentile <= a.speed_percentile
                and b.ttft_percentile >= a.ttft_percentile
            ):
                yield a, b


def test_the_measured_frontier_is_monotone(small_sweep):
    f = sweep_frontier(
        small_sweep,
        speeds=[10, 30, 60, 90],
        ttfts=[0.5, 2, 5],
        speed_percentiles=[10, 25],
        ttft_percentiles=[90, 95],
    )
    assert len(f) >= 4 * 3 * 2 * 2  # the sweep's tier points are added to the grid
    pairs = 0
    for a, b in _stricter_pairs(f):
        assert b.max_agents <= a.max_agents, (a, b)
        pairs += 1
    assert pairs > 100
    assert f["max_agents"].nunique() > 3  # not a flat frontier: the test can fail


_level = st.lists(
    st.tuples(st.floats(0, 200, allow_subnormal=False), st.floats(0.01, 20), st.booleans()),
    min_size=3,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.lists(_level, min_size=1, max_size=5),
    s1=st.floats(1, 150),
    ds=st.floats(0, 80),
    t1=st.floats(0.1, 15),
    dt=st.floats(0, 10),
    confidence=st.sampled_from([0.95, None]),
    sps=st.lists(st.sampled_from([10.0, 25.0, 50.0]), min_size=2, max_size=2),
    tps=st.lists(st.sampled_from([90.0, 95.0, 99.0]), min_size=2, max_size=2),
)
def test_stricter_never_allows_more_agents(levels, s1, ds, t1, dt, confidence, sps, tps):
    frames = []
    for i, reqs in enumerate(levels):
        speed = np.array([r[0] for r in reqs])
        ttft = np.array([r[1] for r in reqs])
        ok = np.array([r[2] or j % 5 for j, r in enumerate(reqs)], dtype=bool)  # some failures
        speed = np.where(ok, speed, 0.0)
        ttft = np.where(ok, ttft, np.inf)
        frames.append((2**i, pd.DataFrame({"output_speed_tps": speed, "ttft_s": ttft, "in_window": True})))
    # stricter: higher floor, lower ceiling, lower speed percentile, higher TTFT percentile
    loose = Tier("loose", "", s1, t1 + dt, max(sps), min(tps))
    strict = Tier("strict", "", s1 + ds, t1, min(sps), max(tps))
    tab = frontier_from_levels(frames, [loose, strict], confidence=confidence).set_index("name")
    assert tab.at["strict", "max_agents"] <= tab.at["loose", "max_agents"]


def test_cli_writes_table_and_figures(small_sweep, tmp_path, capsys):
    out = tmp_path / "fr"
    rc = main(
        [
            "frontier",
            str(small_sweep),
            str(small_sweep),
            "--speeds",
            "20,40",
            "--ttfts",
            "2,10",
            "--ceiling",
            "10",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    tab = pd.read_csv(out / "frontier.csv")
    assert {
        "system",
        "min_output_speed_tps",
        "max_ttft_s",
        "max_agents",
        "agents_per_accelerator",
        "agents_per_mw",
        "sweep_tier",
    } <= set(tab.columns)
    assert (out / "frontier_heatmap.png").stat().st_size > 1000
    assert (out / "frontier_tradeoff.png").stat().st_size > 1000
    assert "max agents" in capsys.readouterr().out
    assert main(["frontier", str(tmp_path), "--out", str(out)]) == 2


def test_figures_read_back(small_sweep):
    f = sweep_frontier(small_sweep, speeds=[20, 40, 60], ttfts=[2, 10])
    g = pd.concat([f, f.assign(system="copy")])
    ax = plot_frontier_tradeoff(g, ttft_ceiling=10)
    assert len(ax.get_lines()) == 2
    assert "tokens/s" in ax.get_xlabel() and "per accelerator" in ax.get_ylabel()
    x = ax.get_lines()[0].get_xdata()
    assert list(x) == sorted(set(f["min_output_speed_tps"]))
    fig = plot_frontier_heatmaps(g)
    assert len([a for a in fig.axes if a.get_title()]) == 2
    with pytest.raises(ValueError, match="ttft_ceiling"):
        plot_frontier_tradeoff(g, ttft_ceiling=7)
