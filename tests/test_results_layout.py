"""``requests.parquet`` does not store the metrics that are functions of a row's own columns (ttft_s,
ttfo_s, e2e_s, output_speed_tps, speed_unmeasurable, speed_formula): every reader computes them, so
users get the columns and values the table was finalized with; files written before (every column
stored) read as they did. A simulated level's file also leaves out the :data:`ALIAS_CANDIDATES` equal to
their column in every row; a live run's file stores every base column, whatever its data."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import agentperf_kit.results as results
from agentperf_kit.agents import RunRules
from agentperf_kit.metrics import add_request_metrics
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.schema import RAW_COLUMNS
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import default_trajectories
from agentperf_kit.trajectories.model import Trajectory, Turn
from tests.sse_servers import SSEServer

#: a run directory written by the code before this layout (main at 50a4f44: every column stored)
OLD_RUN = Path(__file__).parent / "fixtures" / "run_before_derive_on_read"

RULES = RunRules(
    warmup_s=10,
    duration_s=120,
    max_duration_s=120,
    min_trajectories=0,
    min_trajectories_per_agent=0,
    drain_timeout_s=0.5,
)


def _level(out_dir=None, rules=RULES):
    return run_sim_level(default_trajectories(), 24, rules, seed=4, run_id="lay", out_dir=out_dir)


def _aliased(path) -> dict[str, list[str]]:
    """The file's aliases as its layout metadata (:data:`results.LAYOUT_KEY`) lists them."""
    return json.loads(pq.read_schema(path).metadata[results.LAYOUT_KEY])["aliases"]


def _equal_in_every_row(df: pd.DataFrame) -> set[str]:
    """The alias candidates whose values equal their column's in every row of ``df``, bit for bit."""
    same = set()
    for col, ref in results.ALIAS_CANDIDATES.items():
        a, b = df[col], df[ref]
        if a.dtype.kind == "f":
            ok = np.array_equal(a.to_numpy().view(np.int64), b.to_numpy(dtype=np.float64).view(np.int64))
        else:
            ok = not a.isna().any() and (a.to_numpy(dtype=np.int64) == b.to_numpy(dtype=np.int64)).all()
        if ok:
            same.add(col)
    return same


def test_a_simulated_level_stores_no_derived_metric_and_reads_back_the_finalized_table(tmp_path, monkeypatch):
    import functools

    import agentperf_kit.sim.virtual as virtual
    from agentperf_kit.recorder import RunWriter

    # several row groups: raw batches of 29 rows, written 40 rows at a time
    monkeypatch.setattr(virtual, "RunWriter", functools.partial(RunWriter, flush_rows=29))
    monkeypatch.setattr(results, "PARQUET_CHUNK_ROWS", 40)
    ref = _level().requests  # in memory: finalize_frame of every row
    _level(tmp_path / "lv")
    path = tmp_path / "lv" / "requests.parquet"
    stored = pq.read_schema(path).names
    assert not set(results.DERIVED_ON_READ) & set(stored)
    assert "t_scheduled_s" not in stored  # a simulated request is sent when scheduled: t_send_s's copy
    # cancelled rows end before their last token would: those candidates differ somewhere and are stored
    aliased = set(_aliased(path))
    assert aliased == _equal_in_every_row(ref) and aliased < set(results.ALIAS_CANDIDATES)
    assert set(results.ALIAS_CANDIDATES) - aliased <= set(stored)
    assert pq.ParquetFile(path).metadata.num_row_groups > 3
    assert len(ref) > 200 and (ref["error"] == "cancelled_at_end").any()
    for got in (
        results.load_run(tmp_path / "lv").requests,
        results.read_requests_file(path),
        results.read_parquet_rows(path),
    ):
        pd.testing.assert_frame_equal(got, ref, check_exact=True)
    # what the file stores, written the old way (every column): the same table, more bytes
    old = tmp_path / "old.parquet"
    results.write_parquet_chunked(ref, old)
    assert set(results.DERIVED_ON_READ) <= set(pq.read_schema(old).names)
    pd.testing.assert_frame_equal(results.read_requests_file(old), ref, check_exact=True)
    assert path.stat().st_size < 0.85 * old.stat().st_size
    # subsets, window rows and agent ranges, derived and stored columns mixed
    for cols, kw in [
        (["ttft_s", "agent"], {}),
        (["output_speed_tps", "speed_formula", "speed_unmeasurable"], {"where": "in_window"}),
        (["e2e_s", "ttfo_s", "in_window"], {"agents": (3, 11)}),
        (None, {"where": "in_window", "agents": (0, 5)}),
    ]:
        got = results.read_parquet_rows(path, cols, **kw)
        want = ref if cols is None else ref[[c for c in ref.columns if c in cols]]
        keep = np.ones(len(ref), dtype=bool)
        if "where" in kw:
            keep &= ref[kw["where"]].to_numpy()
        if "agents" in kw:
            lo, hi = kw["agents"]
            keep &= ((ref["agent"] >= lo) & (ref["agent"] < hi)).to_numpy()
        pd.testing.assert_frame_equal(got, want[keep].reset_index(drop=True), check_exact=True)
    with pytest.raises(ValueError, match="where='ttft_s'"):
        results.read_parquet_rows(path, where="ttft_s")


