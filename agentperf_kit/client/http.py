"""One streamed request against an OpenAI-compatible endpoint -> a raw :class:`RequestOutcome`.

Error classes (``RequestOutcome.error``), one per fault, never retried:

| class | when |
|---|---|
| ``http_error`` | non-2xx status other than 429 (detail: status and a body excerpt) |
| ``rate_limited`` | HTTP 429 (detail: ``Retry-After``) |
| ``connect_error`` | the connection could not be made or broke before a response |
| ``stream_cut`` | the stream ended before ``[DONE]`` and before a finish reason |
| ``stall_timeout`` | no bytes for ``stall_timeout_s`` mid-stream |
| ``request_timeout`` | the whole request took longer than ``request_timeout_s`` |
| ``malformed_json`` | a ``data:`` payload that is not JSON |
| ``stream_error`` | an error object inside the stream |
| ``empty_response`` | a finished stream with no visible token |
| ``cancelled_at_end`` | still running when the drain after the steady window expired (set by the driver) |

Timestamps: ``time.perf_counter_ns`` converted to seconds since the run's clock origin, taken once per
block of bytes read from the socket (every event in a block arrived together). ``t_send_s`` is when the
request went out: its last body chunk written to the connection (the :func:`sent_time_trace` hook on the
session; without it, when :func:`send_request` was called), so a wait for a connection or a busy loop
before the write is client lag (``t_send - t_scheduled``), not TTFT.

The body is read in blocks (``StreamReader.readany``), split into lines and fed to :class:`StreamState`;
``data:`` payloads go through :class:`.sse.FastScanner` (``fast=True``, the default) or
:func:`.sse.parse_event` for every chunk (``fast=False``); both give the same outcome. The stall timeout is
one lazy timer per request (re-armed only when it fires), not a timeout per read.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..agents import RequestOutcome, RequestPlan
from .prompts import MARKER_TOKENS, chat_messages, completion_prompt
from .sse import BODY_MATCH, DONE, FastScanner, MalformedChunk, parse_event, utf8_ok

__all__ = ["Endpoint", "StreamState", "scrub", "send_request", "sent_time_trace"]

_NAN = float("nan")
_SECRET = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+|sk-)[A-Za-z0-9._\-]{6,}")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys (given ones and anything that looks like a bearer token or ``sk-...`` key)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


@dataclass
class Endpoint:
    """An OpenAI-compatible endpoint and how to call it.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: model name sent in every request.
        api: ``chat`` (``/chat/completions``) or ``completions`` (``/completions``, token-id prompts).
        api_key_env: name of the environment variable holding the API key (the key itself is never
            written anywhere; the manifest records only this name).
        force_output_fields: send ``ignore_eos`` and ``min_tokens`` (turn off for hosted APIs that reject
            unknown fields); ``max_tokens`` (and ``max_completion_tokens`` for chat) are always sent.
        headers, extra_body: added to every request.
        request_timeout_s: whole-request limit; stall_timeout_s: limit on silence mid-stream.
        tokens_per_word: calibration of chat filler text (see :mod:`.prompts`).
    """

    base_url: str
    model: str
    api: str = "chat"
    api_key_env: str | None = None
    force_output_fields: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0
    tokens_per_word: float = 1.0
    token_id_range: tuple[int, int] = (100, 4000)

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {self.api!r}")
        self.base_url = self.base_url.rstrip("/")

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def public_dict(self) -> dict[str, Any]:
        """The endpoint for the manifest: no key, header values that look secret masked."""
        headers = {
            k: ("***" if k.lower() in ("authorization", "api-key", "x-api-key") else v)
            for k, v in self.headers.items()
        }
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api": self.api,
            "api_key_env": self.api_key_env,
            "force_output_fields": self.force_output_fields,
            "headers": headers,
            "extra_body_keys": sorted(self.extra_body),
            "request_timeout_s": self.request_timeout_s,
            "stall_timeout_s": self.stall_timeout_s,
            "tokens_per_word": self.tokens_per_word,
        }

    def body(self, plan: RequestPlan) -> dict[str, Any]:
        """The JSON body of the request for ``plan`` (streaming, usage requested, output forced)."""
        n = plan.turn.output_tokens
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "max_tokens": n,
            "stream_options": {"include_usage": True},
        }
        if self.api == "chat":
            body["messages"] = chat_messages(plan, tokens_per_word=self.tokens_per_word)
            body["max_completion_tokens"] = n
            if plan.turn.tools is not None:
                body["tools"] = plan.turn.tools
        else:
            body["prompt"] = completion_prompt(plan, token_id_range=self.token_id_range)
        if self.force_output_fields:
            body["ignore_eos"] = True
            body["min_tokens"] = n
        body.update(self.extra_body)
        return body


class _Sent:
    __slots__ = ("ns",)

    def __init__(self) -> None:
        self.ns = 0


async def _stamp_sent(session: Any, ctx: Any, params: Any) -> None:
    """Headers, then each body chunk: the last stamp wins (the request is out when its body is)."""
    holder = ctx.trace_request_ctx
    if isinstance(holder, _Sent):
        holder.ns = time.perf_counter_ns()


def sent_time_trace() -> aiohttp.TraceConfig:
    """A trace config for the session: stamps when each request went out (``t_send_s``): when its last
    body chunk was written (the server cannot start before), or its headers for a request without a body.
    aiohttp writes the body in a task of its own after the headers, so under a burst of requests the two
    can be far apart; the wait before the body leaves is client lag (``t_send_s - t_scheduled_s``), which
    the self-check judges, not part of TTFT."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_stamp_sent)
    trace.on_request_chunk_sent.append(_stamp_sent)
    return trace


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class StreamState:
    """What one response body has said so far: feed it blocks of bytes with their arrival time (ns).

    SSE handling as a line reader would do it: lines split on ``\\n`` (a ``\\r`` before it is stripped with
    the payload), only ``data:`` lines count, comments and other fields are skipped, a final line without
    a newline counts at the end of the body (:meth:`close`). ``chunk_log``, when a list, gets
    ``(t_ns, tokens)`` for every visible chunk (``tokens`` is 1 per chunk: the stream does not say more).
    """

    __slots__ = (
        "_pending",
        "_scan",
        "chunk_log",
        "done",
        "error",
        "finish_reason",
        "finished",
        "has_tool_calls",
        "n_chunks",
        "scanner",
        "t_finish",
        "t_first",
        "t_first_answer",
        "t_last",
        "usage",
    )

    def __init__(self, fast: bool = True, chunk_log: list | None = None) -> None:
        self.scanner = FastScanner() if fast else None
        self._scan = self.scanner.scan if fast else parse_event
        self._pending = b""
        self.chunk_log = chunk_log
        self.t_first = self.t_first_answer = self.t_last = self.t_finish = 0
        self.n_chunks = 0
        self.finished = self.done = self.has_tool_calls = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None

    def feed(self, data: bytes, now: int) -> bool:
        """Take a block read at ``now``; True once the stream is over (``[DONE]`` or an error object).
        Raises :class:`.sse.MalformedChunk` for a ``data:`` payload that is not JSON."""
        if self._pending:
            data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        return self._lines(lines, now)

    def close(self, now: int) -> bool:
        """The body ended: a last line without a newline still counts."""
        if self._pending:
            line, self._pending = self._pending, b""
            return self._lines([line], now)
        return False

    def _lines(self, lines: list[bytes], now: int) -> bool:
        scanner = self.scanner
        hot = scanner.hot if scanner is not None else None
        log = self.chunk_log
        n = 0  # visible chunks in this block (all share the block's time)
        answer = tool = False
        try:
            for line in lines:
                info = None
                if hot is not None and line.startswith(hot[0]) and line.endswith(hot[1]):
                    # inline fast path: the newest one-cut template (see FastScanner.hot)
                    q = len(line) - hot[3]
                    if q == hot[2]:
                        info = hot[4]
                    elif (
                        q > hot[2]
                        and BODY_MATCH(line, hot[2], q) is not None
                        and (line.isascii() or utf8_ok(line))
                    ):
                        info = hot[5]
                if info is None:
                    if not line.startswith(b"data:"):
                        continue  # comments (': keep-alive'), event:, id:, blank lines
                    if scanner is not None:
                        info = scanner.scan(line)
                        hot = scanner.hot
                    else:
                        info = parse_event(line[5:])
                    if info is DONE:
                        self.done = True
                        return True
                    if info.error is not None:
                        self.error = info.error
                        return True
                    if info.finish_reason:
                        if not self.finished:
                            self.t_finish = now
                        self.finished = True
                        self.finish_reason = info.finish_reason
                    if info.usage is not None:
                        self.usage = info.usage
                if info.visible:
                    n += 1
                    if info.answer:
                        answer = True
                    if info.tool_call:
                        tool = True
                    if log is not None:
                        log.append((now, 1))
        finally:
            if n:
                self.n_chunks += n
                self.t_last = now
                if not self.t_first:
                    self.t_first = now
            if answer and not self.t_first_answer:
                self.t_first_answer = now
            if tool:
                self.has_tool_calls = True
        return False


