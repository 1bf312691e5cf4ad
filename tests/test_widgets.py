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


def test_explorer_reproduces_a_simulated_sweep(small_sweep):
    from agentperf_kit.sweep import load_sweep

    res = load_sweep(small_sweep)  # the session's simulated sweep (8x H200, aa-dsv4pro tiers)
    ex = SLOExplorer(res, draw=False)
    for t in res.tiers.itertuples():
        ex.speed_floor.value, ex.ttft_ceiling.value = t.min_output_speed_tps, t.max_ttft_s
        assert (ex.max_agents or 0) == t.max_agents, t.name
    ex2 = SLOExplorer(small_sweep, tier="slo2", draw=False)  # a directory works too
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


def _frontier_table() -> pd.DataFrame:
    """A hand-made frontier of two systems on a 3 x 2 grid: max agents = 120 / floor * ceiling / 5 for
    "A" (8 accelerators, 4 kW) and twice that for "B" (72 accelerators, 100 kW); B's loosest point is a
    lower bound."""
    rows = []
    for system, k, acc, watts in (("A", 1, 8, 4000.0), ("B", 2, 72, 100000.0)):
        for floor in (20.0, 40.0, 60.0):
            for ceiling in (5.0, 10.0):
                n = int(k * 120 / floor * ceiling / 5)
                rows.append(
                    dict(
                        system=system,
                        min_output_speed_tps=floor,
                        speed_percentile=25.0,
                        max_ttft_s=ceiling,
                        ttft_percentile=95.0,
                        max_agents=n,
                        max_agents_is_lower_bound=system == "B" and floor == 20.0 and ceiling == 10.0,
                        lowest_failing_agents=n + 1,
                        binding_constraint="speed",
                        agents_per_accelerator=n / acc,
                        power_w=watts,
                        agents_per_mw=n / (watts / 1e6),
                        tasks_per_hour_per_mw=None,
                        p50_slowdown=None,
                        sweep_tier=None,
                    )
                )
    return pd.DataFrame(rows)


def test_frontier_explorer_reads_the_table_at_the_slider_point():
    from agentperf_kit.widgets import FrontierExplorer

    tab = _frontier_table()
    ex = FrontierExplorer(tab, draw=False)
    assert (
        isinstance(ex.speed_floor, w.SelectionSlider)
        and "agentperf-frontier-speed" in ex.speed_floor._dom_classes
    )
    assert (
        isinstance(ex.ttft_ceiling, w.SelectionSlider)
        and "agentperf-frontier-ttft" in ex.ttft_ceiling._dom_classes
    )
    assert "agentperf-frontier-result" in ex.result._dom_classes
    assert list(ex.speed_floor.options) == [("20", 20.0), ("40", 40.0), ("60", 60.0)]
    # starts at the loosest point: lowest floor, highest ceiling
    assert ex.agents_per_accelerator == {"A": 12 / 8, "B": 24 / 72}
    assert "&gt;= 24" in ex.result.value  # B's lower bound is said so (HTML-escaped ">= 24")
    for floor in (20.0, 40.0, 60.0):
        for ceiling in (5.0, 10.0):
            ex.speed_floor.value, ex.ttft_ceiling.value = floor, ceiling
            n = int(120 / floor * ceiling / 5)
            assert ex.agents_per_accelerator == {"A": n / 8, "B": 2 * n / 72}
            assert ex.agents_per_mw == {"A": n / 0.004, "B": 2 * n / 0.1}
            assert list(ex.rows["max_agents"]) == [n, 2 * n]
            assert f"{floor:g} tok/s" in ex.result.value and f"{ceiling:g} s" in ex.result.value
            assert f"<td>{n}</td>" in ex.result.value
    # the trade-off figure follows: its curves are at the ceiling, the dashed line at the floor
    ex = FrontierExplorer(tab, speed_floor=60)
    ex.speed_floor.value, ex.ttft_ceiling.value = 40.0, 5.0
    ax = ex.figure.axes[0]
    floor_line = [ln for ln in ax.get_lines() if ln.get_gid() == "speed_floor"]
    assert [ln.get_xdata()[0] for ln in floor_line] == [40.0]
    curves = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines() if ln.get_label() in ("A", "B")}
    assert curves == {"A": [6 / 8, 3 / 8, 2 / 8], "B": [12 / 72, 6 / 72, 4 / 72]}
    ex.value.value = "agents_per_mw"
    assert ex.figure.axes[0].get_ylabel() == "max agents per MW [agents/MW]"
    assert ex.image.value[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="speed_floor=33"):
        FrontierExplorer(tab, speed_floor=33)


def test_frontier_explorer_on_a_sweep_gives_its_tiers(small_sweep):
    from agentperf_kit.sweep import load_sweep
    from agentperf_kit.widgets import FrontierExplorer

    res = load_sweep(small_sweep)
    ex = FrontierExplorer([small_sweep], draw=False)  # a list of sweep directories, default grid
    (system,) = ex.rows["system"]
    for t in res.tiers.itertuples():
        ex.speed_floor.value, ex.ttft_ceiling.value = t.min_output_speed_tps, t.max_ttft_s
        assert int(ex.rows["max_agents"].iloc[0]) == t.max_agents, t.name
        assert ex.agents_per_accelerator[system] == pytest.approx(t.agents_per_accelerator)
        assert ex.rows["sweep_tier"].iloc[0] == t.name
