"""The byte-level fast path gives the same answers as full JSON decoding, on every dialect and fault.

Three levels: (1) the bytes each loopback dialect/fault really sends, captured once and replayed through
both paths with the same clock and several block splits (every field of the outcome and the chunk log
compared); (2) real requests with ``send_request(fast=True)`` vs ``fast=False`` (all non-time fields);
(3) hand-made and fuzzed pathological lines, line by line (``FastScanner.scan`` vs ``parse_event``,
including which lines raise) and through the stream reader's inline path.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import asdict

import aiohttp
import pytest

from agentperf_kit.agents import RequestOutcome, RequestPlan
from agentperf_kit.client.http import Endpoint, StreamState, finish_outcome, open_session, send_request
from agentperf_kit.client.sse import DONE, FastScanner, MalformedChunk, parse_event
from agentperf_kit.trajectories.model import Turn
from tests.sse_servers import SSEServer, comparable

DIALECTS = [
    ("vllm", "chat"),
    ("vllm", "completions"),
    ("llamacpp", "chat"),
    ("llamacpp", "completions"),
    ("sglang", "chat"),
    ("reasoning", "chat"),
    ("toolcall", "chat"),
    ("trtllm", "chat"),
    ("trtllm", "completions"),
]
FAULTS = [None, "cut", "stall", "malformed", "stream_error", "empty", "no_done"]


def _plan(n_out: int = 12) -> RequestPlan:
    return RequestPlan(0, 0, "t", 0, Turn(0, 0, 20, n_out), 0, "7" * 32, True, 0.0)


async def _capture(dialect: str, api: str, fault: str | None) -> tuple[list[bytes], bool]:
    """The response body's blocks as aiohttp delivered them, and whether it ended cleanly."""
    server = await SSEServer(dialect=dialect, fault=fault, ttft_s=0.01, itl_s=0.001).start()
    ep = Endpoint(server.base_url, "test-model", api=api)
    blocks: list[bytes] = []
    eof = False
    try:
        async with aiohttp.ClientSession() as s, s.post(ep.url, json=ep.body(_plan())) as resp:
            while True:
                try:
                    async with asyncio.timeout(0.3):
                        data = await resp.content.readany()
                except (TimeoutError, aiohttp.ClientError):
                    break
                if not data:
                    eof = True
                    break
                blocks.append(data)
    finally:
        await server.stop()
    return blocks, eof


def _replay(blocks: list[bytes], eof: bool, fast: bool) -> tuple[str, list]:
    """What send_request would make of these blocks (block i arrives at t = i ms)."""
    log: list = []
    st = StreamState(fast, log)
    out = RequestOutcome(t_send_s=0.0, t_end_s=1.0)
    try:
        for i, b in enumerate(blocks):
            if st.feed(b, (i + 1) * 1_000_000):
                break
        else:
            if eof:
                st.close(10**9)
    except MalformedChunk as exc:
        out.ok, out.error, out.error_detail = False, "malformed_json", str(exc)
    if st.error is not None:
        out.ok, out.error, out.error_detail = False, "stream_error", st.error
    finish_outcome(out, st, 0)
    return repr((asdict(out), st.text_bytes)), log


def _splits(blocks: list[bytes], seed: int) -> list[list[bytes]]:
    body = b"".join(blocks)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(body)), min(40, len(body) - 1))) if len(body) > 1 else []
    rand = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    return [blocks, [body], [body[i : i + 1] for i in range(len(body))], rand]


@pytest.mark.parametrize(("dialect", "api"), DIALECTS)
@pytest.mark.parametrize("fault", FAULTS)
def test_both_paths_agree_on_captured_streams(dialect, api, fault):
    blocks, eof = asyncio.run(_capture(dialect, api, fault))
    assert blocks
    for k, split in enumerate(_splits(blocks, seed=len(blocks))):
        fast, log_fast = _replay(split, eof, fast=True)
        full, log_full = _replay(split, eof, fast=False)
        assert fast == full, (k, fast, full)
        assert log_fast == log_full
    if fault is None:
        assert "'ok': True" in fast
        st = StreamState(True)
        st.feed(b"".join(blocks), 1)
        st.close(2)
        assert st.n_chunks == 12 // SSEServer(dialect).tokens_per_chunk
        # all but the first chunk of each shape and the finish chunk came from a template, not json.loads
        hits = st.scanner.hits + sum(
            1
            for line in b"".join(blocks).split(b"\n")
            if st.scanner.hot and line.startswith(st.scanner.hot[0])
        )
        assert hits >= st.n_chunks - 3


