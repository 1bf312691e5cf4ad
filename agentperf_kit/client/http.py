"""One streamed request against an OpenAI-compatible endpoint -> a raw :class:`RequestOutcome`.

Error classes (``RequestOutcome.error``), one per fault, never retried:

| class | when |
|---|---|
| ``http_error`` | non-2xx status other than 429 (detail: status and a body excerpt) |
| ``rate_limited`` | HTTP 429 (detail: ``Retry-After``; also in ``retry_after_s``) |
| ``connect_error`` | the connection could not be made, or broke before the response headers |
| ``not_sse`` | a 200 whose ``Content-Type`` is not ``text/event-stream`` (detail: the type, a body excerpt) |
| ``stream_cut`` | the stream ended before ``[DONE]`` and before a finish reason |
| ``first_token_timeout`` | no visible token within ``first_token_timeout_s`` of the send |
| ``stall_timeout`` | no visible token for ``stall_timeout_s`` after the last one |
| ``request_timeout`` | the whole request took longer than ``request_timeout_s`` |
| ``malformed_json`` | a ``data:`` payload that is not JSON (or nested too deep to decode) |
| ``stream_error`` | an error object inside the stream |
| ``empty_response`` | a finished stream with no visible token |
| ``client_error`` | anything else raised while reading the response (detail: the exception; a bug) |
| ``cancelled_at_end`` | still running when the drain after the steady window expired (set by the driver) |

Every row has ``t_end_s`` (when the client was done with the request, whatever the outcome). Details
have every secret the client sent (API key, header values) replaced by ``***``.

Timestamps: ``time.perf_counter_ns`` converted to seconds since the run's clock origin. ``t_send_s`` is
when the request went out: the last byte of its body handed to the connection (:class:`SentBody`), so a
wait for a connection or a busy loop before the write is client lag (``t_send - t_scheduled``), not TTFT.
The other times are taken once per block of bytes read from the socket (every event in a block arrived
together).

Reading the body: with a session from :func:`open_session` (``wire=True``, the default), requests to
``http://`` endpoints go through the lean client of :mod:`.wire` (its own connections; blocks stamped
and fed to :class:`StreamState` inside its protocol's ``data_received``). Otherwise aiohttp does the HTTP
(connections, request, status, headers, chunked encoding). With a session from :func:`open_session`
(``wire=False``, or ``https``), each block of the body is taken from the response's ``StreamReader``
inside the connection's ``data_received`` (:class:`SinkResponseHandler`), stamped on arrival and fed to
:class:`StreamState` there: the request's task wakes once at the end of the stream instead of once per
chunk, and a busy event loop no longer delays the stamps. With any other session the task reads blocks
with ``StreamReader.readany``. ``data:`` payloads go through :class:`.sse.FastScanner` (``fast=True``, the
default) or :func:`.sse.parse_event` for every chunk (``fast=False``); all four combinations give the same
outcome (``tests/test_sse_fastpath.py``). The three time limits share one lazy timer per request
(re-armed only when it fires), not a timeout per read; the stall limit runs between *visible* tokens
(comments, empty events and keep-alive bytes do not reset it).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import inspect
import json
import random
import re
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.payload import BytesPayload

from ..agents import RequestOutcome, RequestPlan
from ..errors import ConfigError
from .bodies import target_prompt_tokens
from .eager import eager_body_writes
from .prompts import MARKER_TOKENS, chat_messages, chat_probe_messages, completion_prompt
from .sse import BODY_MATCH, DONE, FastScanner, MalformedChunk, parse_event, text_bytes, utf8_ok
from .wire import WirePool, WireResponse

__all__ = [
    "Endpoint",
    "RunConnector",
    "SentBody",
    "SinkResponseHandler",
    "StreamState",
    "calibrate_chat_filler",
    "check_usage",
    "encode_body",
    "endpoint_secrets",
    "open_session",
    "parse_extra_body",
    "parse_headers",
    "parse_retry_after",
    "public_headers",
    "scrub",
    "send_request",
]

_NAN = float("nan")
_SECRET = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+|sk-)[A-Za-z0-9._\-]{6,}")


_SECRET_HEADERS = ("authorization", "api-key", "x-api-key", "proxy-authorization")


def parse_headers(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``["Name: value", ...]`` (the ``--header`` flag, or a sweep config's ``headers``) as a dict."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = str(item).partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise ValueError(f"header {item!r}: write it as 'Name: value' (e.g. 'X-Request-Source: bench')")
        out[name.strip()] = value.strip()
    return out


def parse_extra_body(text: str | dict | None) -> dict[str, Any]:
    """The ``--extra-body`` flag: a JSON object merged into every request body (e.g. ``'{"top_k": 1}'``)."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f"--extra-body {text!r} is not JSON ({exc}); give an object, e.g. '{{\"top_k\": 1}}'"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"--extra-body must be a JSON object, got {type(obj).__name__}")
    return obj


def public_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers for a manifest or a config file: values of credential headers masked."""
    return {k: ("***" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove secrets: each of ``secrets`` wherever it appears (longest first), and anything that looks
    like a bearer token or an ``sk-...`` key."""
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "***")
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


def endpoint_secrets(endpoint: Endpoint, api_key: str | None = None) -> tuple[str, ...]:
    """What the client sends that must never reach a file (servers echo request headers in error bodies):
    the API key and every header value not marked public (:meth:`Endpoint.secrets`)."""
    return endpoint.secrets(api_key)