class _StallWatch:
    """One timer per request: fires ``stall_s`` after the last data, re-armed lazily (no per-read cost
    beyond storing the time). When it fires the reading task is cancelled and ``fired`` is set."""

    __slots__ = ("fired", "handle", "last", "loop", "stall", "task")

    def __init__(self, stall_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.stall = stall_s
        self.fired = False
        self.last = self.loop.time()
        self.handle = self.loop.call_at(self.last + stall_s, self._check)

    def _check(self) -> None:
        due = self.last + self.stall
        if self.loop.time() >= due:
            self.fired = True
            self.task.cancel()
        else:
            self.handle = self.loop.call_at(due, self._check)

    def close(self) -> None:
        self.handle.cancel()


async def send_request(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    plan: RequestPlan,
    body: dict[str, Any],
    origin_ns: int,
    *,
    secrets: tuple[str, ...] = (),
    fast: bool = True,
    chunk_log: list | None = None,
) -> RequestOutcome:
    """Send one streaming request and measure it. Never raises for a server or network fault.

    ``fast=False`` JSON-decodes every chunk (the reference path); ``chunk_log`` (a list) receives
    ``(t_ns, tokens)`` per visible chunk, ``t_ns`` on the ``perf_counter_ns`` clock.
    """
    clock = time.perf_counter_ns
    t_send = (clock() - origin_ns) / 1e9
    out = RequestOutcome(t_send_s=t_send, t_end_s=_NAN)
    if endpoint.api == "completions":
        out.target_prompt_tokens = len(body["prompt"])
    elif plan.turn.messages is None:
        out.target_prompt_tokens = plan.turn.input_tokens + MARKER_TOKENS
    st = StreamState(fast, chunk_log)
    sent = _Sent()
    try:
        async with asyncio.timeout(endpoint.request_timeout_s):
            async with session.post(endpoint.url, json=body, trace_request_ctx=sent) as resp:
                if sent.ns:
                    out.t_send_s = (sent.ns - origin_ns) / 1e9
                out.http_status = resp.status
                if resp.status != 200:
                    text = scrub((await resp.text())[:300], secrets)
                    if resp.status == 429:
                        out.error = "rate_limited"
                        out.error_detail = f"429 Retry-After={resp.headers.get('Retry-After')}: {text}"
                    else:
                        out.error = "http_error"
                        out.error_detail = f"{resp.status}: {text}"
                    out.ok = False
                    return out
                content = resp.content
                watch = _StallWatch(endpoint.stall_timeout_s)
                loop_time = watch.loop.time
                try:
                    while True:
                        try:
                            data = await content.readany()
                        except asyncio.CancelledError:
                            if not watch.fired:
                                raise
                            watch.task.uncancel()
                            out.ok, out.error = False, "stall_timeout"
                            out.error_detail = f"no data for {endpoint.stall_timeout_s:g} s"
                            break
                        now = clock()
                        if not data:
                            st.close(now)
                            break
                        watch.last = loop_time()
                        if st.feed(data, now):
                            break
                finally:
                    watch.close()
                if st.error is not None:
                    out.ok, out.error = False, "stream_error"
                    out.error_detail = scrub(st.error[:300], secrets)
    except MalformedChunk as exc:
        out.ok, out.error, out.error_detail = False, "malformed_json", scrub(str(exc), secrets)
    except TimeoutError:
        out.ok, out.error = False, "request_timeout"
        out.error_detail = f"longer than {endpoint.request_timeout_s:g} s"
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
        out.ok = False
        out.error = "connect_error" if not st.n_chunks else "stream_cut"
        out.error_detail = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
    except aiohttp.ClientError as exc:
        out.ok, out.error = False, "stream_cut"
        out.error_detail = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
    out.t_end_s = (clock() - origin_ns) / 1e9
    finish_outcome(out, st, origin_ns)
    return out


def finish_outcome(out: RequestOutcome, st: StreamState, origin_ns: int) -> None:
    """Fill ``out`` from what the stream said (times, counts, usage, the error classes that depend on it)."""
    n_chunks = st.n_chunks
    if st.t_first:
        out.t_first_s = (st.t_first - origin_ns) / 1e9
        out.t_last_s = (st.t_last - origin_ns) / 1e9
    if st.t_first_answer:
        out.t_first_answer_s = (st.t_first_answer - origin_ns) / 1e9
    out.has_tool_calls = st.has_tool_calls
    out.finish_reason = st.finish_reason
    out.n_chunks = n_chunks
    usage = st.usage
    if usage:
        out.prompt_tokens = _int(usage.get("prompt_tokens"))
        out.output_tokens = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details") or {}
        out.cached_prompt_tokens = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
        cdetails = usage.get("completion_tokens_details") or {}
        if isinstance(cdetails, dict):
            out.reasoning_tokens = _int(cdetails.get("reasoning_tokens"))
    if out.output_tokens is None and out.ok and n_chunks:
        out.output_tokens = n_chunks  # fallback: visible deltas (a lower bound with multi-token chunks)
    if out.ok and st.finished and not n_chunks and (out.output_tokens or 0) > 0 and st.t_finish:
        # tokens whose text is empty (e.g. llama.cpp holds back a token that ends mid-UTF-8 character):
        # the server produced them, so the finish chunk marks the first and last token
        out.t_first_s = out.t_last_s = out.t_first_answer_s = (st.t_finish - origin_ns) / 1e9
        n_chunks = 1
        if st.chunk_log is not None:
            st.chunk_log.append((st.t_finish, out.output_tokens))
    if out.ok:
        if not (st.done or st.finished):
            out.ok, out.error = False, "stream_cut"
            out.error_detail = "stream ended before [DONE] and before a finish_reason"
        elif not n_chunks:
            out.ok, out.error = False, "empty_response"
            out.error_detail = "the stream finished without a visible token"