def test_the_fast_path_really_skips_decoding(monkeypatch):
    blocks, _ = asyncio.run(_capture("vllm", "chat", None))
    import agentperf_kit.client.sse as sse

    calls = []
    real = sse.json.loads
    monkeypatch.setattr(sse.json, "loads", lambda s: calls.append(s) or real(s))
    st = StreamState(True)
    st.feed(b"".join(blocks), 1)
    st.close(2)
    # role chunk, first token (+ 2 template probes), finish chunk, usage chunk: not one per token
    assert st.n_chunks == 12 and st.done
    assert len(calls) <= 6, len(calls)


@pytest.mark.parametrize(("dialect", "api"), DIALECTS)
@pytest.mark.parametrize("fault", [*FAULTS, "http500", "http429"])
def test_send_request_fast_and_full_give_the_same_outcome(dialect, api, fault):
    """Fast scanner and full JSON, read by the run's lean client (``open_session``), by aiohttp's
    protocol sink (``open_session(wire=False)``) and by ``readany`` (a plain session): all give the
    reference outcome (full JSON, ``readany``)."""

    async def go(fast, reader):
        server = await SSEServer(dialect=dialect, fault=fault, ttft_s=0.01, itl_s=0.001).start()
        ep = Endpoint(server.base_url, "test-model", api=api, stall_timeout_s=0.3, request_timeout_s=5)
        log: list = []
        try:
            if reader == "plain":
                cm = aiohttp.ClientSession()
            else:
                cm = open_session(16, wire=reader == "wire")
            async with cm as s:
                assert reader == "plain" or s.connector.sink_capable
                assert (reader == "wire") == (getattr(s.connector, "wire", None) is not None)
                return await send_request(s, ep, _plan(), ep.body(_plan()), 0, fast=fast, chunk_log=log), log
        finally:
            await server.stop()

    # the five requests at once, each with its own server and session: a stall waits its limit once, not
    # five times (the outcomes compared below hold no times)
    variants = ((False, "plain"), (True, "wire"), (False, "wire"), (True, "sink"), (True, "plain"))

    async def all_variants():
        return await asyncio.gather(*(go(fast, reader) for fast, reader in variants))

    (b, lb), *others = asyncio.run(all_variants())
    times = ("t_send_s", "t_end_s", "t_first_s", "t_first_answer_s", "t_last_s")
    for (fast, reader), (a, la) in zip(variants[1:], others):
        da, db = asdict(a), asdict(b)
        for t in times:
            assert math.isnan(da.pop(t)) == math.isnan(db.pop(t)), (t, fast, reader)
        if fault in ("cut", "stall"):  # the detail names the exception / the time, same class either way
            assert da.pop("error_detail").split(":")[0] == db.pop("error_detail").split(":")[0]
        assert comparable(da) == comparable(db), (fast, reader)
        assert len(la) == len(lb) == a.n_chunks
    if fault == "stall":
        assert b.error == a.error == "stall_timeout"


# ---- pathological lines -------------------------------------------------------------------------------

HEAD = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
TAIL = b'"},"finish_reason":null}]}'
RHEAD = b'data: {"id":"r","choices":[{"index":0,"delta":{"reasoning_content":"'
RMID = b'","reasoning":"'
RTAIL = b'"},"finish_reason":null}]}'

