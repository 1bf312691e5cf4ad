"""Plots read back: drawn data, tier lines and labels (no pixel comparison)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from agentperf_kit.plots import (
    cached_share_bucket,
    plot_agent_swimlane,
    plot_ecdf,
    plot_level_metric,
    plot_levels,
    plot_per_accelerator_bars,
    plot_ttft_vs_context,
    report_figures,
)
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
    assert ax.get_ylabel() == "P25 output speed [tokens/s]"
    assert ax.get_xlabel() == "concurrent agents (N)"
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and all("^" not in t and "$" not in t for t in ticks), ticks  # plain numbers, not 2^k
    plt.close(fig)


def test_tier_lines_only_at_the_tiers_own_percentile():
    """A P25 panel draws the speed floor of P25 tiers only; a P10 tier's floor would be misread on it."""
    import matplotlib.pyplot as plt

    from agentperf_kit.slo import tiers_from_spec

    tiers = tiers_from_spec("a=30/2,b=70/5/10/99")
    fig, (s, t) = plt.subplots(1, 2)
    plot_level_metric(LEVELS, "p25_output_speed_tps", tiers=tiers, ax=s)
    plot_level_metric(LEVELS, "p95_ttft_s", tiers=tiers, ax=t)
    assert [ln.get_ydata()[0] for ln in s.get_lines()[1:]] == [30]
    assert [ln.get_ydata()[0] for ln in t.get_lines()[1:]] == [2]
    plt.close(fig)


def test_level_labels_come_from_the_metric_registry():
    from agentperf_kit.plots import level_stat_label

    assert level_stat_label("p95_ttft_s") == "P95 time to first token [s]"
    assert level_stat_label("p10_output_speed_tps") == "P10 output speed [tokens/s]"
    assert level_stat_label("ttft_s") == "Time to first token [s]"
    assert level_stat_label("error_rate") == "error_rate"  # unknown: unchanged, never guessed


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


# --- request-level plots ----------------------------------------------------------------------------------


def _requests() -> pd.DataFrame:
    """Two levels of 21 in-window requests (P25 speed = sample 5, P95 TTFT = sample 19) plus junk outside
    the window; one agent's timeline with two phases at N = 2."""
    import numpy as np

    rows = []
    for n in (1, 2):
        for i in range(21):
            rows.append(
                dict(
                    concurrency=n,
                    agent=0,
                    output_speed_tps=100.0 / n + i,
                    ttft_s=0.1 * n * (1 + i),
                    ok=True,
                    in_window=True,
                    prompt_tokens=1000 * (i + 1),
                    cached_prompt_tokens=int([0, 0.6, 0.9, 1][i % 4] * 1000 * (i + 1)),
                    phase_id=0,
                    trajectory_id="t",
                    phase=0,
                    t_send_s=float(i),
                    t_first_s=np.nan,
                    t_end_s=np.nan,
                )
            )
        rows.append(
            dict(
                concurrency=n,
                agent=0,
                output_speed_tps=1e6,
                ttft_s=1e-6,
                ok=True,
                in_window=False,
                prompt_tokens=10,
                cached_prompt_tokens=0,
                phase_id=0,
                trajectory_id="t",
                phase=0,
            )
        )
    return pd.DataFrame(rows)


def test_ecdf_draws_one_curve_per_level_with_tier_and_percentile_lines(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plot_ecdf(_requests(), "output_speed_tps", tiers=get_tier_preset("aa-dsv4pro"), ax=ax)
    assert out is ax
    curves = [ln for ln in ax.get_lines() if ln.get_gid() == "ecdf"]
    assert [c.get_label() for c in curves] == ["N=1", "N=2"]
    x, y = curves[0].get_xdata(), curves[0].get_ydata()
    assert list(x) == [100.0 + i for i in range(21)]  # the out-of-window 1e6 is not there
    assert y[0] == pytest.approx(1 / 21) and y[-1] == 1.0
    tiers = {
        ln.get_gid(): ln.get_xdata()[0] for ln in ax.get_lines() if str(ln.get_gid()).startswith("tier:")
    }
    assert tiers == {"tier:slo1": 20, "tier:slo2": 60, "tier:slo3": 180}
    assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_gid() == "percentile:25"] == [0.25]
    obs = {
        ln.get_gid(): ln.get_xdata()[0] for ln in ax.get_lines() if str(ln.get_gid()).startswith("observed")
    }
    assert obs == {"observed:1:25": 105.0, "observed:2:25": 55.0}
    assert any("slo1" in t.get_text() for t in ax.texts)
    fig.savefig(tmp_path / "e.png")
    fig.savefig(tmp_path / "e.svg")
    plt.close(fig)


