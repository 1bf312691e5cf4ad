"""Opt-in ``chunks.parquet``: every visible chunk's time and token count, joinable to requests.parquet."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.cli import build_parser
from agentperf_kit.recorder import ChunkWriter
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.results import load_chunks
from agentperf_kit.trajectories.model import Trajectory, Turn
from tests.sse_servers import SSEServer

RULES = RunRules(
    warmup_s=0.2,
    duration_s=1.0,
    min_trajectories=0,
    min_trajectories_per_agent=0,
    ramp_s=0.1,
    drain_timeout_s=3,
    random_start_turn=False,
)
KEYS = ["run_id", "agent", "phase_id", "turn"]


def _trajs(n=3, turns=3, out=30):
    turn = Turn(0, 0, 40, out, tool_delay_s=0.05)
    return [Trajectory(f"t{i}", [turn] * turns) for i in range(n)]


def _run(tmp_path, record=True, **server_kw):
    async def go():
        server = await SSEServer(**server_kw).start()
        try:
            ep = Endpoint(server.base_url, "test-model", stall_timeout_s=1, request_timeout_s=10)
            kw = {"out_dir": tmp_path, "progress": False, "record_chunks": record}
            return await run_live(ep, _trajs(), 2, RULES, **kw)
        finally:
            await server.stop()

    return asyncio.run(go())


@pytest.mark.parametrize(("dialect", "itl"), [("vllm", 0.02), ("sglang", 0.02), ("llamacpp", 0.015)])
def test_chunk_times_give_the_servers_inter_token_latency(tmp_path, dialect, itl):
    res = _run(tmp_path, dialect=dialect, ttft_s=0.06, itl_s=itl)
    assert (tmp_path / "chunks.parquet").exists() and res.manifest["chunks"]["rows"] > 0
    ch = load_chunks(tmp_path)
    assert list(ch.columns) == ["run_id", "level", "agent", "phase_id", "turn", "chunk", "t_s", "tokens"]
    req = res.requests[res.requests.ok]
    assert len(req) >= 4
    per = ch.groupby(KEYS).agg(n=("chunk", "size"), first=("t_s", "min"), last=("t_s", "max"))
    joined = req.set_index(KEYS).join(per, how="left")
    # every ok request has exactly its visible chunks, first and last at t_first_s / t_last_s
    assert (joined["n"] == joined["n_chunks"]).all()
    assert np.allclose(joined["first"], joined["t_first_s"])
    assert np.allclose(joined["last"], joined["t_last_s"])
    assert (ch.groupby(KEYS).chunk.apply(lambda c: list(c) == list(range(len(c))))).all()
    assert (ch.tokens == 1).all()
    # inter-token latency from the chunk times: the server's set interval (one chunk every itl)
    itls = ch.sort_values([*KEYS, "chunk"]).groupby(KEYS).t_s.diff().dropna()
    assert itls.median() == pytest.approx(itl, abs=0.004)
    assert itls.quantile(0.9) < itl + 0.012
    assert (itls >= 0).all()


def test_chunks_are_off_by_default(tmp_path):
    res = _run(tmp_path, record=False, ttft_s=0.01, itl_s=0.001)
    assert not list(tmp_path.glob("chunks*"))
    assert "chunks" not in res.manifest
    with pytest.raises(FileNotFoundError, match="record_chunks"):
        load_chunks(tmp_path)


def test_chunk_rows_survive_an_interrupted_run(tmp_path):
    w = ChunkWriter(tmp_path, origin_ns=1_000_000_000, run_id="r", level=2)
    w.add(0, 7, 3, [(1_500_000_000, 1), (1_520_000_000, 1)])
    w.flush()  # on disk; the writer is never closed, as after a kill
    w.add(1, 8, 0, [(2_000_000_000, 1)])  # buffered only: lost
    df = load_chunks(tmp_path)
    assert df.t_s.tolist() == [0.5, 0.52] and df.phase_id.tolist() == [7, 7] and (df.level == 2).all()
    w.close()  # after the check, so the test leaves no open file behind


def test_cli_has_the_flag():
    args = build_parser().parse_args(
        ["run", "--target", "http://x/v1", "--model", "m", "-n", "1", "--out", "d", "--record-chunks"]
    )
    assert args.record_chunks is True


def test_a_cancelled_request_row_agrees_with_its_chunk_rows(tmp_path):
    """Streams still running when the drain ends are cut: their rows say what arrived (visible chunks,
    first and last chunk times), the same as their chunk rows."""
    rules = RunRules(
        warmup_s=0.1,
        duration_s=0.5,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.05,
        drain_timeout_s=0.2,
        random_start_turn=False,
    )

    async def go():
        server = await SSEServer(ttft_s=0.02, itl_s=0.02).start()
        try:
            ep = Endpoint(server.base_url, "test-model", request_timeout_s=30)
            kw = {"out_dir": tmp_path, "progress": False, "record_chunks": True}
            return await run_live(ep, _trajs(out=400), 2, rules, **kw)
        finally:
            await server.stop()

    res = asyncio.run(go())
    cut = res.requests[res.requests.error == "cancelled_at_end"]
    assert len(cut) == 2
    per = (
        load_chunks(tmp_path)
        .groupby(KEYS)
        .agg(n=("chunk", "size"), first=("t_s", "min"), last=("t_s", "max"))
    )
    joined = cut.set_index(KEYS).join(per, how="left")
    assert (joined["n"] == joined["n_chunks"]).all() and (joined["n_chunks"] > 10).all()
    assert np.allclose(joined["first"], joined["t_first_s"]) and np.allclose(
        joined["last"], joined["t_last_s"]
    )
