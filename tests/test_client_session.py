"""The run's HTTP session: bodies leave inside ``session.post``, the body is read in the connection's
protocol (the lean client of ``client.wire``, and aiohttp's with ``wire=False``), and both give what the
plain aiohttp path gives, on real loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from agentperf_kit.agents import RequestPlan
from agentperf_kit.client import http
from agentperf_kit.client.eager import eager_body_writes
from agentperf_kit.client.http import Endpoint, open_session, send_request
from agentperf_kit.trajectories.model import Turn
from tests.sse_servers import SSEServer


@contextlib.asynccontextmanager
async def _serve(app: web.Application, **runner_kw) -> AsyncIterator[str]:
    """``app`` on a loopback port: yields its ``/v1`` base URL."""
    runner = web.AppRunner(app, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
    finally:
        await runner.cleanup()


def _plan(n_out: int = 8) -> RequestPlan:
    return RequestPlan(0, 0, "t", 0, Turn(0, 0, 20, n_out), 0, "7" * 32, True, 0.0)


async def _burst(session: aiohttp.ClientSession, ep: Endpoint, n: int) -> list[tuple[float, float]]:
    """n requests started together on warm connections: (start, sent) per request, seconds."""
    plan = _plan(2)
    body = ep.body(plan)
    await asyncio.gather(*(send_request(session, ep, plan, body, 0) for _ in range(n)))  # warm the pool
    times: list[tuple[float, float]] = []

    async def one() -> None:
        start = time.perf_counter_ns() / 1e9
        out = await send_request(session, ep, plan, body, 0)
        assert out.ok, out.error_detail
        times.append((start, out.t_send_s))

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times)


def test_bodies_leave_inside_post_in_a_burst():
    """Each request of a burst is on the wire before the next one starts (Python >= 3.12 does this by
    itself; on 3.11 the run's session does it): no request waits for the whole burst to be set up."""

    async def go(run_session: bool):
        server = await SSEServer(ttft_s=0.01, itl_s=0.001).start()
        ep = Endpoint(server.base_url, "test-model")
        try:
            if run_session:
                async with open_session(80) as s:
                    assert s.connector.sink_capable
                    return await _burst(s, ep, 60)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=80)) as s:
                return await _burst(s, ep, 60)
        finally:
            await server.stop()

    times = asyncio.run(go(True))
    before_next = sum(sent < nxt for (_, sent), (nxt, _) in itertools.pairwise(times))
    assert before_next >= 0.9 * (len(times) - 1), before_next
    if sys.version_info < (3, 12):  # the negative control: aiohttp on 3.11 sends after the whole burst
        plain = asyncio.run(go(False))
        assert max(start for start, _ in plain) < min(sent for _, sent in plain)


def test_eager_writes_are_installed_only_inside_and_restore_the_factory():
    async def go():
        loop = asyncio.get_running_loop()

        def mine(loop, coro, **kw):
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(mine)
        with eager_body_writes() as installed:
            assert installed == (sys.version_info < (3, 12))
            inside = loop.get_task_factory()
            assert (inside is not mine) == installed
            assert await asyncio.create_task(asyncio.sleep(0, result=7)) == 7  # others go through
        assert loop.get_task_factory() is mine

    asyncio.run(go())


@pytest.mark.parametrize("wire", [True, False])
def test_a_large_body_that_waits_for_the_socket_is_sent_whole_and_stamped_when_written(wire):
    """A body larger than the socket buffers, to a server that reads it late: the write waits (the
    rest of the eager write continues in a task) and ``t_send_s`` is when its last byte was written."""
    got: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)  # headers read, body left in the socket
        raw = await request.read()
        got.append(len(raw))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"text":"x","finish_reason":null}]}\n\n')
        usage = b'{"prompt_tokens":%d,"completion_tokens":1}' % len(raw)
        await resp.write(
            b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":%s}\n\n' % usage
        )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def go():
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", handler)
        body = {"model": "m", "stream": True, "max_tokens": 1, "prompt": [7] * 4_000_000}
        async with _serve(app) as base, open_session(4, wire=wire) as s:
            ep = Endpoint(base, "m", api="completions")
            t0 = time.perf_counter_ns() / 1e9
            return t0, await send_request(s, ep, _plan(1), body, 0)

    t0, out = asyncio.run(go())
    assert out.ok, out.error_detail
    assert got and out.prompt_tokens == got[0] > 8_000_000
    assert out.t_send_s - t0 >= 0.25  # the last byte left after the server began to read
    assert out.t_first_s >= out.t_send_s


