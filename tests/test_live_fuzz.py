"""Nothing a server sends can end a run: fuzzed SSE bodies through the real HTTP path.

Hypothesis builds response bodies (structured JSON events with the keys a stream uses, any value types,
ints beyond int64, non-list ``choices``...; and raw random bytes); a loopback server sends each as a 200
``text/event-stream`` body. For every body: ``send_request`` returns (never raises) with an error class
from the documented set, the fast scanner and full JSON decoding give the same outcome, and the row
writes and reads back. A live run over a fixed set of nasty bodies keeps one row per request the
server saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from dataclasses import asdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentperf_kit.agents import AgentFleet, RequestPlan, RunRules
from agentperf_kit.client.http import Endpoint, open_session, send_request
from agentperf_kit.recorder import RunWriter, read_raw_rows
from agentperf_kit.replay import run_live
from agentperf_kit.trajectories.model import Trajectory, Turn
from tests.sse_servers import SSEServer, comparable

CLASSES = {
    "",
    "stream_cut",
    "malformed_json",
    "stream_error",
    "empty_response",
    "client_error",
    "first_token_timeout",
    "stall_timeout",
}
KEYS = [
    "choices",
    "delta",
    "content",
    "text",
    "reasoning_content",
    "reasoning",
    "tool_calls",
    "finish_reason",
    "usage",
    "completion_tokens",
    "prompt_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "error",
    "message",
    "object",
    "index",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["error", "length", "stop", ""])
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=14,
)
_chunk = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries({"delta": _json, "finish_reason": _json, "text": _json}), max_size=2
        )
    },
    optional={"usage": _json, "error": _json, "object": _json},
)
_event = (
    _chunk.map(lambda o: json.dumps(o).encode())
    | _json.map(lambda o: json.dumps(o).encode())
    | st.sampled_from([b"[DONE]", b"null", b"", b'{"choices":[{"delta":{"content":"tok"}}]}'])
    | st.binary(max_size=30)
)
_body = st.lists(_event, min_size=1, max_size=8).map(
    lambda evs: b"".join(b"data: " + e + b"\n\n" for e in evs)
)
_raw = st.binary(max_size=300)


def _plan() -> RequestPlan:
    return RequestPlan(0, 0, "t", 0, Turn(0, 0, 20, 8), 0, "7" * 32, True, 0.0)


class _Harness:
    """One loop, one server, one session for all examples; the server sends ``self.body``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.body = b""
        self.server = SSEServer(script=lambda i, body: self.body)
        self.loop.run_until_complete(self.server.start())
        self.session_cm = open_session(8)
        self.session = self.loop.run_until_complete(self.session_cm.__aenter__())
        self.ep = Endpoint(
            self.server.base_url, "m", first_token_timeout_s=2, stall_timeout_s=2, request_timeout_s=5
        )
        self.tmp = tempfile.mkdtemp()
        self.writer = RunWriter(self.tmp, flush_rows=1)
        self.fleet = AgentFleet(
            [Trajectory("t", [Turn(0, 0, 20, 8)])], 1, RunRules(), seed=0, sink=self.writer
        )
        self.rows = 0

    def check(self, body: bytes) -> None:
        self.body = body
        seen = self.server.requests
        plan = _plan()
        req = self.ep.body(plan)
        fast = self.loop.run_until_complete(send_request(self.session, self.ep, plan, req, 0, fast=True))
        full = self.loop.run_until_complete(send_request(self.session, self.ep, plan, req, 0, fast=False))
        assert self.server.requests == seen + 2
        for out in (fast, full):
            assert out.error in CLASSES, (out.error, out.error_detail)
            assert math.isfinite(out.t_end_s)
            assert out.error != "client_error", out.error_detail  # no unexpected exception anywhere
        times = ("t_send_s", "t_end_s", "t_first_s", "t_first_answer_s", "t_last_s")
        a, b = asdict(fast), asdict(full)
        for k in times:
            assert math.isnan(a.pop(k)) == math.isnan(b.pop(k)), k
        assert comparable(a) == comparable(b)  # the fast scanner and full JSON decoding agree
        self.writer(self.fleet._row(plan, fast))
        self.rows += 1

    def close(self) -> None:
        self.loop.run_until_complete(self.session_cm.__aexit__(None, None, None))
        self.loop.run_until_complete(self.server.stop())
        self.loop.close()
        self.writer.close()
        assert len(read_raw_rows(self.tmp)) == self.rows


