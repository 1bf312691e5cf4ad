"""Metrics from hand-computable rows, +inf-aware percentiles, SLO verdicts, max agents, normalization."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agentperf_kit.metrics import derive_request_metrics, level_stats, output_length_mismatch
from agentperf_kit.normalize import PowerSpec, agents_per_accelerator, agents_per_mw, provisioned_power_w
from agentperf_kit.percentiles import percentile, percentile_ci
from agentperf_kit.published import implied_watts_per_gpu, load_published_results, published_ratios
from agentperf_kit.slo import (
    Tier,
    evaluate_level,
    get_tier_preset,
    level_verdicts,
    max_agents,
    per_agent_attainment,
)

NAN = math.nan


def _rows(*rows):
    cols = [
        "t_send_s",
        "t_first_s",
        "t_first_answer_s",
        "t_last_s",
        "t_end_s",
        "output_tokens",
        "ok",
        "target_output_tokens",
    ]
    df = pd.DataFrame(rows, columns=cols)
    df["output_tokens"] = df["output_tokens"].astype("Int64")
    return df


def test_metrics_by_hand():
    df = derive_request_metrics(
        _rows(
            (10.0, 10.5, 11.0, 12.5, 12.6, 101, True, 101),  # normal: speed 100/2.0 = 50
            (0.0, 1.0, NAN, 1.0, 1.1, 1, True, 1),  # one token: no speed, TTFT counted
            (0.0, 2.0, 2.0, 2.0, 2.0, 30, True, 30),  # all tokens in one chunk: speed unmeasurable
            (0.0, NAN, NAN, NAN, 5.0, None, False, 30),  # failed before any token
            (0.0, 0.4, NAN, 3.0, 3.0, 40, False, 80),  # cut mid-stream
        )
    )
    assert df.ttft_s.tolist()[:3] == [0.5, 1.0, 2.0]
    assert df.ttft_s[3] == math.inf
    assert df.output_speed_tps[0] == pytest.approx(50.0)
    assert math.isnan(df.output_speed_tps[1])
    assert math.isnan(df.output_speed_tps[2])  # undefined (was +inf, which passed any floor)
    assert df.speed_unmeasurable.tolist() == [False, False, True, False, False]
    assert df.output_speed_tps[3] == 0 and df.output_speed_tps[4] == 0
    assert df.ttfo_s[0] == pytest.approx(1.0) and math.isnan(df.ttfo_s[1]) and df.ttfo_s[3] == math.inf
    assert df.e2e_s.tolist() == pytest.approx([2.6, 1.1, 2.0, 5.0, 3.0])


def test_server_ignoring_ignore_eos_is_flagged():
    df = _rows((0, 1, 1, 2, 2, 12, True, 50), (0, 1, 1, 2, 2, 50, True, 50))
    assert output_length_mismatch(df).tolist() == [True, False]


def test_percentile_keeps_inf_where_numpy_gives_nan():
    vals = [1, 2, 3, np.inf]
    with np.errstate(invalid="ignore"):  # numpy's inf - inf, the NaN this test shows
        assert math.isnan(np.percentile(vals, 90))
    assert percentile(vals, 90) == math.inf
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(np.percentile([1, 2, 3, 4], 90))
    assert percentile([1, 2, 3, np.inf], 50) == pytest.approx(2.5)
    assert percentile([5, NAN, 1], 50) == 3
    assert math.isnan(percentile([], 50))
    rng = np.random.default_rng(0)
    x = rng.exponential(size=101)
    for q in (0, 5, 25, 50, 95, 100):
        assert percentile(x, q) == pytest.approx(np.percentile(x, q))


def test_order_statistic_ci_covers_at_least_the_stated_share():
    rng = np.random.default_rng(1)
    true_q25 = -0.6744897501960817
    hits = sum(
        lo <= true_q25 <= hi for lo, hi in (percentile_ci(rng.normal(size=80), 25) for _ in range(800))
    )
    assert hits / 800 >= 0.93
    _, hi = percentile_ci([1, 2, 3], 95)
    assert hi == math.inf  # three samples cannot bound a P95 from above
    assert percentile_ci([1.0, 2.0, np.inf, np.inf], 50)[1] == math.inf


def _level(speeds, ttfts, agents=None):
    n = len(speeds)
    return pd.DataFrame(
        {
            "output_speed_tps": speeds,
            "ttft_s": ttfts,
            "in_window": [True] * n,
            "agent": agents if agents is not None else list(range(n)),
        }
    )


def test_tier_verdicts_pass_fail_and_inconclusive():
    tier = Tier("slo1", "20 & 10", 20, 10)
    rng = np.random.default_rng(2)
    good = _level(rng.uniform(40, 60, 400), rng.uniform(0.1, 2, 400))
    slow = _level(rng.uniform(5, 10, 400), rng.uniform(0.1, 2, 400))
    few = _level([19, 25, 30, 40], [1, 1, 1, 1])
    assert level_verdicts(good, [tier]) == {"slo1": "pass"}
    ev = evaluate_level(slow, [tier])
    assert ev.tier_verdict.iloc[0] == "fail" and ev.binding.iloc[0] == "speed"
    assert level_verdicts(few, [tier]) == {"slo1": "inconclusive"}
    assert level_verdicts(few, [tier], confidence=None) == {"slo1": "pass"}


def test_binding_constraint_compares_log_margins():
    """Speed 116 vs floor 20 (5.8x) is closer to its limit than TTFT 0.29 s vs ceiling 10 s (34x)."""
    tier = Tier("slo1", "20 & 10", 20, 10)
    ev = evaluate_level(_level([116.0] * 50, [0.29] * 50), [tier], confidence=None)
    assert ev.binding.iloc[0] == "speed"
    # a TTFT at a third of its ceiling is closer than a speed at 5.8x its floor
    ev = evaluate_level(_level([116.0] * 50, [3.4] * 50), [tier], confidence=None)
    assert ev.binding.iloc[0] == "ttft"


def test_failed_requests_are_misses():
    tier = Tier("slo1", "x", 20, 10)
    df = _level([50.0] * 90 + [0.0] * 10, [1.0] * 90 + [math.inf] * 10)
    ev = evaluate_level(df, [tier], confidence=None)
    assert ev.set_index("statistic").loc["ttft_s", "observed"] == math.inf
    assert ev.tier_verdict.iloc[0] == "fail" and ev.binding.iloc[0] == "ttft"


def test_presets_and_unknown_name():
    p = get_tier_preset("aa-dsv4pro")
    assert [(t.min_output_speed_tps, t.max_ttft_s) for t in p.tiers] == [(20, 10), (60, 5), (180, 3)]
    assert len(get_tier_preset("aa-gpt-oss-120b").tiers) == 4
    assert get_tier_preset("nvidia-blog-dsv4pro").tiers[2].min_output_speed_tps == 300
    with pytest.raises(KeyError, match="known presets: aa-dsv4pro"):
        get_tier_preset("nope")
    with pytest.raises(ValueError, match="identifier-safe"):
        Tier("slo 1", "x", 1, 1)


def _levels(verdicts):
    return pd.DataFrame({"concurrency": list(verdicts), "verdict_slo1": list(verdicts.values())})


@pytest.mark.parametrize(
    ("verdicts", "expected", "lower_bound", "non_mono"),
    [
        ({1: "pass", 2: "pass", 4: "fail", 3: "pass"}, 3, False, False),
        ({1: "fail", 2: "fail"}, 0, False, False),
        ({1: "pass", 2: "pass", 4: "pass"}, 4, True, False),
        ({1: "pass", 2: "fail", 4: "pass", 8: "fail"}, 1, False, True),
        ({1: "pass", 2: "inconclusive", 4: "fail"}, 1, False, False),
    ],
)
def test_max_agents_odd_cases(verdicts, expected, lower_bound, non_mono):
    tab = max_agents(_levels(verdicts), [Tier("slo1", "x", 20, 10)])
    row = tab.iloc[0]
    assert row.max_agents == expected
    assert row.max_agents_is_lower_bound == lower_bound
    assert row.non_monotonic == non_mono


def test_per_agent_attainment():
    df = _level([50, 50, 5, 50], [1, 20, 1, 1], agents=[0, 0, 1, 1])
    att = per_agent_attainment(df, Tier("slo1", "x", 20, 10)).set_index("agent").attainment
    assert att.to_dict() == {0: 0.5, 1: 0.5}


def test_level_stats_in_flight_and_rates():
    df = pd.DataFrame(
        {
            "t_scheduled_s": [0.0, 0.0],
            "t_send_s": [0.0, 5.0],
            "t_end_s": [10.0, 10.0],
            "ok": [True, True],
            "output_speed_tps": [10.0, 20.0],
            "ttft_s": [1.0, 2.0],
            "in_window": [True, True],
            "prompt_tokens": pd.array([100, 100], dtype="Int64"),
            "cached_prompt_tokens": pd.array([50, 90], dtype="Int64"),
            "output_tokens": pd.array([10, 30], dtype="Int64"),
        }
    )
    s = level_stats(df, window_start_s=0.0, window_end_s=10.0, accelerators=2)
    assert s["mean_in_flight"] == pytest.approx(1.5) and s["max_in_flight"] == 2
    assert s["output_tokens_per_s"] == pytest.approx(4.0)
    assert s["output_tokens_per_s_per_accelerator"] == pytest.approx(2.0)
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.7)


def test_normalization():
    assert agents_per_accelerator(12, 8) == 1.5
    assert agents_per_mw(100, 4_000.0) == pytest.approx(25_000)
    assert agents_per_mw(100, None) is None
    assert provisioned_power_w("H200", 8) == pytest.approx(10_960)
    with pytest.raises(KeyError, match="known"):
        provisioned_power_w("TPUv9", 4)
    with pytest.raises(ValueError, match="scope"):
        PowerSpec(100, "guessed")


def test_published_figures_imply_watts_and_ratios():
    df = load_published_results()
    w = implied_watts_per_gpu(df)
    assert w["GB300"] == pytest.approx(937, abs=1) and w["H200"] == pytest.approx(540, abs=1)
    r = published_ratios(df)
    assert r["per_mw"] == pytest.approx(23.7, abs=0.05) and r["per_gpu"] == pytest.approx(41.1, abs=0.05)
    sample = Path("sample_data/published_aa_agentperf.csv").read_text()
    assert sample == Path("agentperf_kit/data/published_aa_agentperf.csv").read_text()


def test_user_defined_tiers_from_a_spec():
    from agentperf_kit.slo import tiers_from_spec

    p = get_tier_preset("fast=100/2,slow=20/10/50/99")
    assert [t.name for t in p.tiers] == ["fast", "slow"]
    assert p.tiers[1].speed_percentile == 50 and p.tiers[1].ttft_percentile == 99
    with pytest.raises(ValueError, match="NAME=SPEED/TTFT"):
        tiers_from_spec("fast=100")
    with pytest.raises(ValueError, match="numbers expected"):
        tiers_from_spec("fast=a/b")


def test_schema_units_equal_the_metric_registry():
    """metrics.METRICS is the single source of a metric's unit: the per-request schema agrees with it."""
    from agentperf_kit.metrics import METRICS
    from agentperf_kit.schema import REQUEST_COLUMNS

    by_name = REQUEST_COLUMNS
    for name, metric in METRICS.items():
        assert name in by_name, f"metric {name} has no column in the per-request schema"
        assert by_name[name].unit == metric.unit, name


def test_tier_directions_come_from_the_metric_registry():
    from agentperf_kit.metrics import METRICS
    from agentperf_kit.slo import _HIGH

    assert {n: METRICS[n].higher_is_better for n in ("output_speed_tps", "ttft_s")} == _HIGH
    assert _HIGH == {"output_speed_tps": True, "ttft_s": False}