def parse_retry_after(value: str | None, now_unix_s: float | None = None) -> float:
    """A ``Retry-After`` header in seconds: delay-seconds as given, an HTTP date as seconds from now
    (never below 0); NaN when absent or unreadable."""
    if value is None:
        return _NAN
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return _NAN
        if when is None or when.tzinfo is None:
            return _NAN
        secs = when.timestamp() - (time.time() if now_unix_s is None else now_unix_s)
        secs = max(secs, 0.0)
    return secs if secs == secs and 0 <= secs < 1e9 else _NAN


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
        headers, extra_body: added to every request. Header values are secrets (masked in manifests,
            scrubbed from error details) except those named in ``public_header_names``
            (:mod:`agentperf_kit.credentials`).
        request_timeout_s: whole-request limit (seconds from the send).
        first_token_timeout_s: limit on the wait for the first visible token (seconds from the send;
            response headers, comments and empty events do not stop it). Default 120 s: 12 times the
            loosest TTFT ceiling of the tier presets (10 s), so a long prompt on an overloaded server is a
            TTFT miss long before it is cut, and a server that never answers frees its agent.
        stall_timeout_s: limit on the gap between two visible tokens (comments, empty events and
            keep-alive bytes do not reset it).
        tokens_per_word, overhead_tokens: chat filler text size (see :mod:`.prompts`); a live run measures
            both on the server first (:func:`calibrate_chat_filler`) unless ``overhead_tokens`` is set.
        continuous_usage: ask for ``usage`` in every chunk (``stream_options.continuous_usage_stats``,
            vLLM): gives each chunk's token count (``first_chunk_tokens``, ``chunks.parquet``) where a
            server sends several tokens per chunk; those chunks are then all JSON-decoded (no fast path).
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
    first_token_timeout_s: float = 120.0
    tokens_per_word: float = 1.0
    token_id_range: tuple[int, int] = (100, 4000)
    continuous_usage: bool = False
    overhead_tokens: float | None = None
    public_header_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {self.api!r}")
        for name in ("request_timeout_s", "stall_timeout_s", "first_token_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and value == value):
                raise ConfigError(f"Endpoint.{name} must be a number of seconds > 0, got {value!r}")
        self.base_url = self.base_url.rstrip("/")

    def secrets(self, key: str | None = None) -> tuple[str, ...]:
        """Strings to scrub from anything written: secret header values and the API key ``key``."""
        from ..credentials import secret_values

        return secret_values(self.headers, self.public_header_names, key)

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def public_dict(self) -> dict[str, Any]:
        """The endpoint for the manifest: no key; every header value masked except the public ones."""
        from ..credentials import mask_headers

        headers = mask_headers(self.headers, self.public_header_names)
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
            "first_token_timeout_s": self.first_token_timeout_s,
            "tokens_per_word": self.tokens_per_word,
            "overhead_tokens": self.overhead_tokens,
            "continuous_usage": self.continuous_usage,
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
        if self.continuous_usage:
            body["stream_options"]["continuous_usage_stats"] = True
        if self.api == "chat":
            body["messages"] = chat_messages(
                plan, tokens_per_word=self.tokens_per_word, overhead_tokens=self.overhead_tokens
            )
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


# client-side idle limit for kept-alive connections, below the 5 s after which uvicorn and llama.cpp close
KEEPALIVE_S = 4.0


class SentBody(BytesPayload):
    """A request body that notes when it went out: ``sent_ns`` (``perf_counter_ns``) is stamped when its
    last byte was handed to the connection (after any wait for the socket buffer to drain), 0 before.
    aiohttp writes the headers together with the body, in a task of its own on Python < 3.12, so under a
    burst of requests the body can leave long after the request started; that wait is client lag
    (``t_send_s - t_scheduled_s``), which the self-check judges, not part of TTFT."""

    def __init__(self, data: bytes) -> None:
        if len(data) >= 1 << 20:  # aiohttp warns about large byte bodies; ours are prompts, by design
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                super().__init__(data, content_type="application/json")
        else:
            super().__init__(data, content_type="application/json")
        self.sent_ns = 0

    async def write(self, writer: Any) -> None:  # aiohttp < 3.12
        await super().write(writer)
        self.sent_ns = time.perf_counter_ns()

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self.sent_ns = time.perf_counter_ns()


def encode_body(body: dict[str, Any]) -> bytes:
    """The JSON of a request body as sent (compact, UTF-8)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# aiohttp 3.14 has ``resume_reading(resume_parser=True)``; 3.9 to 3.12 take no argument.
_RESUME_TAKES_PARSER = "resume_parser" in inspect.signature(ResponseHandler.resume_reading).parameters


class SinkResponseHandler(ResponseHandler):
    """aiohttp's connection protocol, plus a way to hand a response body to a :class:`_BodySink` as its
    bytes arrive, so that reading a stream costs no task wake-up per chunk and every block is stamped
    when it came off the socket (not when a busy event loop got round to the reading task).

    aiohttp still does all of HTTP: the sink takes the body from the response's ``StreamReader``
    (``read_nowait``) right after aiohttp has parsed each block. ``early_ns`` is when the first body
    bytes of the current response arrived, for a body that started before a sink was attached;
    ``rx_ns`` is the last arrival of any bytes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.body_sink: _BodySink | None = None
        self.rx_ns = 0
        self.early_ns = 0
        self.early_payload: Any = None

    def data_received(self, data: bytes) -> None:
        if not data:  # aiohttp resuming its parser (e.g. a paused decompression): nothing new arrived
            super().data_received(data)
            sink = self.body_sink
            if sink is not None and not sink.busy:  # what it produced came with the last block
                sink.pump(self.rx_ns)
            return
        now = self.rx_ns = time.perf_counter_ns()
        super().data_received(data)
        sink = self.body_sink
        if sink is not None:
            sink.pump(now)
        else:
            payload = self._payload
            if payload is not self.early_payload and getattr(payload, "total_bytes", False):
                self.early_payload, self.early_ns = payload, now

    def resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp calls this after every read from a response's ``StreamReader`` (``read_nowait`` in the
        sink: once per block). When reading was not paused it would only feed the parser an empty block
        and resume a transport that is reading: skipped then (aiohttp versions without these flags always
        take the full path)."""
        if (
            getattr(self, "_reading_paused", True)
            or getattr(self, "_buffer_paused", True)
            or getattr(self, "_upgraded", True)
        ):
            if _RESUME_TAKES_PARSER:
                super().resume_reading(resume_parser)
            else:  # an aiohttp without the flag (3.9 to 3.12)
                super().resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        sink = self.body_sink
        if sink is not None:
            sink.pump(time.perf_counter_ns())


class _BodySink:
    """Feeds one response body to a :class:`StreamState` from inside the protocol's ``data_received``;
    wakes the request's task once, when the stream is over (``[DONE]``, an error object, end of body, a
    malformed chunk or a broken connection: ``exc``)."""

    __slots__ = ("busy", "content", "exc", "proto", "state", "waiter")

    def __init__(self, proto: SinkResponseHandler, content: Any, state: StreamState) -> None:
        self.proto, self.content, self.state = proto, content, state
        self.exc: BaseException | None = None
        self.waiter = asyncio.get_running_loop().create_future()
        self.busy = False

    def pump(self, now: int) -> None:
        """Take everything the stream holds, stamped ``now``. Reading lets aiohttp resume its parser,
        which can add more within the call (``data_received(b"")``): taken in the same pass."""
        content = self.content
        self.busy = True
        try:
            seen = -1
            while seen != content.total_bytes:
                seen = content.total_bytes
                data = content.read_nowait()  # raises the stream's exception (connection lost, bad chunk)
                if data and self.state.feed(data, now):
                    self._end()
                    return
            if content.is_eof():
                self.state.close(now)
                self._end()
        except Exception as exc:  # handed to the request's task, which classifies it
            self.exc = exc
            self._end()
        finally:
            self.busy = False

    def _end(self) -> None:
        self.proto.body_sink = None
        if not self.waiter.done():
            self.waiter.set_result(None)


class RunConnector(aiohttp.TCPConnector):
    """The run's connector: aiohttp's ``TCPConnector`` whose connections use :class:`SinkResponseHandler`
    (when this aiohttp builds them the expected way: ``sink_capable``) and which records, for every
    request that found the pool full, how long it waited for a connection (``queue_waits_s``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        factory = getattr(self, "_factory", None)
        self.sink_capable = isinstance(factory, functools.partial) and factory.func is ResponseHandler
        if self.sink_capable and isinstance(factory, functools.partial):
            # aiohttp types ``_factory`` as ``partial[ResponseHandler]``; a partial of the subclass is one.
            self._factory = functools.partial(  # type: ignore[assignment]
                SinkResponseHandler, *factory.args, **factory.keywords
            )
        self.queue_waits_s: list[float] = []
        self.wire: WirePool | None = None  # the run's lean client (open_session), used for http:// posts

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        limit = self.limit
        if not limit or len(getattr(self, "_acquired", ())) < limit:
            return await super().connect(req, traces, timeout)
        t0 = time.perf_counter()
        try:
            return await super().connect(req, traces, timeout)
        finally:
            self.queue_waits_s.append(time.perf_counter() - t0)


@contextlib.asynccontextmanager
async def open_session(
    limit: int, headers: dict[str, str] | None = None, *, keepalive_s: float = KEEPALIVE_S, wire: bool = True
) -> AsyncIterator[aiohttp.ClientSession]:
    """``async with open_session(limit) as session``: a client session for a run.

    A :class:`RunConnector` with ``limit`` connections (size it for the agents: aiohttp's default of 100
    makes requests queue while their clock runs), no session-wide time limit (aiohttp's default of 300 s
    would end long requests; ``Endpoint`` sets the request and stall limits), no cookie jar (a benchmark
    does not carry cookies between requests), and request bodies written inside ``session.post`` on
    Python 3.11 too (:func:`.eager.eager_body_writes`).

    ``keepalive_s``: an idle connection is closed by the client after this long (default
    :data:`KEEPALIVE_S`), before the server would close it: uvicorn (vLLM, SGLang, ``trtllm-serve``) and
    llama.cpp's HTTP server close idle connections after 5 s, and a request sent on a connection the
    server is closing at that moment fails before reaching it (a ``connect_error`` row; a server that
    closes after every response gets a fresh connection per request: :mod:`.wire`). Agents whose tool
    calls last longer than this reconnect for the next turn; the connection set-up is client lag (before
    ``t_send_s``), not TTFT.

    ``wire`` (default True): :func:`send_request` posts to ``http://`` endpoints through the lean client
    of :mod:`.wire` (its own ``limit`` connections, the same ``headers`` and ``keepalive_s``; its waits
    for a connection go to the same ``queue_waits_s``), which costs a fraction of aiohttp's CPU per
    request and per block; everything else (and ``https``) goes through aiohttp. ``wire=False``: every
    request through aiohttp, the body read by :class:`SinkResponseHandler`.
    """
    connector = RunConnector(limit=limit, limit_per_host=limit, keepalive_timeout=keepalive_s)
    if wire:
        connector.wire = WirePool(
            limit, headers, keepalive_s=keepalive_s, queue_waits_s=connector.queue_waits_s
        )
    session = aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    try:
        with eager_body_writes():
            async with session:
                yield session
    finally:
        if connector.wire is not None:
            connector.wire.close()


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# a token count above this is not a count (and would not fit the table's 64-bit integers)
MAX_COUNT = 2**53


def _count(v: Any) -> int | None:
    """A usage count as the table can hold it: an int in [0, MAX_COUNT), else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_COUNT else None


# bodies (the text between a template's head and tail, as sent) that BODY_MATCH and utf8_ok accepted: a
# token's text repeats across and within streams, and a set look-up costs less than the regex
_VALID_BODIES: set[bytes] = set()
_VALID_BODIES_MAX = 1 << 16
_VALID_BODY_BYTES = 64  # longer bodies are checked every time (a token's text is short)
_CHUNK_HEADS_MAX = 256  # per template: StreamState.feed_chunk's look-up of a block length's size line + head


def _chunk_head(n: int, head: bytes, k: int) -> bytes:
    """The start of an HTTP chunk ``n`` bytes long in all (size line, CRLF, data, CRLF) whose data is
    ``head + body + tail + b"\\n\\n"`` (``k``: ``len(head) + len(tail) + 2``): its size line, in lower-case
    hex without leading zeros, CRLF and ``head``; b"" when no such chunk is ``n`` bytes long. Only one
    size fits a length: a longer size line leaves less data, whose hex is no longer."""
    for digits in range(1, 9):
        size = n - 4 - digits
        if size >= k and len(b"%x" % size) == digits:
            return b"%x\r\n" % size + head
    return b""


class StreamState:
    """What one response body has said so far: feed it blocks of bytes with their arrival time (ns).

    SSE handling as a line reader would do it: lines split on ``\\n`` (a ``\\r`` before it is stripped with
    the payload), only ``data:`` lines count, comments and other fields are skipped, a final line without
    a newline counts at the end of the body (:meth:`close`). ``chunk_log``, when a list, gets
    ``(t_ns, tokens)`` for every visible chunk: ``tokens`` is the chunk's own count where the chunk carries
    ``usage`` (``continuous_usage_stats``: the rise of ``completion_tokens``), else 1 (the stream does not
    say more; :func:`finish_outcome` knows it is exact when the usage total equals the visible chunks).
    ``first_tokens`` is that count for the first visible chunk, None where the stream did not say.
    """

    __slots__ = (
        "_ct",
        "_pending",
        "_scan",
        "chunk_log",
        "done",
        "error",
        "finish_reason",
        "finished",
        "first_tokens",
        "has_tool_calls",
        "n_chunks",
        "scanner",
        "t_finish",
        "t_first",
        "t_first_answer",
        "t_last",
        "text_bytes",
        "usage",
    )

    def __init__(self, fast: bool = True, chunk_log: list | None = None) -> None:
        self.scanner = FastScanner() if fast else None
        self._scan = self.scanner.scan if self.scanner is not None else parse_event
        self._pending = b""
        self.chunk_log = chunk_log
        self.t_first = self.t_first_answer = self.t_last = self.t_finish = 0
        self.n_chunks = 0
        self.finished = self.done = self.has_tool_calls = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.first_tokens: int | None = None
        self.text_bytes = 0  # visible text bytes as sent (sse.text_bytes), over the visible chunks
        self._ct: int | None = None  # completion_tokens in the last usage seen (continuous usage)

    def feed(self, data: bytes, now: int) -> bool:
        """Take a block read at ``now``; True once the stream is over (``[DONE]`` or an error object).
        Raises :class:`.sse.MalformedChunk` for a ``data:`` payload that is not JSON."""
        scanner = self.scanner
        if scanner is not None and not self._pending:
            hot = scanner.hot
            if hot is not None and data.startswith(hot[0]) and data.endswith(hot[6]):
                # one event of the newest template, alone in its block (a stream's usual block): the
                # text between head and tail is a JSON string body (no newline), so this is one line
                h, q = hot[2], len(data) - hot[7]
                if q == h:
                    info, nb = hot[4], 0
                elif q > h and BODY_MATCH(data, h, q) is not None and (data.isascii() or utf8_ok(data)):
                    info, nb = hot[5], q - h
                else:
                    info = None
                if info is not None:  # as _lines does for a line that fits the template
                    if info.visible:
                        self.n_chunks += 1
                        self.text_bytes += nb
                        self.t_last = now
                        if not self.t_first:
                            self.t_first = now
                        if info.answer and not self.t_first_answer:
                            self.t_first_answer = now
                        if info.tool_call:
                            self.has_tool_calls = True
                        if self.chunk_log is not None:
                            self.chunk_log.append((now, 1))
                    return False
        if self._pending:
            data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        return self._lines(lines, now)

    def feed_chunk(self, data: bytes, now: int) -> bool:
        """Take one HTTP chunk of chunked transfer encoding read at ``now`` as a whole block (size line,
        data, CRLF), when its data is one event of the newest one-cut template: True once taken (a
        template event never ends the stream), with the same effect as reading the chunk's data with
        :meth:`feed`; False, with no effect, otherwise (the caller reads it as usual then).

        A stream's usual block when it is read as fast as it comes, so this is the per-token path: one
        dictionary look-up gives the only size line a block of this length can have (the lower-case hex
        of ``len(data)`` minus the line and the two CRLFs) followed by the template's head, two byte
        comparisons match it and the tail, and the body is checked as :meth:`_lines` checks it."""
        scanner = self.scanner
        hot = scanner.hot if scanner is not None else None
        if hot is None or self._pending:
            return False
        n = len(data)
        heads = hot[10]
        pre = heads.get(n)
        if pre is None:
            pre = _chunk_head(n, hot[0], hot[2] + hot[7])
            if len(heads) < _CHUNK_HEADS_MAX:  # block lengths seen per template (tokens vary in length)
                heads[n] = pre
        end = hot[11]
        if not pre or not data.startswith(pre) or not data.endswith(end):
            return False
        h, q = len(pre), n - len(end)
        if q == h:
            info, nb = hot[4], 0
        else:
            body = data[h:q]  # the head and tail are valid UTF-8 (cut from a decoded line at quotes)
            if body not in _VALID_BODIES:
                if BODY_MATCH(body) is None or not (body.isascii() or utf8_ok(body)):
                    return False
                if len(body) <= _VALID_BODY_BYTES and len(_VALID_BODIES) < _VALID_BODIES_MAX:
                    _VALID_BODIES.add(body)
            info, nb = hot[5], q - h
        if info.visible:
            self.n_chunks += 1
            self.text_bytes += nb
            self.t_last = now
            if not self.t_first:
                self.t_first = now
            if info.answer and not self.t_first_answer:
                self.t_first_answer = now
            if info.tool_call:
                self.has_tool_calls = True
            if self.chunk_log is not None:
                self.chunk_log.append((now, 1))
        return True

    def event_end(self) -> bytes | None:
        """The bytes that end every event :meth:`feed_events` can take (the newest one-cut template's
        tail and the blank line), or None when it would take none (no such template, a line pending)."""
        scanner = self.scanner
        if scanner is None or self._pending or scanner.hot is None:
            return None
        return scanner.hot[6]

    def feed_events(self, events: list[bytes], lens: list[int], now: int) -> bool:
        """Take a run of whole events read at ``now`` (``lens``: their lengths), each one ``data:`` line
        of the newest one-cut template and a blank line (``head + body + tail + b"\n\n"``, see
        :attr:`.sse.FastScanner.hot`), as a block of many such events comes (a stream read faster than it
        is sent): True once taken, with the same effect as ``feed(b"".join(events), now)``; False, with no
        effect, when any of them is not such an event (the caller feeds them as usual then).

        The checks run over the whole run at once (no Python per event): every event equals head + its
        body + tail (one comparison of the joined events with the joined reconstruction, which also
        rules out events shorter than head + tail), the bodies are JSON string bodies (one
        ``BODY_MATCH`` over the bodies joined by ``z``: a letter that is neither an escape character nor
        a hex digit, so no escape runs across two bodies and the joined text matches exactly when every
        body does) and valid UTF-8 (ASCII, or the ``z``-joined bodies decode: an invalid or cut sequence
        stays invalid next to a ``z``). The head and tail come from a line ``json.loads`` read, cut at
        ASCII quotes, so they are valid and each event is exactly what :meth:`_lines` would answer from
        the template: ``info_if_empty`` for an empty body, ``info_if_not_empty`` otherwise, one visible
        chunk of ``len(body)`` text bytes and one token each where that info is visible."""
        scanner = self.scanner
        hot = scanner.hot if scanner is not None else None
        if hot is None or self._pending:
            return False
        head, end, k, body_of, sep = hot[0], hot[6], hot[2] + hot[7], hot[8], hot[9]
        bodies = list(map(body_of, events))
        joined = b"".join(events)
        if joined != head + sep.join(bodies) + end:
            return False
        glued = b"z".join(bodies)
        if BODY_MATCH(glued) is None or not (joined.isascii() or utf8_ok(glued)):
            return False
        n = len(events)
        n_empty = lens.count(k)
        empty, full = hot[4], hot[5]
        vis = (n_empty if empty.visible else 0) + (n - n_empty if full.visible else 0)
        if vis:
            self.n_chunks += vis
            if full.visible:
                self.text_bytes += len(joined) - n * k
            self.t_last = now
            if not self.t_first:
                self.t_first = now
            if self.chunk_log is not None:
                self.chunk_log.extend([(now, 1)] * vis)
        if not self.t_first_answer and ((n_empty and empty.answer) or (n > n_empty and full.answer)):
            self.t_first_answer = now
        if (n_empty and empty.tool_call) or (n > n_empty and full.tool_call):
            self.has_tool_calls = True
        return True

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
        tb = 0  # their text bytes
        answer = tool = False
        try:
            for line in lines:
                if not line:
                    continue  # the blank line after every event
                info = None
                tokens = 1
                if hot is not None and line.startswith(hot[0]) and line.endswith(hot[1]):
                    # inline fast path: the newest one-cut template (see FastScanner.hot)
                    q = len(line) - hot[3]
                    if q == hot[2]:
                        info = hot[4]
                        nb = 0
                    elif (
                        q > hot[2]
                        and BODY_MATCH(line, hot[2], q) is not None
                        and (line.isascii() or utf8_ok(line))
                    ):
                        info = hot[5]
                        nb = q - hot[2]
                if info is None:
                    if not line.startswith(b"data:"):
                        continue  # comments (': keep-alive'), event:, id:, blank lines
                    if scanner is not None:
                        info = scanner.scan(line)
                        hot = scanner.hot
                        nb = scanner.last_bytes
                    else:
                        info = parse_event(line[5:])
                        nb = -1  # counted below if visible
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
                        ct = _count(info.usage.get("completion_tokens"))
                        if ct is not None:
                            first = info.visible and not self.n_chunks and not n
                            if self._ct is not None or first:  # a running count: this chunk's share
                                tokens = ct - (self._ct or 0)
                                if first:
                                    self.first_tokens = tokens
                            self._ct = ct
                if info.visible:
                    n += 1
                    tb += nb if nb >= 0 else text_bytes(line)
                    if info.answer:
                        answer = True
                    if info.tool_call:
                        tool = True
                    if log is not None:
                        log.append((now, tokens))
        finally:
            if n:
                self.n_chunks += n
                self.text_bytes += tb
                self.t_last = now
                if not self.t_first:
                    self.t_first = now
            if answer and not self.t_first_answer:
                self.t_first_answer = now
            if tool:
                self.has_tool_calls = True
        return False


class _Watch:
    """One timer per request for the three limits, measured on ``perf_counter_ns`` from the send: the
    whole request (``request_s``); the first visible token (``first_s``, until ``state.t_first`` is
    set); then the gap since the last visible token (``stall_s``, from ``state.t_last``, which the
    stream state sets as visible tokens arrive: nothing else resets it). Re-armed lazily when it fires
    early, and never set further ahead than the stall limit (a token may arrive meanwhile and bring the
    stall deadline forward). When a limit is reached the task is cancelled and ``fired`` says which
    (``request_timeout``, ``first_token_timeout`` or ``stall_timeout``)."""

    __slots__ = ("deadline_ns", "fired", "first_ns", "handle", "loop", "stall_ns", "state", "task")

    def __init__(self, request_s: float, first_s: float, stall_s: float, state: StreamState) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a request's watch is made inside its task"
        self.task = task
        self.fired: str | None = None
        now = time.perf_counter_ns()
        self.deadline_ns = now + int(request_s * 1e9)
        self.first_ns = now + int(first_s * 1e9)
        self.stall_ns = int(stall_s * 1e9)
        self.state = state
        # never asleep longer than the stall limit: a first token may come meanwhile and start it
        self.handle = self.loop.call_later(min(request_s, first_s, stall_s), self._check)

    def _check(self) -> None:
        now = time.perf_counter_ns()
        last = self.state.t_last
        token_due = last + self.stall_ns if last else self.first_ns
        due = min(self.deadline_ns, token_due)
        if now >= due:
            if now >= self.deadline_ns:
                self.fired = "request_timeout"
            else:
                self.fired = "stall_timeout" if last else "first_token_timeout"
            self.task.cancel()
        else:
            self.handle = self.loop.call_later(min(due - now, self.stall_ns) / 1e9, self._check)

    def close(self) -> None:
        self.handle.cancel()


_SSE_TYPES = ("text/event-stream", "")  # "": no Content-Type at all (read as SSE)


async def _excerpt(resp: aiohttp.ClientResponse, limit: int = 300) -> str:
    """The start of a response body as text (invalid UTF-8 replaced), read no further than needed."""
    data = await resp.content.read(limit * 4)
    return data.decode("utf-8", "replace")[:limit]


async def send_request(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    plan: RequestPlan,
    body: dict[str, Any] | bytes,
    origin_ns: int,
    *,
    secrets: tuple[str, ...] = (),
    fast: bool = True,
    chunk_log: list | None = None,
) -> RequestOutcome:
    """Send one streaming request and measure it. Never raises for anything a server or the network does:
    every outcome is a :class:`RequestOutcome` with ``t_end_s`` set (only the task's own cancellation
    passes through).

    With a session from :func:`open_session` the body is read by a :class:`_BodySink` inside the
    connection's protocol (one task wake-up per request, blocks stamped on arrival); with any other
    session, by ``StreamReader.readany`` in this task; both give the same outcome. ``fast=False``
    JSON-decodes every chunk (the reference path); ``chunk_log`` (a list) receives ``(t_ns, tokens)`` per
    visible chunk, ``t_ns`` on the ``perf_counter_ns`` clock. ``secrets`` are replaced by ``***`` in every
    detail (see :func:`endpoint_secrets`). Usage is checked against the request (:func:`check_usage`).
    ``body``: ``endpoint.body(plan)``, or its JSON as :func:`.bodies.body_bytes` builds it (what a run sends).
    """
    clock = time.perf_counter_ns
    t_send = (clock() - origin_ns) / 1e9
    out = RequestOutcome(t_send_s=t_send, t_end_s=_NAN)
    exact_prompt = None
    if isinstance(body, bytes):  # encoded by client.bodies.body_bytes: sizes from the plan
        out.target_prompt_tokens = target_prompt_tokens(endpoint, plan)
        if endpoint.api == "completions":
            exact_prompt = out.target_prompt_tokens
    elif endpoint.api == "completions":
        out.target_prompt_tokens = exact_prompt = len(body["prompt"])
    elif plan.turn.messages is None:
        out.target_prompt_tokens = plan.turn.input_tokens + MARKER_TOKENS
    st = StreamState(fast, chunk_log)
    raw = body if isinstance(body, bytes) else encode_body(body)
    watch = _Watch(endpoint.request_timeout_s, endpoint.first_token_timeout_s, endpoint.stall_timeout_s, st)
    wire = getattr(session.connector, "wire", None)
    wire_resp: list[WireResponse] = []
    headers_seen = False
    try:
        if wire is not None and wire.accepts(endpoint.url):
            await _send_wire(wire, endpoint.url, raw, st, out, origin_ns, secrets, wire_resp)
        else:
            data = SentBody(raw)
            async with session.post(endpoint.url, data=data) as resp:
                headers_seen = True
                if data.sent_ns:
                    out.t_send_s = (data.sent_ns - origin_ns) / 1e9
                out.http_status = resp.status
                ctype = resp.headers.get("Content-Type", "").partition(";")[0].strip().lower()
                if resp.status != 200:
                    retry = resp.headers.get("Retry-After")
                    _http_failure(out, resp.status, retry, await _excerpt(resp), secrets)
                elif ctype not in _SSE_TYPES:
                    _not_sse(out, resp.headers.get("Content-Type", ""), await _excerpt(resp), secrets)
                else:
                    await _read_body(resp, st)
        if st.error is not None:
            out.ok, out.error = False, "stream_error"
            out.error_detail = scrub(st.error[:300], secrets)
    except asyncio.CancelledError:
        if watch.fired is None or watch.task.uncancel() > 0:
            raise  # not ours (the run is ending), or ours and someone else's at once
        out.ok, out.error = False, watch.fired
        out.error_detail = {
            "stall_timeout": f"no visible token for {endpoint.stall_timeout_s:g} s after the last one",
            "first_token_timeout": f"no visible token within {endpoint.first_token_timeout_s:g} s",
            "request_timeout": f"longer than {endpoint.request_timeout_s:g} s",
        }[watch.fired]
    except MalformedChunk as exc:
        out.ok, out.error, out.error_detail = False, "malformed_json", scrub(str(exc), secrets)
    except (aiohttp.ClientError, OSError) as exc:  # ClientConnectorError, ServerDisconnected, resets...
        out.ok = False
        if wire_resp:
            headers_seen = wire_resp[0].status is not None
        out.error = "stream_cut" if headers_seen else "connect_error"
        out.error_detail = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
    except Exception as exc:  # a server must never end a run: the row names the exception
        out.ok, out.error = False, "client_error"
        out.error_detail = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
    finally:
        watch.close()
        out.t_end_s = (clock() - origin_ns) / 1e9
        if wire_resp:  # what the lean client saw, whatever ended the request
            sent = wire_resp[0]
            if sent.sent_ns:
                out.t_send_s = (sent.sent_ns - origin_ns) / 1e9
            out.http_status = sent.status
    finish_outcome(
        out,
        st,
        origin_ns,
        target_output=plan.turn.output_tokens if endpoint.force_output_fields else None,
        exact_prompt=exact_prompt,
    )
    return out


def _http_failure(
    out: RequestOutcome, status: int, retry: str | None, excerpt: str, secrets: tuple[str, ...]
) -> None:
    """A non-200 response as the row's error (``rate_limited`` for 429, else ``http_error``)."""
    text = scrub(excerpt, secrets)
    out.ok = False
    if status == 429:
        out.retry_after_s = parse_retry_after(retry)
        out.error = "rate_limited"
        out.error_detail = scrub(f"429 Retry-After={retry}: {text}", secrets)
    else:
        out.error = "http_error"
        out.error_detail = f"{status}: {text}"


def _not_sse(out: RequestOutcome, ctype: str, excerpt: str, secrets: tuple[str, ...]) -> None:
    out.ok, out.error = False, "not_sse"
    shown = scrub(ctype, secrets)
    out.error_detail = f"200 with Content-Type {shown!r}, not text/event-stream: " + scrub(excerpt, secrets)


async def _send_wire(
    wire: WirePool,
    url: str,
    body: bytes,
    st: StreamState,
    out: RequestOutcome,
    origin_ns: int,
    secrets: tuple[str, ...],
    holder: list[WireResponse],
) -> None:
    """The request through the run's lean client (:mod:`.wire`): same outcome as the aiohttp path."""
    resp = await wire.post(url, body, st, holder)
    if resp.exc is not None:
        raise resp.exc
    assert resp.status is not None
    if resp.status != 200:
        excerpt = bytes(resp.excerpt).decode("utf-8", "replace")[:300]
        _http_failure(out, resp.status, resp.headers.get("retry-after"), excerpt, secrets)
    elif not resp.sse:
        excerpt = bytes(resp.excerpt).decode("utf-8", "replace")[:300]
        _not_sse(out, resp.headers.get("content-type", ""), excerpt, secrets)


async def _read_body(resp: aiohttp.ClientResponse, st: StreamState) -> None:
    """Read a 200 response's SSE body into ``st``: by a sink in the protocol where the connection has one
    (and the body is not over yet), else by ``readany`` here. Raises what the stream raised."""
    clock = time.perf_counter_ns
    content = resp.content
    conn = resp.connection
    proto = conn.protocol if conn is not None else None
    if isinstance(proto, SinkResponseHandler) and not content.is_eof() and content.exception() is None:
        sink = _BodySink(proto, content, st)
        if proto.early_payload is content:  # body bytes came before the sink: stamp them on arrival
            sink.pump(proto.early_ns)
            if st.t_last:
                st.t_last = max(st.t_last, proto.rx_ns)
        if not sink.waiter.done():
            proto.body_sink = sink
            try:
                await sink.waiter
            finally:
                proto.body_sink = None
        if sink.exc is not None:
            raise sink.exc
        return
    while True:
        data = await content.readany()
        now = clock()
        if not data:
            st.close(now)
            return
        if st.feed(data, now):
            return


PROBE_WORDS = (48, 800)  # filler words of the two probes (the second stays well inside a 4K context)


async def calibrate_chat_filler(
    session: aiohttp.ClientSession, endpoint: Endpoint, secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Measure how many tokens the server counts for chat filler: two non-streaming probes of
    :data:`PROBE_WORDS` words (fresh random markers, one output token), ``usage.prompt_tokens`` read back,
    a line through the two points: ``tokens_per_word`` (slope) and ``overhead_tokens`` (intercept: chat
    template and marker line). Returns them with the probes, or ``{"error": ...}`` when the server did not
    say (the caller keeps the defaults)."""
    points = []
    try:
        for n_words in PROBE_WORDS:
            marker = f"{random.SystemRandom().getrandbits(107) % 10**32:032d}"
            body: dict[str, Any] = {
                "model": endpoint.model,
                "messages": chat_probe_messages(marker, n_words),
                "max_tokens": 1,
                "max_completion_tokens": 1,
                "stream": False,
            }
            body.update(endpoint.extra_body)
            async with asyncio.timeout(min(endpoint.request_timeout_s, 120)):
                async with session.post(endpoint.url, data=SentBody(encode_body(body))) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        return {"error": scrub(f"probe: HTTP {resp.status}: {text[:200]}", secrets)}
            reply = json.loads(text)
            usage = reply.get("usage") if isinstance(reply, dict) else None
            tokens = _count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
            if tokens is None:
                return {"error": "probe: no usage.prompt_tokens in the response"}
            points.append((n_words, tokens))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RecursionError) as exc:
        return {"error": scrub(f"probe: {type(exc).__name__}: {exc}"[:300], secrets)}
    (w1, t1), (w2, t2) = points
    slope = (t2 - t1) / (w2 - w1)
    if not slope > 0:
        return {"error": f"probe: prompt tokens did not grow with the words ({points})"}
    return {"tokens_per_word": slope, "overhead_tokens": t1 - slope * w1, "probes": points}


def finish_outcome(
    out: RequestOutcome,
    st: StreamState,
    origin_ns: int,
    *,
    target_output: int | None = None,
    exact_prompt: int | None = None,
) -> None:
    """Fill ``out`` from what the stream said (times, counts, usage, the error classes that depend on it).

    A usage count that is not an integer in [0, :data:`MAX_COUNT`) is recorded as missing (None), with
    ``usage_mismatch`` set and the value in ``note``: a server's value never reaches the table unchecked.
    The usage the server sent is then checked (:func:`check_usage`, with ``target_output`` and
    ``exact_prompt``) before a missing output count falls back to the visible chunks.
    """
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
        bad: list[str] = []

        def count(obj: dict, key: str, where: str) -> int | None:
            v = obj.get(key)
            c = _count(v)
            if c is None and v is not None:
                bad.append(f"{where}{key}={_short(v)}")
            return c

        out.prompt_tokens = count(usage, "prompt_tokens", "")
        out.output_tokens = count(usage, "completion_tokens", "")
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            out.cached_prompt_tokens = count(details, "cached_tokens", "prompt_tokens_details.")
        cdetails = usage.get("completion_tokens_details")
        if isinstance(cdetails, dict):
            out.reasoning_tokens = count(cdetails, "reasoning_tokens", "completion_tokens_details.")
        if bad:
            _flag(out, "usage not a count: " + ", ".join(bad))
    if st.first_tokens is not None and st.first_tokens >= 0:
        out.first_chunk_tokens = st.first_tokens
    elif out.output_tokens is not None and out.output_tokens == n_chunks > 0:
        out.first_chunk_tokens = 1  # as many tokens as visible chunks, each at least one: one each
    if out.ok and (st.done or st.finished) and n_chunks:
        check_usage(out, target_output=target_output, exact_prompt=exact_prompt, text_bytes=st.text_bytes)
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


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else repr(v) if isinstance(v, int | float) else type(v).__name__
    return text if len(text) <= 24 else text[:21] + "..."


def _flag(out: RequestOutcome, why: str) -> None:
    out.usage_mismatch = True
    out.note = f"{out.note}; {why}" if out.note else why


def check_usage(
    out: RequestOutcome, *, target_output: int | None, exact_prompt: int | None, text_bytes: int | None = None
) -> None:
    """Check a finished request's ``usage`` against what was asked and what was streamed; a row that
    disagrees gets ``usage_mismatch`` and a short ``note`` (and its speed then uses the streamed
    visible-chunk count, :func:`agentperf_kit.metrics.derive_request_metrics`). Checked on successful
    rows only (a failed row's counts are not used). Rules:

    - ``cached_tokens`` <= ``prompt_tokens``; ``reasoning_tokens`` <= ``completion_tokens``;
    - ``completion_tokens`` >= the visible chunks streamed (every visible chunk holds a token);
    - ``completion_tokens`` <= ``text_bytes``, the bytes of visible text streamed (as sent, escapes
      included: :func:`.sse.text_bytes`): every token of the output comes with at least one byte of
      text (a token whose text is held back or empty is followed by text that carries it);
    - with the output length forced (``target_output``: ``ignore_eos`` + ``min_tokens``),
      ``completion_tokens`` == the target;
    - with a known prompt size (``exact_prompt``: token ids on ``/completions``), ``prompt_tokens`` == it.

    A missing count is not checked. Counts that are not integers in range were flagged already by
    :func:`finish_outcome`.
    """
    if not out.ok:
        return
    prompt, cached, got = out.prompt_tokens, out.cached_prompt_tokens, out.output_tokens
    if cached is not None and prompt is not None and cached > prompt:
        _flag(out, f"cached_tokens {cached} > prompt_tokens {prompt}")
    if got is not None:
        if got < out.n_chunks:
            _flag(out, f"completion_tokens {got} < {out.n_chunks} visible chunks streamed")
        if text_bytes is not None and got > text_bytes:
            _flag(out, f"completion_tokens {got} > {text_bytes} bytes of visible text streamed")
        if target_output is not None and got != target_output:
            _flag(out, f"completion_tokens {got} != forced output {target_output}")
        if out.reasoning_tokens is not None and out.reasoning_tokens > got:
            _flag(out, f"reasoning_tokens {out.reasoning_tokens} > completion_tokens {got}")
    if exact_prompt is not None and prompt is not None and prompt != exact_prompt:
        _flag(out, f"prompt_tokens {prompt} != {exact_prompt} token ids sent")