def test_ecdf_of_ttft_keeps_failures_below_one_and_uses_p95():
    import matplotlib.pyplot as plt
    import numpy as np

    df = _requests()
    df.loc[0, "ttft_s"] = np.inf  # a failed request at N = 1
    fig, ax = plt.subplots()
    plot_ecdf(df, "ttft_s", tiers=get_tier_preset("aa-dsv4pro"), levels=[1], ax=ax)
    (curve,) = [ln for ln in ax.get_lines() if ln.get_gid() == "ecdf"]
    assert curve.get_ydata()[-1] == pytest.approx(20 / 21)
    assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_gid() == "percentile:95"] == [0.95]
    assert ax.get_xscale() == "log"
    plt.close(fig)
    with pytest.raises(ValueError, match="levels"):
        plot_ecdf(df, "ttft_s", levels=[3])
    with pytest.raises(ValueError, match="metric"):
        plot_ecdf(df, "prompt_tokens")


def test_ttft_vs_context_buckets_the_cached_share():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plot_ttft_vs_context(_requests(), ax=ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0-50%", "50-80%", "80-95%", "≥95%"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 42
    assert "prompt_tokens" in ax.get_xlabel() and "s" in ax.get_ylabel()
    plt.close(fig)
    shares = cached_share_bucket(
        pd.DataFrame({"prompt_tokens": [100, 100, 100, 0], "cached_prompt_tokens": [10, 85, 100, 0]})
    )
    assert list(shares) == ["0-50%", "80-95%", "≥95%", "unknown"]


def test_swimlane_splits_ttft_decode_and_tool_waits():
    import matplotlib.pyplot as plt
    import numpy as np

    df = pd.DataFrame(
        dict(
            agent=[0, 0, 0, 1],
            concurrency=2,
            phase_id=[5, 5, 6, 7],
            phase=[0, 0, 1, 0],
            trajectory_id=["a", "a", "a", "b"],
            t_send_s=[0.0, 4.0, 10.0, 0.0],
            t_first_s=[0.5, 5.0, np.nan, 1.0],
            t_end_s=[3.0, 8.0, 11.0, 2.0],
            ok=[True, True, False, True],
            in_window=[False, True, True, True],
        )
    )
    fig, ax = plt.subplots()
    plot_agent_swimlane(df, 0, ax=ax)
    parts = {}
    for p in ax.patches:
        parts.setdefault(p.get_gid(), []).append((p.get_x(), p.get_width(), p.get_y() + p.get_height() / 2))
    assert sorted(parts["ttft"]) == [(0.0, 0.5, 0.0), (4.0, 1.0, 0.0)]
    assert sorted(parts["decode"]) == [(0.5, 2.5, 0.0), (5.0, 3.0, 0.0)]
    assert parts["failed"] == [(10.0, 1.0, 1.0)]  # second phase: second lane
    assert sorted(x[:2] for x in parts["tool"]) == [(3.0, 1.0), (8.0, 2.0)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a · phase 0", "a · phase 1"]
    plt.close(fig)
    with pytest.raises(ValueError, match="agent=9"):
        plot_agent_swimlane(df, 9)
    with pytest.raises(ValueError, match="concurrency="):
        plot_agent_swimlane(pd.concat([df, df.assign(concurrency=4)]), 0)


def test_per_accelerator_bars_draw_bands_as_ranges_never_points():
    import matplotlib.pyplot as plt

    table = pd.DataFrame(
        {
            "system": ["GB300 NVL72", "H200", "H200 (sim)"],
            "tier": ["slo1", "slo1", "slo1"],
            "agents_per_mw": [61354.0, 2594.0, None],
            "agents_per_mw_low": [None, None, 4567.0],
            "agents_per_mw_high": [None, None, 8653.0],
        }
    )
    fig, ax = plt.subplots()
    plot_per_accelerator_bars(table, "agents_per_mw", ax=ax)
    solid = sorted(p.get_height() for p in ax.patches if p.get_gid() == "value")
    ranges = [(p.get_y(), p.get_y() + p.get_height()) for p in ax.patches if p.get_gid() == "range"]
    assert solid == [2594.0, 61354.0]
    assert ranges == [(4567.0, 8653.0)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["GB300 NVL72", "H200", "H200 (sim)"]
    assert "per MW" in ax.get_ylabel()
    assert any("4,567–8,653" in t.get_text() for t in ax.texts)
    plt.close(fig)
    with pytest.raises(KeyError, match="agents_per_gpu"):
        plot_per_accelerator_bars(table, "agents_per_gpu")


def test_report_figures_feed_the_html_report(tmp_path):
    from agentperf_kit import SweepConfig, run_sweep
    from agentperf_kit.report import write_html_report

    out = tmp_path / "s"
    run_sweep(
        SweepConfig(
            target="sim:h200x8-dsv4pro",
            level_duration_s=30,
            warmup_s=10,
            min_trajectories=1,
            min_trajectories_per_agent=0,
            max_agents=8,
            max_extensions=0,
            band=False,  # no report figure draws it (tests/test_sweep_band.py)
            out=str(out),
        ),
        progress=False,
    )
    titles = [t for t, _ in report_figures(out)]
    assert any("ECDF" in t for t in titles) and any("prompt length" in t for t in titles)
    html = write_html_report(out).read_text()
    assert html.count("data:image/png;base64,") == len(titles)