BODIES = [
    b"tok",
    b"",
    rb"\"content\":\"x\"",  # escaped text that looks like a key
    rb"\"finish_reason\":\"stop\"",
    rb"\u00e9\u4e2d",
    "é中😀".encode(),
    rb"\ud800",  # a lone surrogate escape: json accepts it
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate: json's surrogatepass accepts it
    rb"a\\",  # an escaped backslash right before the closing quote
    rb"\\\"",
    rb"\n\t\r\b\f\/",
    b"\t",  # a raw control character: not JSON
    b"\x00",
    b'"',  # an unescaped quote
    rb"\x",  # an unknown escape
    rb"\u12",  # a short unicode escape
    rb"\u12G4",
    b"\xff\xfe",  # not UTF-8
    b"\xc3",  # a cut UTF-8 sequence
    b'x","finish_reason":"stop',  # an injected key: still valid JSON, another shape
    b'x"},"finish_reason":"stop","z":{"a":"',
    b'x","content":"',
    rb"\\",
    b" ",
]

SPECIAL = [
    b"data: null",
    b"data:null",
    b"data: [DONE]",
    b"data:[DONE]",
    b"data: [DONE]  \r",
    b"data:",
    b"data: ",
    b"data: {}",
    b"data: []",
    b'data: "content"',
    b"data: 1",
    b"data: {not json",
    b'data: {"error":{"message":"engine died","code":500}}',
    b'data: {"error":"plain text error"}',
    b'data: {"error":{"message":""}}',
    b'data: {"object":"error","message":"trt failed","type":"InternalServerError","code":500}',
    b'data: {"object":"error","message":null}',
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}',
    b'data: {"choices":[{"text":"","finish_reason":"length"}],"usage":{"completion_tokens":3}}',
    b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}',
    b'data: {"choices":[{"delta":{"content":"a","tool_calls":[]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\":1}"}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function"}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"","arguments":""}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"ls"}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":""}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[5, {"function": 3}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":{"function":{"name":"x"}}}}]}',
    b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}',
    b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}',
    b'data: {"choices":[{"delta":{"content":"a","content":""}}]}',  # duplicate key: the last wins
    b'data: {"choices":[{"delta":{"content":"","content":"a"}}]}',
    b'data:  {"choices":[{"delta":{"content":"sp"}}]} \r',
    b"\xef\xbb\xbfdata: x",
    b": keep-alive",
    b"event: message",
    b"id: 7",
    b"",
    b"\r",
]


def _ref(line: bytes):
    try:
        return ("ok", parse_event(line[5:]))
    except MalformedChunk as exc:
        return ("bad", str(exc))


def _fast(scanner: FastScanner, line: bytes):
    try:
        return ("ok", scanner.scan(line))
    except MalformedChunk as exc:
        return ("bad", str(exc))


def _lines():
    lines = [HEAD + b"first" + TAIL]  # a clean chunk first, so a template exists
    lines += [HEAD + b + TAIL for b in BODIES]
    lines += [HEAD + b + TAIL + b"\r" for b in BODIES]
    lines += [RHEAD + b"r" + RMID + b"r" + RTAIL]
    lines += [RHEAD + a + RMID + b + RTAIL for a in BODIES[:12] for b in BODIES[:12]]
    lines += [s for s in SPECIAL if s.startswith(b"data:")]
    return lines


def test_scanner_matches_parse_event_line_by_line():
    scanner = FastScanner()
    for line in _lines() + _lines():
        assert _fast(scanner, line) == _ref(line), line
    assert scanner.hits > len(BODIES)  # the second round mostly comes from templates


def test_scanner_matches_parse_event_on_fuzzed_bodies():
    rng = random.Random(3)
    alphabet = [bytes([c]) for c in b'a\\"u0d8n\t\xc3\xa9\xff },']
    scanner = FastScanner()
    assert _fast(scanner, HEAD + b"seed" + TAIL) == _ref(HEAD + b"seed" + TAIL)
    for _ in range(4000):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 9)))
        shape = rng.randrange(3)
        if shape == 0:
            line = HEAD + body + TAIL
        elif shape == 1:
            line = RHEAD + body + RMID + body[::-1] + RTAIL
        else:
            line = HEAD + body + TAIL + rng.choice([b"", b"\r", b" ", b" \r"])
        assert _fast(scanner, line) == _ref(line), line


