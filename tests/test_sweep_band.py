"""The low-high band around a simulated sweep's answer, and AA's published figure beside it."""

from __future__ import annotations

import json

import pytest

from agentperf_kit.sweep import SweepConfig, format_summary, load_sweep, run_sweep
from agentperf_kit.sweep_band import BAND_RESOLUTION, high_answer, low_answer, published_for


def _counting(boundary: int):
    seen: list[int] = []

    def passes(n: int) -> bool:
        seen.append(n)
        return n <= boundary

    return passes, seen


@pytest.mark.parametrize("boundary", [0, 1, 5, 37, 100, 250])
def test_low_end_is_bracketed_to_the_resolution_below_the_answer(boundary):
    answer = 100
    passes, seen = _counting(boundary)
    low = low_answer(passes, answer)
    want = min(boundary, answer)
    assert low <= want and want - low <= max(1, int(low * BAND_RESOLUTION))
    assert low == 0 or low <= boundary  # the band's end is a measured pass
    assert len(seen) <= 10


@pytest.mark.parametrize("boundary", [100, 101, 150, 330, 700])
def test_high_end_doubles_from_the_lowest_failure_then_bisects(boundary):
    passes, seen = _counting(boundary)
    high, lower_bound = high_answer(passes, 100, 101, cap=128)
    assert not lower_bound
    assert high <= boundary and boundary - high <= max(1, int(high * BAND_RESOLUTION))
    assert seen[0] == 101  # the sweep's lowest failure is measured first
    passes, _ = _counting(10**9)
    assert high_answer(passes, 100, 101, cap=128)[1]  # never fails: a lower bound


def test_published_figure_only_for_the_same_accelerator_model_and_aa_tiers():
    pub = published_for("GB300", "deepseek-v4-pro", "aa-dsv4pro", "slo1")
    assert pub["published_agents_per_accelerator"] == 57.5 and pub["published_agents_per_mw"] == 61354
    assert published_for("GB300", "deepseek-v4-pro", "aa-dsv4pro", "slo2") == {}
    assert published_for("GB300", "gpt-oss-120b", "aa-dsv4pro", "slo1") == {}
    assert published_for("GB300", "deepseek-v4-pro", "nvidia-blog-dsv4pro", "slo1") == {}
    assert published_for("H200", "deepseek-v4-pro", "aa-dsv4pro", "slo1")["published_agents_per_mw"] == 2594


def test_simulated_sweep_carries_its_band_and_prints_it(tmp_path):
    fast = dict(level_duration_s=60, warmup_s=10, min_trajectories=5, min_trajectories_per_agent=1)
    out = tmp_path / "s"
    res = run_sweep(SweepConfig(out=str(out), max_agents=64, **fast), progress=False)
    for t in res.summary["tiers"]:
        lo, mid, hi = t["band_low_agents"], t["max_agents"], t["band_high_agents"]
        assert lo <= mid <= hi, t
        assert t["band_low_agents_per_accelerator"] == pytest.approx(lo / 8)
    slo1 = res.summary["tiers"][0]
    assert slo1["band_low_agents"] < slo1["band_high_agents"]  # the sets differ on the default system
    assert slo1["published_agents_per_accelerator"] == 1.4  # AA's H200 figure
    # band levels are full levels of their own, written apart, and reused on resume
    assert (out / "band" / "low" / "levels.csv").exists() and (out / "band" / "high" / "levels.csv").exists()
    again = run_sweep(SweepConfig(out=str(out), max_agents=64, **fast), progress=False)
    assert again.summary["levels_measured_this_run"] == 0
    assert [t["band_high_agents"] for t in again.summary["tiers"]] == [
        t["band_high_agents"] for t in res.summary["tiers"]
    ]
    text = format_summary(load_sweep(out).summary)
    assert "band low-high" in text and "AA /accel" in text and "1.40" in text
    # without the band: no band columns, and the configuration still resumes
    plain = run_sweep(SweepConfig(out=str(out), max_agents=64, band=False, **fast), progress=False)
    assert "band_low_agents" not in plain.summary["tiers"][0]
    assert json.loads((out / "summary.json").read_text())["tiers"][0]["published_agents_per_mw"] == 2594
