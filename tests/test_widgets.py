"""Widgets driven from Python: slider values in, max agents out, checked against agentperf_kit.slo on the
same data (hand-computable tables and a simulated sweep)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as w
import numpy as np
import pandas as pd
import pytest

from agentperf_kit.slo import Tier, level_verdicts, max_agents
from agentperf_kit.widgets import LevelPicker, LevelSamples, SLOExplorer, TrajectoryBrowser, turn_table

LEVELS = (1, 2, 4, 8, 16)


def _table() -> pd.DataFrame:
    """21 in-window requests per level N: speed 100/N * (1 + i/20), TTFT 0.1 * N * (1 + i/20), i = 0..20.

    With 21 samples the linear percentiles fall on samples: P25 = sample 5, P50 = sample 10, P95 = sample
    19. So P25 speed = 125/N, P95 TTFT = 0.195 N, P50 TTFT = 0.15 N. Out-of-window rows are absurd on
    purpose (they must be ignored). At N = 16 one more request failed (TTFT +inf, speed 0)."""
    rows = []
    for n in LEVELS:
        for i in range(21):
            f = 1 + i / 20
            rows.append(
                dict(
                    concurrency=n,
                    agent=i % n,
                    output_speed_tps=100 / n * f,
                    ttft_s=0.1 * n * f,
                    ok=True,
                    in_window=True,
                )
            )
        rows.append(dict(concurrency=n, agent=0, output_speed_tps=1e6, ttft_s=1e-6, ok=True, in_window=False))
    rows.append(dict(concurrency=16, agent=1, output_speed_tps=0.0, ttft_s=np.inf, ok=False, in_window=True))
    return pd.DataFrame(rows)


def _reference(df: pd.DataFrame, tier: Tier) -> int:
    """max agents from agentperf_kit.slo on the full per-level requests (point verdicts)."""
    verdicts = [
        {"concurrency": n, f"verdict_{tier.name}": level_verdicts(g, [tier], confidence=None)[tier.name]}
        for n, g in df.groupby("concurrency")
    ]
    return int(max_agents(pd.DataFrame(verdicts), [tier])["max_agents"].iloc[0])


def _set(ex: SLOExplorer, floor=None, ceiling=None, speed_pct=None, ttft_pct=None) -> None:
    for slider, v in (
        (ex.speed_floor, floor),
        (ex.ttft_ceiling, ceiling),
        (ex.speed_pct, speed_pct),
        (ex.ttft_pct, ttft_pct),
    ):
        if v is not None:
            slider.value = v


def test_level_samples_percentiles_are_the_hand_computed_ones():
    s = LevelSamples.from_requests(_table())
    p = s.percentiles(25, 95).set_index("concurrency")
    for n in LEVELS[:-1]:
        assert p.loc[n, "observed_speed_tps"] == pytest.approx(125 / n)
        assert p.loc[n, "observed_ttft_s"] == pytest.approx(0.195 * n)
    assert p.loc[16, "n_requests"] == 22 and p.loc[16, "n_failed"] == 1


def test_sliders_recompute_max_agents_like_slo():
    df = _table()
    ex = SLOExplorer(df, "aa-dsv4pro", draw=False)
    # start: slo1 = 20 tok/s & 10 s at P25/P95. P25 speed = 125/N >= 20 -> N <= 6.25; TTFT all pass -> 4
    assert ex.max_agents == 4 == _reference(df, Tier("t", "", 20, 10))
    assert "max agents: 4" in ex.result.value
    _set(ex, floor=10)  # 125/N >= 10 -> N <= 12.5 -> 8
    assert ex.max_agents == 8 == _reference(df, Tier("t", "", 10, 10))
    _set(ex, ceiling=0.5)  # P95 TTFT 0.195 N <= 0.5 -> N <= 2.56 -> 2
    assert ex.max_agents == 2 == _reference(df, Tier("t", "", 10, 0.5))
    _set(ex, ttft_pct=50)  # P50 TTFT 0.15 N <= 0.5 -> N <= 3.33 -> still 2 (4 fails)
    assert ex.max_agents == 2
    _set(ex, ceiling=1.3)  # 0.15 N <= 1.3 -> N <= 8.67 -> 8
    assert ex.max_agents == 8 == _reference(df, Tier("t", "", 10, 1.3, 25, 50))
    _set(ex, speed_pct=0, floor=6.5)  # P0 speed = 100/N >= 6.5 -> N <= 15.4; TTFT caps at 8
    assert ex.max_agents == 8 == _reference(df, Tier("t", "", 6.5, 1.3, 0, 50))
    by_n = ex.levels.set_index("concurrency")
    assert by_n.loc[8, "binding_custom"] == "ttft"  # 1.2 s vs 1.3 s is closer than 12.5 vs 6.5 tok/s
    assert by_n.loc[16, "binding_custom"] == "speed"  # P0 speed is the failed request's 0


def test_a_failure_is_inf_and_no_pass_reads_none():
    df = _table()
    ex = SLOExplorer(df, [Tier("loose", "", 0.5, 1000, 25, 100)], draw=False)
    # P100 of TTFT at N = 16 is +inf (the failed request): 16 fails, the rest pass
    assert ex.max_agents == 8 == _reference(df, Tier("t", "", 0.5, 1000, 25, 100))
    assert ex.levels.set_index("concurrency").loc[16, "observed_ttft_s"] == np.inf
    _set(ex, floor=ex.speed_floor.max)
    assert ex.max_agents is None
    assert "max agents: none" in ex.result.value


def test_random_tables_agree_with_slo():
    rng = np.random.default_rng(7)
    rows = []
    for n in (1, 2, 3, 5, 8, 13):
        k = int(rng.integers(5, 60))
        speed = rng.lognormal(np.log(200 / n), 0.4, k)
        ttft = rng.lognormal(np.log(0.2 * n), 0.8, k)
        failed = rng.random(k) < 0.03
        speed[failed], ttft[failed] = 0.0, np.inf
        speed[rng.random(k) < 0.05] = np.nan  # < 2 tokens: no speed
        rows.append(
            pd.DataFrame(
                dict(
                    concurrency=n,
                    agent=0,
                    output_speed_tps=speed,
                    ttft_s=ttft,
                    ok=~failed,
                    in_window=rng.random(k) < 0.9,
                )
            )
        )
    df = pd.concat(rows, ignore_index=True)
    ex = SLOExplorer(df, "aa-dsv4pro", draw=False)
    seen = set()
    for _ in range(40):
        floor, ceiling = float(rng.uniform(5, 150)), float(rng.uniform(0.2, 8))
        sp, tp = float(rng.integers(5, 60)), float(rng.integers(50, 100))
        _set(ex, floor=floor, ceiling=ceiling, speed_pct=sp, ttft_pct=tp)
        tier = ex.tier
        expected = _reference(df[df["in_window"]], tier)
        assert (ex.max_agents or 0) == expected, (floor, ceiling, sp, tp)
        seen.add(expected)
    assert len(seen) >= 3  # the settings explored really moved the answer


def test_explorer_reproduces_a_simulated_sweep(tmp_path):
    from agentperf_kit import SweepConfig, run_sweep

    res = run_sweep(
        SweepConfig(
            target="sim:h200x8-dsv4pro",
            level_duration_s=60,
            warmup_s=15,
            min_trajectories=2,
            min_trajectories_per_agent=0,
            max_agents=64,
            max_extensions=0,
            out=str(tmp_path / "s"),
        ),
        progress=False,
    )
    ex = SLOExplorer(res, draw=False)
    for t in res.tiers.itertuples():
        ex.speed_floor.value, ex.ttft_ceiling.value = t.min_output_speed_tps, t.max_ttft_s
        assert (ex.max_agents or 0) == t.max_agents, t.name
    ex2 = SLOExplorer(tmp_path / "s", tier="slo2", draw=False)  # a directory works too
    assert (ex2.max_agents or 0) == int(res.tiers.set_index("name").loc["slo2", "max_agents"])


def test_widget_contract_for_the_browser_test():
    ex = SLOExplorer(_table(), "aa-dsv4pro")
    assert (
        isinstance(ex.speed_floor, w.FloatSlider) and "agentperf-speed-floor" in ex.speed_floor._dom_classes
    )
    assert (
        isinstance(ex.ttft_ceiling, w.FloatSlider)
        and "agentperf-ttft-ceiling" in ex.ttft_ceiling._dom_classes
    )
    assert isinstance(ex.speed_pct, w.FloatSlider) and ex.speed_pct.value == 25
    assert isinstance(ex.ttft_pct, w.FloatSlider) and ex.ttft_pct.value == 95
    assert isinstance(ex.result, w.HTML) and "agentperf-max-agents" in ex.result._dom_classes
    assert isinstance(ex.widget, w.Box)
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    assert ex.image.value[:4] == b"\x89PNG"
    # the ECDF figure follows the sliders: the tier's lines sit at the new limits
    ex.speed_floor.value = 33.0
    ex.ttft_ceiling.value = 0.7
    speed_ax, ttft_ax = ex.figure.axes[:2]
    assert [ln.get_xdata()[0] for ln in speed_ax.get_lines() if ln.get_gid() == "tier:custom"] == [33.0]
    assert [ln.get_xdata()[0] for ln in ttft_ax.get_lines() if ln.get_gid() == "tier:custom"] == [0.7]
    assert [ln.get_ydata()[0] for ln in ttft_ax.get_lines() if ln.get_gid() == "percentile:95"] == [0.95]


def test_unknown_tier_is_named():
    with pytest.raises(ValueError, match="slo9"):
        SLOExplorer(_table(), "aa-dsv4pro", tier="slo9", draw=False)
    with pytest.raises(TypeError, match="requests DataFrame"):
        SLOExplorer(42)


@pytest.fixture(scope="module")
def sim_run():
    from agentperf_kit import RunRules, default_trajectories, run_sim_level

    rules = RunRules(warmup_s=10, duration_s=60, min_trajectories=0, min_trajectories_per_agent=0)
    return run_sim_level(default_trajectories()[:40], 4, rules, seed=1)


def test_level_picker_shows_the_chosen_level(sim_run):
    req = pd.concat([sim_run.requests, sim_run.requests.assign(concurrency=8)], ignore_index=True)
    lp = LevelPicker(req, "aa-dsv4pro")
    assert list(lp.dropdown.options) == [4, 8]
    lp.dropdown.value = 8
    assert "p25_output_speed_tps" in lp.table.value and "slo3" in lp.verdicts.value
    labels = [ln.get_label() for ln in lp.figure.axes[0].get_lines() if ln.get_gid() == "ecdf"]
    assert labels == ["N=8"]


def test_trajectory_browser_tables_one_agent(sim_run):
    req = sim_run.requests
    tb = TrajectoryBrowser(sim_run)
    tb.agent.value = 2
    assert len(tb.turns) == (req["agent"] == 2).sum()
    assert tb.turns["t_send_s"].is_monotonic_increasing
    tid = tb.trajectory.options[1]
    tb.trajectory.value = tid
    assert set(tb.turns["trajectory_id"]) == {tid}
    assert len(tb.turns) == ((req["agent"] == 2) & (req["trajectory_id"] == tid)).sum()
    gids = {p.get_gid() for p in tb.figure.axes[0].patches}
    assert {"ttft", "decode"} <= gids
    assert len(turn_table(req, 2)) == (req["agent"] == 2).sum()
