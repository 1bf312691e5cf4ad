"""Finalizing and judging a level without holding its rows: the one-run tool-wait path, the chunked and
streaming parquet writers and the row-group reader give exactly what the whole-frame pandas code gives,
and a level kept as its judged row alone reads back exactly (memory and disk: docs/sweep.md "Big systems")."""

from __future__ import annotations

import math

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
    back = pd.read_parquet(tmp_path / "chunked.parquet")  # every column stored (no derive_on_read)
    pd.testing.assert_frame_equal(back, results.read_requests_file(tmp_path / "whole" / "requests.parquet"))
    pd.testing.assert_frame_equal(back, res.requests)


def _level(tmp_path, name: str, n: int = 16, **kw):
    rules = RunRules(
        warmup_s=10,
        duration_s=120,
        max_duration_s=120,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        drain_timeout_s=kw.pop("drain_timeout_s", 10),
    )
    return run_sim_level(default_trajectories(), n, rules, seed=2, run_id="lv", out_dir=tmp_path / name, **kw)


@pytest.mark.parametrize("chunk", [37, 1 << 16])
def test_streaming_finalize_writes_the_whole_frame_table(tmp_path, monkeypatch, chunk):
    """A simulated level's requests.parquet, written a chunk at a time from its Arrow stream, is the table
    finalize_frame makes of all its rows at once (cancelled rows at the end included: a short drain)."""
    from agentperf_kit.recorder import read_raw_rows

    _small_batches(monkeypatch)
    monkeypatch.setattr(results, "PARQUET_CHUNK_ROWS", chunk)
    res = _level(tmp_path, "lv", n=24, drain_timeout_s=0.5)
    assert res._requests is None  # not loaded: read from disk on first use
    got = results.read_requests_file(tmp_path / "lv" / "requests.parquet")
    w = res.window
    ref = results.finalize_frame(read_raw_rows(tmp_path / "lv"), w["window_start_s"], w["window_end_s"])
    assert len(got) > 3 * 37 and (got["error"] == "cancelled_at_end").any()
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    pd.testing.assert_frame_equal(res.requests, ref, check_exact=True)
    if chunk == 37:
        assert pq_row_groups(tmp_path / "lv" / "requests.parquet") > 3


def _small_batches(monkeypatch) -> None:
    """Raw rows recorded in batches of 29 (chunks of 37 rows then gather two batches, 58 rows, and a
    small level has several)."""
    import functools

    import agentperf_kit.sim.virtual as virtual
    from agentperf_kit.recorder import RunWriter

    monkeypatch.setattr(virtual, "RunWriter", functools.partial(RunWriter, flush_rows=29))


def pq_row_groups(path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_row_groups


def test_read_parquet_rows_is_the_filtered_frame(tmp_path, monkeypatch):
    """Columns and in-window rows read a row group at a time are the whole file's frame, subset."""
    from agentperf_kit.sweep import _JUDGED_COLUMNS

    _small_batches(monkeypatch)
    monkeypatch.setattr(results, "PARQUET_CHUNK_ROWS", 50)
    res = _level(tmp_path, "lv")
    path = tmp_path / "lv" / "requests.parquet"
    assert pq_row_groups(path) > 2
    full = results.read_requests_file(path)
    assert not full["in_window"].all()  # the ramp's and the drain's rows are left out below
    for cols, where in [
        (None, None),
        (None, "in_window"),
        (sorted(_JUDGED_COLUMNS), "in_window"),
        (["ttft_s", "error", "prompt_tokens"], "in_window"),
        (["agent", "nope"], None),
        (["speed_formula", "e2e_s", "agent"], None),
        (["output_speed_tps"], "in_window"),
    ]:
        got = results.read_parquet_rows(path, cols, where=where)
        ref = full if cols is None else full[[c for c in full.columns if c in cols]]
        if where:
            ref = ref[full[where].to_numpy()].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, ref, check_exact=True)
    # through the run: from disk, and from memory once loaded, alike
    on_disk = res.read_requests(_JUDGED_COLUMNS, in_window_only=True)
    assert res._requests is None
    res.requests  # noqa: B018 - loads it
    pd.testing.assert_frame_equal(res.read_requests(_JUDGED_COLUMNS, in_window_only=True), on_disk)
    lazy = results.load_run(tmp_path / "lv")
    assert lazy._requests is None and "on disk" in repr(lazy)
    pd.testing.assert_frame_equal(lazy.requests, full)


def test_a_level_row_kept_alone_reads_back_exactly(tmp_path):
    """The band's levels keep their levels.csv row (level.json): infinite and NaN values survive strict
    JSON, and the highest extension's row is the level's."""
    from agentperf_kit.sweep import LEVEL_ROW_NAME, _keep_row_only, read_level_row

    row = {
        "level": -1,
        "concurrency": 7,
        "extensions": 1,
        "p95_ttft_s": float("inf"),
        "slo1_margin_ttft": float("-inf"),
        "p25_output_speed_tps": float("nan"),
        "error_rate": 0.125,
        "verdict_slo1": "fail",
        "aborted_reason": None,
        "steady": True,
    }
    for ext in (0, 1):
        d = tmp_path / "levels" / f"n00007_e{ext}"
        d.mkdir(parents=True)
        (d / "requests.parquet").write_bytes(b"rows")
    _keep_row_only(tmp_path / "levels" / "n00007_e1", row)
    assert not list(tmp_path.rglob("requests.parquet"))  # the extensions' rows go too
    assert (tmp_path / "levels" / "n00007_e1" / LEVEL_ROW_NAME).exists()
    d, back = read_level_row(tmp_path, 7)
    assert d.name == "n00007_e1" and back.keys() == row.keys()
    assert math.isnan(back.pop("p25_output_speed_tps")) and math.isnan(row.pop("p25_output_speed_tps"))
    assert back == row
    assert read_level_row(tmp_path, 8) is None


def test_judging_the_window_columns_equals_judging_the_whole_table(tmp_path):
    """The sweep judges a level from the steady window's rows of the judged columns only: the verdict
    tables (both failure policies, with and without intervals) and the levels.csv statistics are exactly
    those of the whole table."""
    from agentperf_kit.metrics import level_stats
    from agentperf_kit.slo import evaluate_level, get_tier_preset
    from agentperf_kit.sweep import _JUDGED_COLUMNS

    res = _level(tmp_path, "lv", n=24, drain_timeout_s=0.5)
    full = res.requests
    judged = results.load_run(tmp_path / "lv").read_requests(_JUDGED_COLUMNS, in_window_only=True)
    assert len(judged) < len(full) and judged["in_window"].all()
    w = res.window
    bounds = (w["window_start_s"], w["window_end_s"])
    preset = get_tier_preset("aa-dsv4pro")
    for policy in ("miss", "exclude"):
        for confidence in (0.95, None):
            kw = dict(failure_policy=policy, window=bounds, confidence=confidence)
            pd.testing.assert_frame_equal(
                evaluate_level(judged, preset, **kw), evaluate_level(full, preset, **kw), check_exact=True
            )
    kw = dict(window_start_s=bounds[0], window_end_s=bounds[1], accelerators=8)
    a, b = level_stats(judged, **kw), level_stats(full, **kw)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a), (a, b)
