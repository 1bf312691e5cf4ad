"""The run's lean HTTP/1.1 client (``client.wire``): response framing split at any byte, connection reuse,
the connection limit, cancellation, and the real event loop the CLI uses (uvloop), on loopback servers."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentperf_kit.agents import RequestPlan
from agentperf_kit.client.http import Endpoint, StreamState, open_session, send_request
from agentperf_kit.client.wire import WirePool, WireResponse
from agentperf_kit.trajectories.model import Turn
from tests.sse_servers import SSEServer


class _Sink:
    """Stands in for a StreamState: keeps what it is fed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def feed(self, data: bytes, now: int) -> bool:
        self.data += data
        return False

    def close(self, now: int) -> bool:
        self.closed = True
        return False


class _Conn:
    """Stands in for a connection: records what the response did with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outcome: str | None = None

    def done(self, resp: WireResponse) -> None:
        self.outcome = "reusable" if resp.keep_alive else "closed"

    def drop(self, resp: WireResponse) -> None:
        self.outcome = "dropped"


def _feed(raw: bytes, cuts: list[int]) -> tuple[WireResponse, _Sink, _Conn]:
    loop = asyncio.new_event_loop()
    try:
        conn = _Conn(loop)
        sink = _Sink()
        resp = WireResponse(conn, sink)  # type: ignore[arg-type]
        edges = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
        for a, b in itertools.pairwise(edges):
            resp.data(raw[a:b], 0)
        return resp, sink, conn
    finally:
        loop.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunked(pieces: list[bytes], ext: bool, trailers: bool) -> bytes:
    out = [b"%x%s\r\n%s\r\n" % (len(p), b";x=1" if ext else b"", p) for p in pieces if p]
    out.append(b"0\r\nX-Trailer: 1\r\n\r\n" if trailers else b"0\r\n\r\n")
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=0, max_size=70), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    ext=st.booleans(),
    trailers=st.booleans(),
    interim=st.booleans(),
)
def test_chunked_bodies_split_anywhere_read_whole(pieces, cuts, ext, trailers, interim):
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + HEAD + _chunked(pieces, ext, trailers)
    resp, sink, conn = _feed(raw, cuts)
    assert resp.exc is None, resp.exc
    assert bytes(sink.data) == b"".join(pieces)
    assert resp.status == 200 and resp.sse and resp.finished and sink.closed
    assert conn.outcome == "reusable"


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_length_and_gzip_bodies_split_anywhere_read_whole(body, cuts):
    packed = gzip.compress(body)
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed)
    )
    resp, sink, conn = _feed(raw, cuts)
    assert resp.exc is None and bytes(sink.data) == body and conn.outcome == "reusable"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (HEAD + b"zz\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
        (HEAD + b"-3\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
        (HEAD + b"3\r\nabcd\r\n0\r\n\r\n", "not followed by CRLF"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx", "not supported"),
    ],
)
def test_bad_framing_is_an_error_and_the_connection_is_dropped(raw, why):
    resp, _, conn = _feed(raw, [])
    assert resp.exc is not None and why in str(resp.exc), resp.exc
    assert resp.finished and conn.outcome == "dropped"


def test_connection_close_and_http10_are_not_reused():
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    assert _feed(raw, [])[2].outcome == "closed"
    raw = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert _feed(raw, [])[2].outcome == "closed"
    raw = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow"
    resp, sink, conn = _feed(raw, [3])
    assert resp.status == 429 and not resp.sse and bytes(resp.excerpt) == b"slow" and not sink.data
    assert resp.headers["retry-after"] == "7" and conn.outcome == "reusable"


def _plan(n_out: int = 8) -> RequestPlan:
    return RequestPlan(0, 0, "t", 0, Turn(0, 0, 20, n_out), 0, "7" * 32, True, 0.0)


def _go(coro_fn, loop_kind: str):
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_requests_reuse_connections_wait_for_the_limit_and_match_aiohttp(loop_kind):
    """Six requests at once through a pool of two connections: all read whole, the server sees two
    connections at most, four requests waited for one (recorded); a request after an idle gap longer than
    the keep-alive limit still goes through."""

    async def go():
        server = await SSEServer(ttft_s=0.02, itl_s=0.002).start()
        ep = Endpoint(server.base_url, "test-model", api="completions", request_timeout_s=10)
        try:
            async with open_session(2, keepalive_s=0.3) as s:
                pool = s.connector.wire
                assert isinstance(pool, WirePool)
                outs = await asyncio.gather(
                    *(send_request(s, ep, _plan(5), ep.body(_plan(5)), 0) for _ in range(6))
                )
                waits = list(pool.queue_waits_s)
                await asyncio.sleep(0.5)
                late = await send_request(s, ep, _plan(3), ep.body(_plan(3)), 0)
                return outs, late, waits, server
        finally:
            await server.stop()

    outs, late, waits, server = _go(go, loop_kind)
    assert all(o.ok and o.output_tokens == 5 and o.n_chunks == 5 for o in outs), outs
    assert all(o.t_send_s <= o.t_first_s <= o.t_last_s <= o.t_end_s for o in outs)
    assert late.ok and late.output_tokens == 3
    assert len(waits) == 4 and all(w > 0 for w in waits)
    assert server.max_in_flight <= 2


def test_a_cancelled_request_closes_its_connection():
    """A stall timeout ends the request; the server sees its client go (the connection is closed, not
    handed to the next request)."""

    async def go():
        server = await SSEServer(ttft_s=0.01, itl_s=0.01, fault="stall").start()
        ep = Endpoint(server.base_url, "test-model", stall_timeout_s=0.2, request_timeout_s=5)
        try:
            async with open_session(2) as s:
                out = await send_request(s, ep, _plan(20), ep.body(_plan(20)), 0)
                for _ in range(100):
                    if server.in_flight == 0:
                        break
                    await asyncio.sleep(0.02)
                return out, server.in_flight, len(s.connector.wire._all)
        finally:
            await server.stop()

    out, in_flight, open_conns = asyncio.run(go())
    assert out.error == "stall_timeout" and out.http_status == 200 and out.n_chunks > 0
    assert in_flight == 0 and open_conns == 0


def test_a_live_run_reads_through_the_wire_client_and_says_so():
    """``run_live`` sends through the lean client; the manifest names it and the event loop."""
    import tempfile

    from agentperf_kit.agents import RunRules
    from agentperf_kit.replay import run_live
    from agentperf_kit.trajectories.model import Trajectory

    rules = RunRules(
        warmup_s=0.1,
        duration_s=0.6,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.05,
        drain_timeout_s=2,
        random_start_turn=False,
        abort_after_s=0,
    )
    trajs = [Trajectory(f"t{i}", [Turn(k, 0, 30, 6, tool_delay_s=0.05) for k in range(3)]) for i in range(2)]

    async def go():
        server = await SSEServer(ttft_s=0.01, itl_s=0.002).start()
        try:
            ep = Endpoint(server.base_url, "test-model", api="completions")
            return await run_live(ep, trajs, 2, rules, out_dir=tempfile.mkdtemp(), progress=False)
        finally:
            await server.stop()

    res = asyncio.run(go())
    check = res.manifest["client_check"]
    assert check["body_reader"] == "wire" and check["event_loop"] == "asyncio"
    done = res.requests[res.requests.error != "cancelled_at_end"]
    assert len(done) >= 4 and done.ok.all() and (done.output_tokens == 6).all()


# -- runs of whole template events (WireResponse._events_run, StreamState.feed_events) ---------------------

_CMPL_HEAD = (
    b'data: {"id":"cmpl-9","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"'
)
_CMPL_TAIL = b'","logprobs":null,"finish_reason":null}]}'
_CHAT_HEAD = (
    b'data: {"id":"c-9","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"'
)
_CHAT_TAIL = b'"},"logprobs":null,"finish_reason":null}]}'
_FINISH = {
    "completions": b'data: {"id":"cmpl-9","choices":[{"index":0,"text":"!","finish_reason":"length"}]}',
    "chat": b'data: {"id":"c-9","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"length"}]}',
}
_USAGE = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d}}'
_RAW = [
    b"a",
    b" ",
    b'"',
    b"\\",
    b"\\n",
    b"\\u00e9",
    b"\\u12",
    b"\n",
    b"\x01",
    b"\xc3\xa9",
    b"\xc3",
    b"\xff",
    b"z",
    b"0",
]


class _CountingState(StreamState):
    """A StreamState that counts the events it took in runs and as single chunks."""

    __slots__ = ("taken",)

    def __init__(self, fast: bool, log: list) -> None:
        super().__init__(fast, log)
        self.taken = 0

    def feed_events(self, events: list[bytes], lens: list[int], now: int) -> bool:
        ok = super().feed_events(events, lens, now)
        self.taken += len(events) if ok else 0
        return ok

    def feed_chunk(self, data: bytes, now: int) -> bool:
        ok = super().feed_chunk(data, now)
        self.taken += ok
        return ok


def _state_view(st: StreamState) -> tuple:
    return (
        st.n_chunks,
        st.text_bytes,
        st.t_first,
        st.t_first_answer,
        st.t_last,
        st.t_finish,
        st.finished,
        st.done,
        st.finish_reason,
        st.usage,
        st.error,
        st.first_tokens,
        st.has_tool_calls,
        st.chunk_log,
    )


def _read(raw: bytes, cuts: list[int], *, runs: bool, fast: bool = True) -> tuple[tuple, int]:
    """``raw`` fed to a WireResponse in blocks (block i at t = i + 1); what the response and its stream
    state say, and how many events were taken in runs or as single chunks (``runs=False``: neither)."""
    loop = asyncio.new_event_loop()
    try:
        conn = _Conn(loop)
        st = _CountingState(fast, [])
        resp = WireResponse(conn, st)  # type: ignore[arg-type]
        if not runs:
            resp._runs = None
        edges = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
        for i, (a, b) in enumerate(itertools.pairwise(edges)):
            resp.data(raw[a:b], i + 1)
        exc = f"{type(resp.exc).__name__}: {resp.exc}" if resp.exc is not None else None
        return (exc, resp.finished, conn.outcome, _state_view(st)), st.taken
    finally:
        loop.close()


@st.composite
def _sse_response(draw):
    """A chunked SSE response: events of one template, with bodies valid or not; every ``rare``-th
    event or chunk on average (never with 0) something else: another event, another line end, an invalid
    body, several events in one chunk, a size line spelled otherwise; then finish, usage, [DONE]."""
    api = draw(st.sampled_from(["completions", "chat"]))
    head, tail = (_CMPL_HEAD, _CMPL_TAIL) if api == "completions" else (_CHAT_HEAD, _CHAT_TAIL)
    rare = draw(st.sampled_from([0, 0, 40, 8, 2]))

    def odd() -> bool:
        return rare > 0 and draw(st.integers(0, rare - 1)) == 0

    events = []
    if api == "chat":
        events.append(head + tail.replace(b'"}', b'","role":"assistant"}', 1) + b"\n\n")
    valid = st.text(alphabet=st.sampled_from('ab "\\\n\u00e9\u2028\U0001f600<'), max_size=6).map(
        lambda t: json.dumps(t, ensure_ascii=False)[1:-1].encode()
    )
    raw = st.lists(st.sampled_from(_RAW), max_size=4).map(b"".join)
    other = st.sampled_from(
        [b": keep-alive\n\n", b"data: {bad\n\n", b"event: x\n\n", _FINISH[api] + b"\n\n", b"\n"]
    )
    for _ in range(draw(st.integers(0, 80))):
        if odd():
            events.append(draw(other))
        else:
            body = draw(raw) if odd() else draw(st.one_of(valid, st.just(b""), st.just(b" tok")))
            sep = draw(st.sampled_from([b"\r\n\r\n", b"\n", b"\n\n\n"])) if odd() else b"\n\n"
            events.append(head + body + tail + sep)
    events += [_FINISH[api] + b"\n\n", _USAGE % len(events) + b"\n\n", b"data: [DONE]\n\n"]
    chunks, i = [], 0
    while i < len(events):
        k = draw(st.integers(2, 3)) if odd() else 1
        data = b"".join(events[i : i + k])
        i += k
        size = draw(st.sampled_from([b"%X", b"0%x", b"%x;ext=1", b"%x "])) if odd() else b"%x"
        chunks.append(size % len(data) + b"\r\n" + data + b"\r\n")
    bounds = list(itertools.accumulate([len(HEAD), *map(len, chunks)]))
    return HEAD + b"".join(chunks) + b"0\r\n\r\n", bounds


@settings(max_examples=300, deadline=None)
@given(
    response=_sse_response(),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=4),
    per_chunk=st.booleans(),
)
def test_runs_of_template_events_read_as_event_by_event(response, cuts, per_chunk):
    """Every field of the stream state, the chunk log, the error and the connection's fate are the same
    with runs and single chunks taken at once as with every chunk and line read one by one (and as with
    full JSON); blocks cut anywhere, or one HTTP chunk each (a stream read as it comes)."""
    raw, bounds = response
    cuts = bounds if per_chunk else cuts
    got, _ = _read(raw, cuts, runs=True)
    ref, _ = _read(raw, cuts, runs=False)
    assert got == ref
    full, _ = _read(raw, cuts, runs=False, fast=False)
    assert got == full


def _tokens(n: int, bodies: list[bytes], at: dict[int, bytes] | None = None) -> bytes:
    """A completions response of ``n`` token chunks: the first three of " tok", then ``bodies`` in turn;
    ``at`` replaces chunk i (its whole HTTP chunk) by other bytes."""
    evs = [_CMPL_HEAD + b + _CMPL_TAIL + b"\n\n" for b in [b" tok"] * 3]
    evs += [_CMPL_HEAD + bodies[i % len(bodies)] + _CMPL_TAIL + b"\n\n" for i in range(n - 3)]
    evs += [_FINISH["completions"] + b"\n\n", _USAGE % (n + 1) + b"\n\n", b"data: [DONE]\n\n"]
    chunks = [b"%x\r\n%s\r\n" % (len(e), e) for e in evs]
    for i, c in (at or {}).items():
        chunks[i] = c
    return HEAD + b"".join(chunks) + b"0\r\n\r\n"


_EV = _CMPL_HEAD + b" tok" + _CMPL_TAIL + b"\n\n"
_FIN4 = _EV.replace(b'"finish_reason":null', b'"finish_reason":"ab"')  # as long as a token chunk


@pytest.mark.parametrize(
    ("bodies", "at", "cuts", "taken", "error"),
    [
        ([b" tok"], None, [], 1021, None),  # a whole response in one block (workload A): all but 3 tokens
        ([b" tok"], None, [60_000, 120_000], 1019, None),  # the 2 chunks cut by a block's end: one by one
        ([b'\\n\\u00e9\\"\xc3\xa9', b""], None, [], 1021, None),  # escapes, UTF-8, empty bodies
        ([b"\xc3"], None, [], 0, "MalformedChunk"),  # invalid UTF-8: one by one, the first is malformed
        ([b'"'], None, [], 0, "MalformedChunk"),  # an unescaped quote: the same
        # bodies valid only when glued together (the run starts and ends with an "x"): must not be glued
        ([b"x", b"a\\", b"nx"], None, [], 0, "MalformedChunk"),
        ([b"x", b"a\\u12", b"34x"], None, [], 0, "MalformedChunk"),
        ([b"x", b"a\xc3", b"\xa9x"], None, [], 0, "MalformedChunk"),
        # a chunk whose size line is one more than its data: a framing error, not a token
        ([b" tok"], {500: b"%x\r\n%s\r\n" % (len(_EV) + 1, _EV)}, [], 0, "ClientPayloadError"),
        # a size line in capitals or with leading zeros: the same chunk
        (
            [b" tok"],
            {500: b"%X\r\n%s\r\n" % (len(_EV), _EV), 501: b"0%x\r\n%s\r\n" % (len(_EV), _EV)},
            [],
            1021,
            None,
        ),
        # a chunk as long as a token chunk, with a finish reason, among the tokens: no run is taken
        ([b" tok"], {500: b"%x\r\n%s\r\n" % (len(_FIN4), _FIN4)}, [], 0, None),
    ],
)
def test_long_blocks_are_taken_in_runs(bodies, at, cuts, taken, error):
    raw = _tokens(1024, bodies, at)
    got, n = _read(raw, cuts, runs=True)
    ref, _ = _read(raw, cuts, runs=False)
    assert got == ref
    assert n == taken
    if error is None:
        assert got[0] is None and got[3][7]  # [DONE]
    else:
        assert got[0].startswith(error) and got[2] == "dropped"


@pytest.mark.parametrize(
    ("bodies", "at", "taken", "error"),
    [
        ([b" tok"], None, 299, None),  # every token chunk after the first (it made the template)
        ([b'\\n\\u00e9\\"\xc3\xa9', b""], None, 299, None),  # escapes, UTF-8, empty bodies
        ([b"a\xc3"], None, 2, "MalformedChunk"),  # invalid UTF-8: read as usual, malformed
        ([b'"'], None, 2, "MalformedChunk"),  # an unescaped quote: the same
        # size lines with a leading zero or a trailing space: those chunks are read as usual
        (
            [b" tok"],
            {100: b"0%x\r\n%s\r\n" % (len(_EV), _EV), 101: b"%x \r\n%s\r\n" % (len(_EV), _EV)},
            297,
            None,
        ),
        # a size line one more than its data: a framing error, after the tokens before it
        ([b" tok"], {100: b"%x\r\n%s\r\n" % (len(_EV) + 1, _EV)}, 99, "ClientPayloadError"),
    ],
)
def test_single_chunk_blocks_are_taken_one_call_each(bodies, at, taken, error):
    """A stream read as it comes, one HTTP chunk per block: template events go through
    ``StreamState.feed_chunk``, with the same outcome as read chunk by chunk and line by line."""
    raw = _tokens(300, bodies, at)
    bounds = [len(HEAD)]
    while bounds[-1] < len(raw) - 5:  # chunk by chunk, by the size lines as written
        eol = raw.index(b"\r\n", bounds[-1])
        size = len(_EV) if raw[bounds[-1] : eol] == b"%x" % (len(_EV) + 1) else int(raw[bounds[-1] : eol], 16)
        bounds.append(eol + 2 + size + 2)
    got, n = _read(raw, bounds, runs=True)
    ref, _ = _read(raw, bounds, runs=False)
    assert got == ref
    assert n == taken
    if error is None:
        assert got[0] is None and got[3][7]  # [DONE]
    else:
        assert got[0].startswith(error) and got[2] == "dropped"


class _ClosingServer:
    """A raw HTTP/1.1 server answering ``/v1/completions`` with a short SSE stream whose headers promise
    keep-alive. ``mode``: ``"after_stream"`` closes every connection right after its streamed response
    (llama.cpp's ``llama-server`` does); ``"idle_race"`` keeps connections but closes one without a
    byte of answer when it brings a second request (the server closing an idle connection as a request
    goes out); ``"never"`` closes every connection on its first request, unanswered; ``"half"`` sends a
    status line, then closes."""

    def __init__(self, mode: str, tokens: int = 4) -> None:
        self.mode = mode
        self.tokens = tokens
        self.connections = 0
        self.answered = 0
        self.dropped = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> _ClosingServer:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def _body(self) -> bytes:
        events = [
            {"choices": [{"index": 0, "text": "x", "finish_reason": None}]} for _ in range(self.tokens - 1)
        ]
        usage = {"prompt_tokens": 20, "completion_tokens": self.tokens, "total_tokens": 20 + self.tokens}
        events.append({"choices": [{"index": 0, "text": "x", "finish_reason": "length"}], "usage": usage})
        out = b""
        for e in events:
            data = b"data: " + json.dumps(e).encode() + b"\n\n"
            out += b"%x\r\n%s\r\n" % (len(data), data)
        done = b"data: [DONE]\n\n"
        return out + b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if self.mode == "never" or (self.mode == "idle_race" and served == 1):
                    self.dropped += 1
                    return
                if self.mode == "half":
                    writer.write(b"HTTP/1.1 200 OK\r\n")
                    await writer.drain()
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                    b"Keep-Alive: timeout=5, max=100\r\n\r\n" + self._body()
                )
                await writer.drain()
                self.answered += 1
                served += 1
                if self.mode == "after_stream":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def _through_closing_server(
    mode: str, n: int, concurrent: int
) -> tuple[list, WirePool, _ClosingServer]:
    server = await _ClosingServer(mode).start()
    ep = Endpoint(server.url, "test-model", api="completions", request_timeout_s=10)
    outs = []
    try:
        async with open_session(concurrent) as s:
            pool = s.connector.wire
            assert isinstance(pool, WirePool)

            async def agent() -> None:
                for _ in range(n // concurrent):
                    outs.append(await send_request(s, ep, _plan(4), ep.body(_plan(4)), 0))
                    await asyncio.sleep(0.001)

            await asyncio.gather(*(agent() for _ in range(concurrent)))
            return outs, pool, server
    finally:
        await server.stop()


def test_a_server_closing_after_each_stream_gets_a_fresh_connection_per_request():
    """llama.cpp's ``llama-server`` closes the connection right after each streamed response although
    its headers say ``Keep-Alive``: the pool notices and stops reusing that server's connections, so at
    most the requests sent before it noticed can meet a closing connection; every request the server
    answered is an ok row, every other a ``connect_error`` row (never a resend)."""
    outs, pool, server = asyncio.run(_through_closing_server("after_stream", 60, 4))
    assert len(outs) == 60
    failed = [o for o in outs if not o.ok]
    assert pool.closes_after_response, "the prompt close was not noticed"
    assert all(o.output_tokens == 4 for o in outs if o.ok)
    assert {o.error for o in failed} <= {"connect_error"} and len(failed) <= 4
    assert server.answered == 60 - len(failed)


def test_a_request_on_a_connection_the_server_is_closing_is_a_failed_row_and_the_pool_learns():
    """The server drops a reused connection when its second request arrives, without a byte of answer
    (it may have read it): that request is a ``connect_error`` row, not resent; the pool then gives
    each request a fresh connection, so there are at most as many such rows as agents."""
    outs, pool, server = asyncio.run(_through_closing_server("idle_race", 40, 2))
    assert len(outs) == 40
    failed = [o for o in outs if not o.ok]
    assert server.dropped == len(failed) and 1 <= len(failed) <= 2
    assert {o.error for o in failed} == {"connect_error"}
    assert server.answered == 40 - len(failed) == sum(o.ok and o.output_tokens == 4 for o in outs)
    assert pool.closes_after_response


@pytest.mark.parametrize("mode", ["never", "half"])
def test_a_server_that_never_answers_gives_failed_rows_one_request_each(mode):
    """A connection closed unanswered, or an answer cut after its status line: a failed row per request,
    and the server saw each request once."""
    outs, _, server = asyncio.run(_through_closing_server(mode, 6, 2))
    assert len(outs) == 6 and not any(o.ok for o in outs)
    assert {o.error for o in outs} == {"connect_error"}
    assert server.connections == 6