def test_a_body_that_arrives_before_the_reader_is_attached_is_read_whole(monkeypatch):
    """The loop is blocked while the response headers and the first chunks arrive together: the sink
    takes what aiohttp already buffered (stamped at its arrival), then the rest as it comes."""
    early: list[int] = []  # pumps of bytes that came before the sink was attached
    pump = http._BodySink.pump

    def counting_pump(self, now):
        if self.proto.body_sink is None and not self.waiter.done():
            early.append(now)
        return pump(self, now)

    monkeypatch.setattr(http._BodySink, "pump", counting_pump)

    async def go(block_s: float):
        server = await SSEServer(ttft_s=0.0, itl_s=0.05).start()
        ep = Endpoint(server.base_url, "test-model", api="completions")
        try:
            async with open_session(4, wire=False) as s:  # aiohttp's protocol: the sink's early path
                loop = asyncio.get_running_loop()
                loop.call_later(0.005, time.sleep, block_s)  # blocks the loop just after the send
                return await send_request(s, ep, _plan(6), ep.body(_plan(6)), 0)
        finally:
            await server.stop()

    out = asyncio.run(go(0.12))
    assert out.ok and out.output_tokens == 6 and out.n_chunks == 6, out
    assert len(early) == 1  # the early path ran, once
    assert out.t_last_s - out.t_first_s >= 5 * 0.05 * 0.6  # the later chunks kept their own times


def test_run_session_has_no_session_time_limit():
    """aiohttp's default session timeout ends any request after 300 s; a run's requests are limited by
    ``Endpoint.request_timeout_s`` and ``stall_timeout_s`` only."""

    async def go():
        async with open_session(4) as s:
            return s.timeout

    timeout = asyncio.run(go())
    assert timeout.total is None and timeout.sock_read is None


@pytest.mark.parametrize("wire", [True, False])
@pytest.mark.parametrize("fault", ["stall", "cut"])
def test_request_and_stall_limits_share_one_timer(fault, wire):
    """The stall limit ends a silent stream; the request limit ends a slow one that never stalls."""

    async def go(stall_s, request_s):
        # the stalling stream goes silent after its first 20 tokens: 10 ms apart there (its silence is what
        # is timed), 50 ms apart in the slow one (never silent for the 0.2 s stall limit)
        itl_s = 0.01 if fault == "stall" else 0.05
        server = await SSEServer(ttft_s=0.01, itl_s=itl_s, fault=fault if fault == "stall" else None).start()
        ep = Endpoint(server.base_url, "test-model", stall_timeout_s=stall_s, request_timeout_s=request_s)
        try:
            async with open_session(4, wire=wire) as s:
                return await send_request(s, ep, _plan(40), ep.body(_plan(40)), 0)
        finally:
            await server.stop()

    if fault == "stall":
        out = asyncio.run(go(0.2, 10))
        assert out.error == "stall_timeout" and out.n_chunks > 0
    else:
        out = asyncio.run(go(0.2, 0.6))  # 40 chunks x 50 ms = 2 s: never silent for 0.2 s
        assert out.error == "request_timeout", out
        assert 0.5 < out.t_end_s - out.t_send_s < 1.5