def _stream(lines: list[bytes], eol: bytes = b"\n") -> list[bytes]:
    return [line + eol + eol for line in lines]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_stream_reader_paths_agree_on_pathological_streams(eol):
    ok_bodies = [b for b in BODIES if _ref(HEAD + b + TAIL)[0] == "ok"]
    bad_bodies = [b for b in BODIES if _ref(HEAD + b + TAIL)[0] == "bad"]
    streams = []
    base = [
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}',
        b": keep-alive",
        b"data: null",
    ]
    streams.append(base + [HEAD + b + TAIL for b in ok_bodies] + [b"data: [DONE]"])
    for bad in bad_bodies:  # malformed in the middle of a templated stream
        streams.append([*base, HEAD + b"a" + TAIL, HEAD + b"b" + TAIL, HEAD + bad + TAIL, HEAD + b"c" + TAIL])
    for special in SPECIAL:  # each special line after the template exists, then more tokens
        streams.append([*base, HEAD + b"a" + TAIL, HEAD + b"b" + TAIL, special, HEAD + b"c" + TAIL])
    # empty content only, then a finish chunk with usage: the llama.cpp empty-text case
    streams.append(
        [
            HEAD + b"" + TAIL,
            HEAD + b"" + TAIL,
            b'data: {"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"completion_tokens":2}}',
            b"data: [DONE]",
        ]
    )
    for lines in streams:
        blocks = _stream(lines, eol)
        for split in _splits(blocks, seed=len(lines)):
            for eof in (True, False):
                assert _replay(split, eof, True) == _replay(split, eof, False), lines


def test_trtllm_dialect_measures_like_the_others(monkeypatch):
    import agentperf_kit.client.sse as sse

    calls = []
    real = sse.json.loads
    monkeypatch.setattr(sse.json, "loads", lambda s: calls.append(s) or real(s))
    for api in ("chat", "completions"):
        blocks, _ = asyncio.run(_capture("trtllm", api, None))
        body = b"".join(blocks)
        if api == "chat":
            assert b"]} \n\n" in body  # the role chunk's trailing space
            assert b'"reasoning_content":"","tool_calls":[]' in body
        else:
            assert b'"usage":null' in body
        calls.clear()
        st = StreamState(True)
        st.feed(body, 1)
        st.close(2)
        assert st.done and st.n_chunks == 12 and st.usage["completion_tokens"] == 12
        assert len(calls) <= 6  # role, first token (+2 probes), finish, usage: the rest from the template
    assert parse_event(b'{"object":"error","message":"x","code":500}').error == "x"
    assert parse_event(b"[DONE]") is DONE


TOOL_LINES = [
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function"}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"ls","arguments":""}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\""}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":""}}]}}]}',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}',
]


def test_tool_call_visible_only_with_a_name_or_arguments_on_both_paths():
    """The reference's definition: an id/type-only tool-call delta is not a token; name or arguments
    is. Both the full decoder and the template scanner (which learns from the arguments chunk) agree."""
    expected = [False, True, True, False, True]
    assert [parse_event(line[5:]).visible for line in TOOL_LINES] == expected
    scanner = FastScanner()
    for _ in range(3):
        got = [_fast(scanner, line) for line in TOOL_LINES]
        assert got == [_ref(line) for line in TOOL_LINES]
        assert [info.visible for _, info in got] == expected
    assert scanner.hits > 0  # the empty-arguments chunk came from a template


def test_text_bytes_agree_between_templates_and_full_decoding():
    """The visible text bytes the usage check counts: from a template (line length minus its literal
    bytes) and from the line itself (``text_bytes``) are the same on every visible line."""
    from agentperf_kit.client.sse import text_bytes

    scanner = FastScanner()
    checked = 0
    for line in _lines() + _lines():
        try:
            info = scanner.scan(line)
        except MalformedChunk:
            continue
        if info is not DONE and info.visible:
            assert scanner.last_bytes == text_bytes(line), line
            checked += 1
    assert checked > len(BODIES)
    assert text_bytes(b'data: {"choices":[{"delta":{"content":"ab\\n\\"c"}}]}') == 7  # as sent
