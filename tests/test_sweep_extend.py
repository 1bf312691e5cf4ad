"""An inconclusive level is extended (re-run with a longer window), never guessed; levels line up by N."""

from __future__ import annotations

import json

import pandas as pd

from agentperf_kit.sweep import SweepConfig, run_sweep

SHORT = dict(
    level_duration_s=20,
    warmup_s=5,
    min_trajectories=1,
    min_trajectories_per_agent=0,
    max_agents=1,
    seed=3,
    tiers="loose=0.001/1000",
)


def _rules_duration(run_dir) -> float:
    return json.loads((run_dir / "manifest.json").read_text())["config"]["rules"]["duration_s"]


def test_a_short_inconclusive_level_is_extended(tmp_path):
    # N = 1 for 20 s gives ~40 requests: too few for the 95% interval of P95 TTFT to have a finite upper
    # end (that takes 72), so even a 1000 s TTFT ceiling is inconclusive; the level is re-run with its
    # window doubled until the verdict is certain (one agent's requests are correlated in time: the
    # clustered interval needs a few more than 72, hence up to 6 extensions)
    # (no trajectory count, so the window is as long as its duration: each extension doubles it)
    short = {**SHORT, "min_trajectories": 0}
    res = run_sweep(SweepConfig(out=str(tmp_path / "s"), max_extensions=6, **short), progress=False)
    row = res.levels.iloc[0]
    ext = int(row["extensions"])
    assert ext >= 1 and row["verdict_loose"] == "pass"
    assert row["p95_ttft_s_ci_high"] <= 1000 and row["n_requests"] >= 72
    runs = sorted((tmp_path / "s" / "levels").iterdir())
    assert [r.name for r in runs] == [f"n00001_e{e}" for e in range(ext + 1)]
    assert [_rules_duration(r) for r in runs] == [20.0 * 2**e for e in range(ext + 1)]
    assert not any("inconclusive" in n for n in res.summary["notes"])
    # the level's requests are those of the last (longest) run
    assert res.requests["run_id"].str.endswith(f"e{ext}").all()


def test_still_inconclusive_after_the_last_extension_uses_the_point_verdict_and_says_so(tmp_path):
    res = run_sweep(SweepConfig(out=str(tmp_path / "s"), max_extensions=0, **SHORT), progress=False)
    assert res.levels.loc[0, "extensions"] == 0 and res.levels.loc[0, "verdict_loose"] == "pass"
    assert any("stayed inconclusive" in n and "point verdict (pass)" in n for n in res.summary["notes"])


def test_requests_level_column_matches_levels_csv(tmp_path):
    res = run_sweep(
        SweepConfig(
            out=str(tmp_path / "s"),
            level_duration_s=20,
            warmup_s=5,
            min_trajectories=1,
            min_trajectories_per_agent=0,
            max_agents=16,
            tiers="a=40/10,b=400/10",
        ),
        progress=False,
    )
    by_level = res.requests.groupby("level")["concurrency"].first()
    pd.testing.assert_series_equal(
        by_level.sort_index(), res.levels.set_index("level")["concurrency"].sort_index(), check_names=False
    )


def test_an_extension_that_would_not_lengthen_the_window_is_skipped(tmp_path):
    """With a trajectory count the first window of N = 1 is longer than 20 s x 2 or x 4: the sweep goes
    straight to the first extension that lengthens it (or, past max_extensions, says so)."""
    res = run_sweep(SweepConfig(out=str(tmp_path / "s"), max_extensions=6, **SHORT), progress=False)
    runs = sorted((tmp_path / "s" / "levels").iterdir())
    durations = [_rules_duration(r) for r in runs]
    windows = [json.loads((r / "manifest.json").read_text())["window"]["window_s"] for r in runs]
    assert len(runs) >= 2 and durations[1] > windows[0]  # the re-run measures more, not the same again
    res = run_sweep(SweepConfig(out=str(tmp_path / "t"), max_extensions=1, **SHORT), progress=False)
    assert res.levels.loc[0, "extensions"] == 0
    assert any("not extended" in n for n in res.summary["notes"])
