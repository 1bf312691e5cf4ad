"""Finalizing a level without copying its rows: the one-run tool-wait path and the chunked parquet writer
give exactly what the whole-frame pandas code gives (memory figures: docs/sweep.md "Big systems")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import agentperf_kit.results as results
from agentperf_kit.agents import RunRules, add_run_columns
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import default_trajectories


def _frame(rng: np.random.Generator, n: int, run_ids: list[str]) -> pd.DataFrame:
    t_send = rng.choice([0.0, 1.0, 2.5, 3.0, np.nan], size=n)  # ties and unsent rows
    return pd.DataFrame(
        {
            "run_id": pd.array(rng.choice(run_ids, size=n), dtype="string"),
            "level": np.zeros(n, dtype=np.int64),
            "agent": rng.integers(0, 7, size=n),
            "t_send_s": t_send,
            "t_end_s": t_send + rng.uniform(0.1, 2.0, size=n),
        }
    )


@pytest.mark.parametrize("seed", range(5))
def test_one_run_tool_wait_equals_the_group_by(seed):
    rng = np.random.default_rng(seed)
    one = _frame(rng, 400, ["r"])
    got = add_run_columns(one, 1.0, 3.0)
    # the same rows under two run ids, each run's rows alone: the group-by path
    two = pd.concat([one, one.assign(run_id=pd.array(["s"] * len(one), dtype="string"))], ignore_index=True)
    ref = add_run_columns(two, 1.0, 3.0).iloc[: len(one)]
    pd.testing.assert_series_equal(got["tool_wait_s"], ref["tool_wait_s"], check_names=False)
    pd.testing.assert_series_equal(got["in_window"], ref["in_window"], check_names=False)
    assert "tool_wait_s" not in one  # the public function still returns a copy


def test_chunked_parquet_equals_the_whole_frame(tmp_path, monkeypatch):
    rules = RunRules(
        warmup_s=10,
        duration_s=120,
        max_duration_s=120,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        drain_timeout_s=10,
    )
    res = run_sim_level(default_trajectories(), 16, rules, seed=2, out_dir=tmp_path / "whole")
    monkeypatch.setattr(results, "PARQUET_CHUNK_ROWS", 37)
    assert len(res.requests) > 3 * 37
    results.write_parquet_chunked(res.requests, tmp_path / "chunked.parquet")
    back = pd.read_parquet(tmp_path / "chunked.parquet")
    pd.testing.assert_frame_equal(back, pd.read_parquet(tmp_path / "whole" / "requests.parquet"))
    pd.testing.assert_frame_equal(back, res.requests)