@pytest.mark.parametrize(
    ("dialect", "continuous", "first", "per_chunk"),
    [
        ("vllm", False, 1, 1),  # one token per chunk: the usage total equals the visible chunks
        ("sglang", False, None, None),  # 3 per chunk and nothing says so
        ("sglang", True, 3, 3),  # continuous_usage_stats: every chunk's share of completion_tokens
        ("vllm", True, 1, 1),
    ],
)
def test_first_chunk_tokens_only_where_the_stream_says(dialect, continuous, first, per_chunk):
    async def go():
        server = await SSEServer(dialect=dialect, ttft_s=0.01, itl_s=0.002).start()
        ep = Endpoint(server.base_url, "test-model", continuous_usage=continuous)
        log: list = []
        try:
            async with open_session(4) as s:
                out = await send_request(s, ep, _plan(12), ep.body(_plan(12)), 0, chunk_log=log)
        finally:
            await server.stop()
        return out, log, server.bodies[0]

    out, log, sent = asyncio.run(go())
    assert out.ok and out.output_tokens == 12
    assert bool(sent["stream_options"].get("continuous_usage_stats")) == continuous
    assert out.first_chunk_tokens == first
    if per_chunk is not None:
        assert [t for _, t in log] == [per_chunk] * (12 // per_chunk)
        assert sum(t for _, t in log) == out.output_tokens


def test_idle_connections_are_dropped_before_the_server_would_close_them():
    """A connection idle for longer than ``keepalive_s`` is not reused (servers close theirs after 5 s,
    and reusing one at that moment fails the request); shorter gaps reuse the connection."""
    peers: list = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"object": "list", "data": []})

    async def go(gap_s: float) -> int:
        peers.clear()
        app = web.Application()
        app.router.add_get("/v1/models", handler)
        async with _serve(app, keepalive_timeout=30) as base, open_session(4, keepalive_s=0.25) as s:
            for _ in range(3):
                async with s.get(f"{base}/models") as r:
                    await r.read()
                await asyncio.sleep(gap_s)
        return len(set(peers))

    assert asyncio.run(go(0.05)) == 1
    assert asyncio.run(go(0.6)) == 3


@pytest.mark.parametrize("wire", [True, False])
def test_a_compressed_stream_reads_the_same_through_the_protocol_reader(wire):
    """gzip-encoded SSE (aiohttp decompresses, and may pause and resume decompression): the protocol
    reader gets every event, as the plain ``readany`` path does."""
    n = 400

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_compression(web.ContentCoding.gzip)
        await resp.prepare(request)
        for i in range(n):
            last = i == n - 1
            fin = '"length"' if last else "null"
            text = "tok" * 50
            await resp.write(
                f'data: {{"choices":[{{"index":0,"text":"{text}","finish_reason":{fin}}}]}}\n\n'.encode()
            )
            if i % 50 == 0:
                await asyncio.sleep(0.002)
        usage = f'{{"prompt_tokens":3,"completion_tokens":{n}}}'
        await resp.write(f'data: {{"choices":[],"usage":{usage}}}\n\ndata: [DONE]\n\n'.encode())
        await resp.write_eof()
        return resp

    async def go(run_session: bool):
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        cm = open_session(4, wire=wire) if run_session else aiohttp.ClientSession()
        async with _serve(app) as base, cm as s:
            ep = Endpoint(base, "m", api="completions", request_timeout_s=10)
            return await send_request(s, ep, _plan(n), ep.body(_plan(n)), 0)

    a, b = asyncio.run(go(True)), asyncio.run(go(False))
    assert a.ok and b.ok, (a.error_detail, b.error_detail)
    assert a.n_chunks == b.n_chunks == n and a.output_tokens == b.output_tokens == n
    assert a.finish_reason == b.finish_reason == "length"


@pytest.mark.parametrize("wire", [True, False])
def test_a_body_ended_by_closing_the_connection_reads_the_same_through_the_protocol_reader(wire):
    """No chunked encoding, no length: the body ends when the server closes the connection (HTTP/1.0
    style). The protocol reader sees the end through ``connection_lost``, as ``readany`` sees EOF."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the body is left unread
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for i in range(5):
            fin = '"length"' if i == 4 else "null"
            writer.write(
                f'data: {{"choices":[{{"index":0,"text":"t{i}","finish_reason":{fin}}}]}}\n\n'.encode()
            )
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n')
        # no [DONE]: the close ends the stream
        await writer.drain()
        writer.close()

    async def go(run_session: bool):
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ep = Endpoint(f"http://127.0.0.1:{port}/v1", "m", api="completions", request_timeout_s=5)
        try:
            cm = open_session(4, wire=wire) if run_session else aiohttp.ClientSession()
            async with cm as s:
                return await send_request(s, ep, _plan(5), ep.body(_plan(5)), 0)
        finally:
            server.close()

    a, b = asyncio.run(go(True)), asyncio.run(go(False))
    assert a.ok and b.ok, (a.error, a.error_detail, b.error, b.error_detail)
    assert a.n_chunks == b.n_chunks == 5 and a.output_tokens == b.output_tokens == 5
    assert a.finish_reason == b.finish_reason == "length"
