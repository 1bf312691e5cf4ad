"""Task-level metrics: trajectory instances, completion time, slowdown, tasks per hour (hand-made rows and a
small simulated sweep)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from agentperf_kit.cli import main
from agentperf_kit.tasks import (
    TASK_LEVEL_COLUMNS,
    _with_baseline,
    n1_baseline,
    task_level_stats,
    task_table,
)


def _rows(spec):
    """spec: (agent, trajectory, phase_id, turn, send, end, ok, tool_delay) tuples."""
    cols = ["agent", "trajectory_id", "phase_id", "turn", "t_send_s", "t_end_s", "ok", "tool_delay_s"]
    df = pd.DataFrame(spec, columns=cols)
    df["level"] = 0
    df["concurrency"] = 2
    return df


def test_tasks_are_cut_at_turn_zero_and_timed_from_first_send_to_last_end():
    df = _rows(
        [
            # agent 0 starts mid-trajectory (turn 1 of X): a task already in progress
            (0, "X", 0, 1, 0.0, 2.0, True, 1.0),
            (0, "X", 0, 2, 3.0, 4.0, True, 5.0),
            # then Y, 2 turns, with a 3 s tool wait between them: 5.0 -> 12.0
            (0, "Y", 1, 0, 5.0, 8.0, True, 3.0),
            (0, "Y", 1, 1, 11.0, 12.0, True, 7.0),
            # then X from the start, cut after turn 1 (level ended): incomplete
            (0, "X", 2, 0, 19.0, 20.0, True, 1.0),
            (0, "X", 2, 1, 21.0, 22.0, True, 1.0),
            # agent 1: X complete, one failed request, over two phases
            (1, "X", 3, 0, 1.0, 2.0, True, 0.5),
            (1, "X", 4, 1, 2.5, 4.0, False, 0.5),
            (1, "X", 4, 2, 4.5, 9.0, True, 2.0),
        ]
    )
    t = task_table(df, {"X": 3, "Y": 2}, window_start_s=6.0, window_end_s=15.0)
    t = t.set_index(["agent", "first_phase_id"])
    assert len(t) == 4
    head = t.loc[(0, 0)]  # started mid-trajectory: finished (counts in the rate), not complete (not timed)
    assert head["finished"] and not head["complete"] and head["n_requests"] == 2
    y = t.loc[(0, 1)]
    assert y["completion_s"] == 7.0 and y["tool_wait_s"] == 3.0 and y["complete"] and y["ok"]
    assert y["in_window"]  # ended at 12 in [6, 15]
    cut = t.loc[(0, 2)]
    assert not cut["finished"] and not cut["complete"] and not cut["in_window"]
    x1 = t.loc[(1, 3)]
    assert x1["completion_s"] == 8.0 and x1["complete"] and not x1["ok"] and x1["n_requests"] == 3
    assert x1["tool_wait_s"] == 1.0  # the waits after turns 0 and 1, not after the last


def test_level_stats_by_hand():
    df = _rows(
        [
            (0, "A", 0, 0, 0.0, 10.0, True, 0.0),
            (0, "A", 1, 0, 10.0, 30.0, True, 0.0),
            (0, "A", 2, 0, 30.0, 40.0, False, 0.0),
            (1, "B", 3, 0, 0.0, 20.0, True, 0.0),
        ]
    )
    t = task_table(df, {"A": 1, "B": 1}, window_start_s=0.0, window_end_s=3600.0)
    t = _with_baseline(t, pd.Series({"A": 10.0}), "sweep_n1")
    # slowdowns: A 1.0, A 2.0, A failed (+inf), B no baseline (NaN)
    assert sorted(t["slowdown"].tolist(), key=lambda v: (math.isnan(v), v))[:3] == [1.0, 2.0, math.inf]
    s = task_level_stats(t, window_s=1800.0, accelerators=2, power_w=4000.0, power_scope="declared")
    assert s["n_tasks"] == 3 and s["n_tasks_failed"] == 1 and s["n_tasks_without_baseline"] == 1
    assert s["p50_slowdown"] == 2.0 and s["p95_slowdown"] == math.inf
    assert s["tasks_per_hour"] == pytest.approx(6.0)  # 3 tasks in half an hour
    assert s["tasks_per_hour_per_accelerator"] == pytest.approx(3.0)
    assert s["tasks_per_hour_per_mw"] == pytest.approx(6.0 / 0.004)
    assert s["slowdown_baseline"] == "sweep_n1"


def test_n1_baseline_is_the_median_of_complete_ok_tasks_at_n1():
    t = pd.DataFrame(
        {
            "concurrency": [1, 1, 1, 1, 2],
            "trajectory_id": ["A", "A", "A", "B", "A"],
            "complete": [True, True, True, False, True],
            "ok": [True, True, False, True, True],
            "completion_s": [10.0, 20.0, 99.0, 5.0, 1.0],
        }
    )
    assert n1_baseline(t).to_dict() == {"A": 15.0}


def test_sweep_writes_task_tables_and_slowdown_is_one_unloaded(small_sweep, capsys):
    d = small_sweep
    per = pd.read_csv(d / "tasks.csv")
    assert list(per.columns) == list(TASK_LEVEL_COLUMNS)
    tasks = pd.read_parquet(d / "tasks.parquet")
    assert set(tasks["baseline_source"]) == {"sim_unloaded"}
    at1 = per[per["concurrency"] == 1].iloc[0]
    # the unloaded replay and the N = 1 level are the same system with one agent
    assert at1["p50_slowdown"] == pytest.approx(1.0, abs=1e-6)
    top = per.iloc[-1]
    assert top["p50_slowdown"] > 1.2 and top["tasks_per_hour"] > at1["tasks_per_hour"]
    assert top["tasks_per_hour_per_mw"] == pytest.approx(top["tasks_per_hour"] / (top["power_w"] / 1e6))
    assert main(["report", str(d)]) == 0
    out = capsys.readouterr().out
    assert "task completion" in out and "sim_unloaded" in out
    assert "tasks_per_hour_per_mw" in (d / "report.html").read_text()


def test_sweep_n1_baseline_on_a_copy(small_sweep, tmp_path):
    import shutil

    from agentperf_kit.tasks import write_sweep_tasks

    d = tmp_path / "copy"
    shutil.copytree(small_sweep, d)
    tasks, per = write_sweep_tasks(d, baseline="sweep_n1")
    assert set(tasks["baseline_source"]) == {"sweep_n1"}
    at1 = per[per["concurrency"] == 1].iloc[0]
    assert at1["p50_slowdown"] == pytest.approx(1.0) and at1["slowdown_baseline"] == "sweep_n1"
    # N = 1 ran only some of the trajectories: the others have no baseline at higher N, and say so
    assert per["n_tasks_without_baseline"].iloc[-1] > 0
    with pytest.raises(ValueError, match="baseline must be"):
        write_sweep_tasks(d, baseline="n2")


def test_big_levels_are_tabled_by_ranges_of_agents_with_the_same_result(small_sweep, tmp_path, monkeypatch):
    """write_sweep_tasks tables a level of many requests by ranges of its agents (memory: a part of the
    level); the task tables are exactly those of one table per level."""
    import shutil

    import agentperf_kit.tasks as tasks_mod

    d = tmp_path / "copy"
    shutil.copytree(small_sweep, d)
    whole, per_whole = tasks_mod.write_sweep_tasks(d, baseline="sweep_n1")
    monkeypatch.setattr(tasks_mod, "TASK_PART_REQUESTS", 40)  # every level of more than 40 requests
    levels = pd.read_csv(d / "levels.csv")
    assert (levels["n_requests"] > 3 * 40).sum() >= 2
    parts, per_parts = tasks_mod.write_sweep_tasks(d, baseline="sweep_n1")
    pd.testing.assert_frame_equal(parts, whole, check_exact=True)
    pd.testing.assert_frame_equal(per_parts, per_whole, check_exact=True)