def test_a_run_written_before_this_layout_reads_as_it_did(tmp_path):
    """The fixture (main at 50a4f44) stores every column: it reads the same way through every reader, and
    rewritten in the new layout it reads back identically."""
    path = OLD_RUN / "requests.parquet"
    assert set(results.DERIVED_ON_READ) <= set(pq.read_schema(path).names)
    full = pd.read_parquet(path)
    pd.testing.assert_frame_equal(results.load_run(OLD_RUN).requests, full, check_exact=True)
    pd.testing.assert_frame_equal(results.read_requests_file(path), full, check_exact=True)
    cols = ["error", "ttft_s", "output_speed_tps"]  # the table's order
    pd.testing.assert_frame_equal(
        results.load_run(OLD_RUN).read_requests(cols, in_window_only=True),
        full.loc[full["in_window"], cols].reset_index(drop=True),
        check_exact=True,
    )
    new = tmp_path / "new.parquet"
    results.write_parquet_chunked(full, new, derive_on_read=True)
    assert not set(results.DERIVED_ON_READ) & set(pq.read_schema(new).names)
    pd.testing.assert_frame_equal(results.read_requests_file(new), full, check_exact=True)


def test_live_rows_of_every_kind_read_back_exactly(tmp_path):
    """A live run's rows (``finalize_run(raw=...)``): failures, cancelled rows, usage mismatches, unknown
    first-chunk counts, invisible and single-chunk outputs; the derived metrics computed on read are
    those finalize computed."""
    manifest = json.loads((OLD_RUN / "manifest.json").read_text())
    full = pd.read_parquet(OLD_RUN / "requests.parquet")
    raw = full.drop(columns=[*results.DERIVED_ON_READ, "in_window", "tool_wait_s"])
    n = len(raw)
    assert n >= 12
    raw.loc[0, ["ok", "error", "t_first_s", "t_first_answer_s", "t_last_s"]] = [False, "stream_cut"] + [
        np.nan
    ] * 3
    raw.loc[1, ["usage_mismatch", "note"]] = [True, "usage: 10x the chunks"]
    raw.loc[2, "first_chunk_tokens"] = pd.NA
    raw.loc[3, "n_chunks"] = 0
    raw.loc[4, "output_tokens"] = pd.NA
    raw.loc[5, "output_tokens"] = 1
    raw.loc[6, "t_last_s"] = raw.loc[6, "t_first_s"]
    raw.loc[7, ["ok", "error", "http_status"]] = [False, "http_error", 500]
    raw.loc[8, ["ok", "error"]] = [False, "cancelled_at_end"]
    raw.loc[9, "t_first_answer_s"] = np.nan
    raw.loc[10, "t_scheduled_s"] = raw.loc[10, "t_send_s"] - 0.001  # client lag: not t_send_s's copy
    out = tmp_path / "live"
    out.mkdir()
    res = results.finalize_run(out, manifest, raw=raw)
    w = manifest["window"]
    ref = results.finalize_frame(raw, w["window_start_s"], w["window_end_s"])
    stored = pq.read_schema(out / "requests.parquet").names
    assert not set(results.DERIVED_ON_READ) & set(stored)
    assert {"t_scheduled_s", "t_last_s", "output_tokens", "n_chunks"} <= set(stored)  # differ somewhere
    pd.testing.assert_frame_equal(res.requests, ref, check_exact=True)
    pd.testing.assert_frame_equal(results.load_run(out).requests, ref, check_exact=True)
    assert ref["speed_formula"].nunique() == 3 and ref["speed_unmeasurable"].any()


def test_an_empty_table_reads_with_every_column(tmp_path):
    manifest = json.loads((OLD_RUN / "manifest.json").read_text())
    full = pd.read_parquet(OLD_RUN / "requests.parquet")
    raw = full.drop(columns=[*results.DERIVED_ON_READ, "in_window", "tool_wait_s"]).iloc[:0]
    out = tmp_path / "empty"
    out.mkdir()
    results.finalize_run(out, manifest, raw=raw)
    got = results.load_run(out).requests
    assert list(got.columns) == list(full.columns) and len(got) == 0
    shutil.rmtree(out)


