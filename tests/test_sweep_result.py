"""SweepResult as a notebook object, against a small real simulated sweep (conftest ``small_sweep``)."""

from __future__ import annotations

import html

import pandas as pd
import pytest

from agentperf_kit.errors import ConfigError
from agentperf_kit.results import RunResult
from agentperf_kit.slo import Tier, get_tier_preset
from agentperf_kit.sweep import SweepResult, load_sweep


@pytest.fixture(scope="module")
def sweep(small_sweep) -> SweepResult:
    return load_sweep(small_sweep)


def test_repr_is_one_short_line_with_each_tier(sweep):
    text = repr(sweep)
    assert "\n" not in text and len(text) < 300
    assert text.startswith("<SweepResult 'sim:h200x8-dsv4pro' aa-dsv4pro: ")
    for _, t in sweep.tiers.iterrows():
        mark = ">=" if t["max_agents_is_lower_bound"] else ""
        assert f"{t['name']} {mark}{int(t['max_agents'])}" in text
    assert f"{len(sweep.levels)} levels" in text


def test_html_repr_is_a_compact_table(sweep):
    page = sweep._repr_html_()
    assert len(page) < 3000
    assert page.count("<tr>") == 1 + len(sweep.tiers)
    assert "sim:h200x8-dsv4pro" in page


def test_level_is_the_run_of_that_level(sweep):
    n = int(sweep.levels["concurrency"].iloc[2])
    run = sweep.level(n)
    assert isinstance(run, RunResult)
    assert run.manifest["config"]["concurrency"] == n
    row = sweep.levels.set_index("concurrency").loc[n]
    assert int(run.requests["in_window"].sum()) == int(row["n_requests"])
    with pytest.raises(ConfigError, match="measured levels"):
        sweep.level(10_000)


def test_retier_with_own_tiers_reproduces_the_sweep(sweep):
    got = sweep.retier(sweep.summary["tier_preset"])
    cols = ["name", "max_agents", "max_agents_is_lower_bound", "lowest_failing_agents", "binding_constraint"]
    pd.testing.assert_frame_equal(got[cols], sweep.tiers[cols], check_dtype=False)
    pd.testing.assert_series_equal(
        got["agents_per_accelerator"], sweep.tiers["agents_per_accelerator"], check_dtype=False
    )


def test_retier_accepts_spec_strings_and_tier_objects(sweep):
    lv = sweep.levels
    # a tier every level passes (lower bound at the top level) and one that N = 1 already fails
    easy = sweep.retier("easy=0.001/1000")
    assert int(easy["max_agents"].iloc[0]) == int(lv["concurrency"].max())
    assert bool(easy["max_agents_is_lower_bound"].iloc[0])
    hard = sweep.retier([Tier("hard", "impossible", 1e6, 1e-6)])
    assert int(hard["max_agents"].iloc[0]) == 0
    # a stricter tier never allows more agents than a looser one of the same shape
    slo = get_tier_preset("aa-dsv4pro").tiers[0]
    looser = Tier("loose", "x", slo.min_output_speed_tps / 2, slo.max_ttft_s * 2)
    assert int(sweep.retier(looser)["max_agents"].iloc[0]) >= int(sweep.retier(slo)["max_agents"].iloc[0])
    with pytest.raises(ConfigError):
        sweep.retier([1, 2])


def test_plot_has_the_two_panels(sweep):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = sweep.plot()
    try:
        assert len(fig.axes) == 2
    finally:
        plt.close(fig)


def test_compare_puts_sweeps_side_by_side(sweep, small_sweep):
    table = sweep.compare(small_sweep)
    assert len(table) == 2 * len(sweep.tiers)
    assert list(table["tier"]) == list(sweep.tiers["name"]) * 2
    lb = table[table["max_agents_is_lower_bound"]]
    assert len(lb) > 0  # slo1 still passes at N = 32 in the small sweep
    assert all(t.startswith(">=") for t in lb["max_agents_text"])


def test_settings_name_what_produced_the_numbers(sweep):
    text = sweep.settings
    c = sweep.summary["config"]
    assert text.startswith("sim:h200x8-dsv4pro, efficiency mid, ")
    assert f"{c['level_duration_s']:g} s window (warm-up {c['warmup_s']:g} s)" in text
    assert f">= {c['min_trajectories']} trajectories" in text
    assert "shorter than AA's rules" in text  # 60 s levels do not meet AA's 600 s
    assert text in html.unescape(sweep._repr_html_())