@pytest.fixture(scope="module")
def harness():
    h = _Harness()
    yield h
    h.close()


_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


@_SETTINGS
@given(body=_body)
def test_fuzzed_json_events_never_end_a_run(harness, body):
    harness.check(body)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)
@given(body=_raw)
def test_fuzzed_bytes_never_end_a_run(harness, body):
    harness.check(body)


def _tok(text="tok", **extra):
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}, **extra}]}).encode()


NASTY = [
    b'{"choices": 5}',
    b'{"error": {"message": 42}}',
    b'{"error": {"message": {"deep": [1, 2]}}}',
    b"[" * 100_000 + b"]" * 100_000,  # json.loads: RecursionError
    b'{"choices": [' * 50_000,
    _tok(finish_reason={"an": "object"}),
    json.dumps({"choices": [], "usage": {"completion_tokens": 2**70, "prompt_tokens": "many"}}).encode(),
    json.dumps({"choices": [], "usage": {"completion_tokens": -5, "prompt_tokens_details": [1]}}).encode(),
    b"\xff\xfe\x00 not utf-8 \x80",
    b'{"choices": [{"delta": {"content": "\\ud800 lone surrogate"}}]}',
    b'{"choices": [null, 1, "x", {"delta": 5}, {"text": {"a": 1}}]}',
]


def test_a_live_run_over_nasty_bodies_keeps_one_row_per_request():
    def script(i: int, body: dict) -> bytes:
        nasty = NASTY[i % len(NASTY)]
        return (
            b"data: "
            + _tok()
            + b"\n\ndata: "
            + nasty
            + b"\n\ndata: "
            + _tok(finish_reason="length")
            + b"\n\ndata: [DONE]\n\n"
        )

    trajs = [Trajectory(f"t{i}", [Turn(0, 0, 30, 8, tool_delay_s=0.01) for _ in range(3)]) for i in range(4)]
    rules = RunRules(
        warmup_s=0.1,
        duration_s=1.5,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.05,
        drain_timeout_s=3,
        random_start_turn=False,
    )

    async def go(tmp):
        server = await SSEServer(script=script).start()
        try:
            ep = Endpoint(
                server.base_url, "m", stall_timeout_s=1, first_token_timeout_s=1, request_timeout_s=5
            )
            return await run_live(ep, trajs, 3, rules, out_dir=tmp, progress=False), server
        finally:
            await server.stop()

    res, server = asyncio.run(go(tempfile.mkdtemp()))
    df = res.requests
    assert len(df) == len(server.bodies) >= len(NASTY)
    assert "client_error" not in set(df.error)
    assert {"malformed_json", "stream_error", ""} <= set(df.error)
    assert df.usage_mismatch.any()  # the out-of-range and negative usage counts


@pytest.mark.parametrize(
    "reply",
    [b"[" * 100_000 + b"]" * 100_000, b'{"data": 5, "usage": [1]}', b"\xff\xfe", b'"just a string"'],
)
def test_odd_answers_to_the_set_up_requests_do_not_end_a_run(reply):
    """``/v1/models`` and the chat prompt-size probes answered with deep nesting, wrong shapes, bytes
    that are not UTF-8: the run notes it (no models, no calibration) and measures as usual."""
    from aiohttp import web

    class OddServer(SSEServer):
        async def _models(self, request):
            return web.Response(body=reply, content_type="application/json")

        def _usage_only(self, body):
            return web.Response(body=reply, content_type="application/json")

    trajs = [Trajectory(f"t{i}", [Turn(0, 0, 30, 8, tool_delay_s=0.01) for _ in range(2)]) for i in range(2)]
    rules = RunRules(
        warmup_s=0.1, duration_s=0.5, min_trajectories=0, min_trajectories_per_agent=0, ramp_s=0.05
    )

    async def go(tmp):
        server = await OddServer(ttft_s=0.005, itl_s=0.001).start()
        try:
            ep = Endpoint(server.base_url, "m")
            return await run_live(ep, trajs, 2, rules, out_dir=tmp, progress=False)
        finally:
            await server.stop()

    res = asyncio.run(go(tempfile.mkdtemp()))
    assert "error" in res.manifest["prompt_calibration"]
    assert res.requests.ok.all() and len(res.requests) > 0