def test_columns_equal_to_another_are_stored_once_and_read_back_with_their_dtype(tmp_path):
    """Rows where the counts equal their targets and the last token is the end (no cancelled row): the
    file stores one column of each pair; the copies read back with their own dtype (Int64 from int64)."""
    full = pd.read_parquet(OLD_RUN / "requests.parquet")
    done = full[full["error"] == ""].reset_index(drop=True)
    assert len(done) > 20 and done["prompt_tokens"].dtype == "Int64"
    path = tmp_path / "done.parquet"
    results.write_parquet_chunked(done, path, derive_on_read=True)  # a live run's table: every column
    assert set(results.ALIAS_CANDIDATES) <= set(pq.read_schema(path).names) and _aliased(path) == {}
    pd.testing.assert_frame_equal(results.read_requests_file(path), done, check_exact=True)
    results.write_parquet_chunked(done, path, derive_on_read=True, alias=True)  # a simulated level's
    stored = set(pq.read_schema(path).names)
    assert not set(results.ALIAS_CANDIDATES) & stored
    pd.testing.assert_frame_equal(results.read_requests_file(path), done, check_exact=True)
    got = results.read_parquet_rows(path, ["n_chunks", "prompt_tokens", "t_last_s"], where="in_window")
    want = done.loc[done["in_window"], ["t_last_s", "prompt_tokens", "n_chunks"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # one float differing in its last bit is no copy
    done.loc[3, "t_last_s"] = np.nextafter(done.loc[3, "t_end_s"], np.inf)
    add_request_metrics(done)  # the derived metrics of the changed row, as finalize computes them
    results.write_parquet_chunked(done, path, derive_on_read=True, alias=True)
    assert "t_last_s" in set(pq.read_schema(path).names) and "t_last_s" not in _aliased(path)
    pd.testing.assert_frame_equal(results.read_requests_file(path), done, check_exact=True)


def test_a_simulated_level_without_cancelled_rows_stores_none_of_the_alias_candidates(tmp_path):
    """A level that drains every request (no cancelled row): each candidate equals its column in every
    row, the file stores none of them, its layout lists exactly those, and every reader gives back the
    finalized table bit for bit (the copies with their own dtype)."""
    rules = dataclasses.replace(RULES, max_duration_s=600, drain_timeout_s=600)
    ref = _level(rules=rules).requests
    assert len(ref) > 200 and (ref["error"] == "").all()
    _level(tmp_path / "lv", rules=rules)
    path = tmp_path / "lv" / "requests.parquet"
    assert _aliased(path) == {c: [r, str(ref[c].dtype)] for c, r in results.ALIAS_CANDIDATES.items()}
    assert not set(results.ALIAS_CANDIDATES) & set(pq.read_schema(path).names)
    for got in (results.load_run(tmp_path / "lv").requests, results.read_requests_file(path)):
        pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_a_live_level_stores_every_base_column_even_where_one_equals_another(tmp_path):
    """A live level whose requests all got their target counts, one chunk per token (completions API: the
    server counts the prompt's token ids): ``prompt_tokens``, ``output_tokens`` and ``n_chunks`` equal
    their targets in every row, and the file still stores them: files of live runs have one schema."""
    rules = RunRules(
        warmup_s=0.2,
        duration_s=1.0,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.1,
        drain_timeout_s=3,
        random_start_turn=False,
    )
    turns = [Turn(0, 50 * k, 50, 8, tool_delay_s=0.05) for k in range(4)]
    trajs = [Trajectory(f"t{i}", turns) for i in range(3)]

    async def go():
        server = await SSEServer(dialect="vllm", ttft_s=0.02, itl_s=0.005).start()
        try:
            ep = Endpoint(server.base_url, "test-model", api="completions", request_timeout_s=5)
            return await run_live(ep, trajs, 3, rules, out_dir=tmp_path / "live", progress=False)
        finally:
            await server.stop()

    res = asyncio.run(go())
    df = res.requests
    assert len(df) >= 6 and df["ok"].all(), df["error"].tolist()
    assert {"prompt_tokens", "output_tokens", "n_chunks"} <= _equal_in_every_row(df)
    path = tmp_path / "live" / "requests.parquet"
    stored = pq.read_schema(path).names
    assert set(RAW_COLUMNS) <= set(stored) and _aliased(path) == {}
    assert not set(results.DERIVED_ON_READ) & set(stored)
    pd.testing.assert_frame_equal(results.read_requests_file(path), df, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(path)[stored], df[stored], check_exact=True)
