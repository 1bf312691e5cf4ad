"""A lean HTTP/1.1 client for a run's streaming requests: one ``asyncio.Protocol`` per connection, the
response parsed in Python inside ``data_received`` and its body fed straight to a
:class:`~agentperf_kit.client.http.StreamState`.

Why: with aiohttp, every block of a streamed body goes through its protocol, its HTTP parser's
callbacks and a ``StreamReader`` before the client sees it, and every request through the session's
request machinery; at 1,024 streams of 50 tokens/s that was most of the client's CPU
(``benchmarks/client_outside.py --profile``) and made the event loop late to stamp arrivals. Here a block
costs one ``data_received`` call, a chunk-size scan and the SSE scan; a request costs one write and one
task wake-up (at the end of its stream). aiohttp still serves everything else of a run (``/models``,
chat filler calibration, telemetry) and ``https`` endpoints.

What it does of HTTP/1.1: ``POST`` with ``Content-Length``; responses framed by chunked transfer
encoding, ``Content-Length`` or the connection's close; ``1xx`` interim responses skipped;
``Content-Encoding`` ``gzip`` / ``deflate`` decoded (the client asks for ``identity``); keep-alive
(``Connection: close`` and HTTP/1.0 respected; an idle connection is not reused after ``keepalive_s``;
a server seen closing connections right after a response without saying so, as llama.cpp's
``llama-server`` does after every streamed response while its headers promise ``Keep-Alive``, gets a
fresh connection per request from then on);
at most ``limit`` connections, a request that finds them all busy waits (the wait is recorded, as
:class:`~agentperf_kit.client.http.RunConnector` does). A connection whose response was not read to its
end (a cancelled request, an error body cut short) is closed, never reused. A request is never sent
twice: one that meets a connection the server is closing is a failed row (``connect_error``), as the
server may have read it (a resend would hide a server that drops requests it has read).

Errors raised to :func:`~agentperf_kit.client.http.send_request`, which classifies them as aiohttp's:
``OSError`` from connecting; ``aiohttp.ServerDisconnectedError`` when the connection closes before the
response headers; ``aiohttp.ClientPayloadError`` when it closes inside a body or the framing is invalid;
:class:`WireError` (an ``aiohttp.ClientResponseError``-free ``aiohttp.ClientError``) for a response that
is not HTTP/1.x.
"""

from __future__ import annotations

import asyncio
import collections
import time
import zlib
from typing import Any, cast

import aiohttp
from yarl import URL

__all__ = ["WireError", "WirePool", "WireResponse"]

_clock = time.perf_counter_ns
_MAX_HEAD = 64 << 10  # response status line + headers, bytes
_MAX_SIZE_LINE = 1 << 10  # a chunk-size line (with extensions)
_EXCERPT = 1200  # bytes of a non-SSE body kept for the row's detail
_MAX_DISCARD = 1 << 20  # bytes read after the stream said it was over, before giving the connection up
_MIN_RUN = 1024  # bytes left in a block from which a run of whole events is tried (WireResponse._events_run)
# chunk-size lines as int(line, 16) reads them (lower-case hex up to 4095; others added as they come)
_HEX: dict[bytes, int] = {b"%x" % i: i for i in range(1, 4096)}
_HEX_MAX = 16384  # lines kept at most (other sizes take the general path)
# an idle connection the server closes sooner than this after a kept-alive response: the server closes
# after every response, whatever its headers say (seconds; idle timeouts are seconds long)
_PROMPT_CLOSE_S = 0.05


class WireError(aiohttp.ClientError):
    """A response the lean client cannot read (not HTTP/1.x, headers too large, unknown encoding)."""


class WireResponse:
    """One request's response as it arrives: status and headers, then the body, fed to ``state`` (an SSE
    ``StreamState``) for a ``200 text/event-stream`` (``sse``), else kept (the first :data:`_EXCERPT`
    bytes, ``excerpt``). ``waiter`` is done when the request's task has something to do: the stream said
    it was over, the body ended, an excerpt is in, or an error (``exc``)."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_crlf",
        "_decomp",
        "_discarded",
        "_fast",
        "_framing",
        "_phase",
        "_remaining",
        "_runs",
        "conn",
        "exc",
        "excerpt",
        "headers",
        "keep_alive",
        "sent_ns",
        "sse",
        "state",
        "status",
        "waiter",
    )

    def __init__(self, conn: _Conn, state: Any) -> None:
        self.conn = conn
        self.state = state
        self.waiter: asyncio.Future[None] = conn.loop.create_future()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.sse = False
        self.excerpt = bytearray()
        self.exc: BaseException | None = None
        self.keep_alive = False
        self.sent_ns = 0  # when the request's last byte was handed to the socket (perf_counter_ns)
        self._phase = 0  # 0 head, 1 body, 2 message over
        self._buf = b""
        self._framing = "close"  # "chunked", "length" or "close"
        self._remaining = 0  # body bytes left ("length")
        self._chunk_left = 0  # bytes left in the current chunk ("chunked")
        self._crlf = False  # a chunk's data is read, its CRLF is not
        self._decomp: Any = None
        self._discarded = 0
        self._fast = False  # chunked SSE, not compressed, not over, no partial chunk: data()'s fast path
        # runs of whole template events taken at once (_events_run); a StreamState has it, a plain sink not
        self._runs: Any = state if hasattr(state, "feed_events") else None

    # -- what the task reads ---------------------------------------------------------------------------

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def finished(self) -> bool:
        """The task has what it waits for."""
        return self.waiter.done()

    # -- fed by the connection ---------------------------------------------------------------------------

    def data(self, data: bytes, now: int, tried: bool = False) -> None:
        """A block read at ``now``; ``tried``: the caller offered it to ``StreamState.feed_chunk`` already."""
        if self._fast:  # the common block of a stream: one whole chunk, nothing pending
            if not tried and self._runs is not None and self._runs.feed_chunk(data, now):
                return  # one event of the stream's template (StreamState.feed_chunk)
            eol = data.find(b"\r\n", 0, 18)
            if eol > 0 and data.endswith(b"\r\n"):
                try:
                    size = int(data[:eol], 16)
                except ValueError:
                    size = -1
                if size > 0 and eol + 4 + size == len(data):
                    try:
                        if self.state.feed(data[eol + 2 : -2], now):
                            self._finish()
                    except Exception as exc:  # a malformed chunk: handed to the task
                        self.fail(exc)
                    return
        try:
            if self._phase == 0:
                data = self._head(data, now)
                if self._phase == 0:
                    return
            if self._phase == 1 and data:
                self._body(data, now)
            if not self.sse and self.excerpt and not self.waiter.done():
                self._finish()  # an error body: what came with this block is the excerpt
        except Exception as exc:  # framing error: the response cannot be read further
            self.fail(exc)

    def lost(self, exc: BaseException | None, now: int) -> None:
        """The connection closed (``exc`` from the transport, None for a clean close)."""
        if self._phase == 2:
            return
        if self._phase == 0:
            self.fail(aiohttp.ServerDisconnectedError())
        elif self._framing == "close":
            self._message_end(now)
        else:
            why = f": {exc!r}" if exc is not None else ""
            self.fail(aiohttp.ClientPayloadError(f"Response payload is not completed{why}"))

    def fail(self, exc: BaseException) -> None:
        self._phase = 2
        self._fast = False
        if not self.waiter.done():
            self.exc = exc
            self.waiter.set_result(None)
        self.conn.drop(self)

    def _finish(self) -> None:
        self._fast = False
        if not self.waiter.done():
            self.waiter.set_result(None)

    def _head(self, data: bytes, now: int) -> bytes:
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise WireError(f"response headers longer than {_MAX_HEAD} bytes")
                self._buf = buf
                return b""
            lines = buf[:end].decode("latin-1").split("\r\n")
            buf = buf[end + 4 :]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise WireError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
            status = int(code)
            if 100 <= status < 200:
                continue  # interim (100 Continue, 103 Early Hints): the real response follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise WireError(f"bad response header line {line[:80]!r}")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            break
        self._buf = b""
        self.status, self.headers = status, headers
        conn = headers.get("connection", "").lower()
        self.keep_alive = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = "chunked"
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise aiohttp.ClientPayloadError(f"bad Content-Length {length[:40]!r}")
            self._framing, self._remaining = "length", int(length)
        else:
            self._framing, self.keep_alive = "close", False
        if status in (204, 304):
            self._framing, self._remaining = "length", 0
        enc = headers.get("content-encoding", "identity").strip().lower()
        if enc == "gzip":
            self._decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._decomp = _Deflate()
        elif enc not in ("identity", ""):
            raise WireError(f"Content-Encoding {enc!r} not supported (the client asks for identity)")
        ctype = headers.get("content-type", "").partition(";")[0].strip().lower()
        self.sse = status == 200 and ctype in ("text/event-stream", "")
        self._phase = 1
        if self._framing == "length" and self._remaining == 0:
            self._message_end(now)
        self._fast = self.sse and self._framing == "chunked" and self._decomp is None
        return buf

    def _body(self, data: bytes, now: int) -> None:
        framing = self._framing
        if framing == "chunked":
            self._chunked(data, now)
        elif framing == "length":
            take = data[: self._remaining] if len(data) > self._remaining else data
            self._remaining -= len(take)
            self._payload(take, now)
            if self._remaining == 0 and self._phase == 1:
                if len(take) < len(data):
                    self.keep_alive = False  # bytes after the message: the connection is not reusable
                self._message_end(now)
        else:
            self._payload(data, now)

    def _chunked(self, data: bytes, now: int) -> None:
        """Chunked transfer encoding: the block's chunk data, joined, go to :meth:`_payload` in one call
        (they share the block's arrival time). A chunk cut by the block's end is continued by the
        next block (``_chunk_left`` bytes of data to come, then its CRLF)."""
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        parts: list[bytes] = []
        append = parts.append
        find = buf.find
        end_of_message = False
        try:
            left = self._chunk_left
            if left:  # the rest of a chunk begun in an earlier block
                if left > n:
                    append(buf)
                    self._chunk_left = left - n
                    pos = n
                    return
                append(buf[:left])
                pos = left
                self._chunk_left = 0
                self._crlf = True
            if self._crlf:
                if n - pos < 2:
                    return
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise aiohttp.ClientPayloadError("chunk not followed by CRLF")
                pos += 2
                self._crlf = False
            # a long block: runs of whole template events are taken at once (_events_run), tried here and,
            # when the stream had no template yet (its first block), once more after a few chunks
            long = n - pos >= _MIN_RUN and self._runs is not None and self.sse and not self._decomp
            tries = 0 if long else 2
            while pos < n:
                if tries < 2 and (tries == 0 or len(parts) >= 3):
                    tries += 1
                    if parts:  # what came before goes first
                        self._payload(parts[0] if len(parts) == 1 else b"".join(parts), now)
                        parts.clear()
                    if self._phase != 1:  # it failed: the connection is given up
                        pos = n
                        return
                    if self.waiter.done():  # the stream is over: the rest is read as usual (discarded)
                        tries = 2
                        continue
                    was = pos
                    pos = self._events_run(buf, pos, now)
                    if pos != was or n - pos < _MIN_RUN or self._runs.event_end() is not None:
                        tries = 2  # taken, or a template that did not fit: no second try
                    continue
                eol = find(b"\r\n", pos)
                if eol < 0:
                    if n - pos > _MAX_SIZE_LINE:
                        raise aiohttp.ClientPayloadError("chunk-size line too long")
                    break
                try:
                    size = int(buf[pos:eol], 16)
                except ValueError:
                    size = _chunk_size(buf[pos:eol])  # chunk extensions, or not a size at all
                if size <= 0:
                    if size < 0:
                        raise aiohttp.ClientPayloadError(f"bad chunk size {buf[pos:eol][:20]!r}")
                    # last chunk: trailers (usually none), then the blank line
                    end = find(b"\r\n\r\n", eol)  # at eol itself when there are no trailers
                    if end < 0:
                        if n - pos > _MAX_HEAD:
                            raise aiohttp.ClientPayloadError("chunked trailers too long")
                        break
                    if end + 4 < n:
                        self.keep_alive = False  # bytes after the message: the connection is not reusable
                    end_of_message = True
                    pos = n
                    break
                start = eol + 2
                end = start + size
                if end + 2 > n:  # the chunk goes on in the next block
                    if end > n:
                        append(buf[start:])
                        self._chunk_left = end - n
                        pos = n
                    else:  # its CRLF is not all here: checked when the rest comes
                        append(buf[start:end])
                        self._crlf = True
                        pos = end
                    break
                if buf[end] != 13 or buf[end + 1] != 10:
                    raise aiohttp.ClientPayloadError("chunk not followed by CRLF")
                append(buf[start:end])
                pos = end + 2
        finally:
            self._buf = buf[pos:] if pos < n else b""
            if self._fast and (self._buf or self._chunk_left or self._crlf):
                self._fast = False  # a chunk goes on in the next block: the general path until it ends
            elif not self._fast and self.sse and self._decomp is None and self._phase == 1:
                self._fast = not (self._buf or self._chunk_left or self._crlf or self.waiter.done())
            if parts:
                self._payload(parts[0] if len(parts) == 1 else b"".join(parts), now)
        if end_of_message and self._phase == 1:
            self._message_end(now)

    def _events_run(self, buf: bytes, pos: int, now: int) -> int:
        """Whole chunks from ``pos`` on, each one SSE event of the stream's newest template (a stream
        read faster than the server sends it: hundreds of chunks per block), given to the stream state
        in one call (:meth:`StreamState.feed_events`) instead of one Python pass per chunk and per line;
        returns where the general path goes on (``pos`` when nothing was taken).

        The run ends at the last chunk in the block that ends with the template's tail (what comes after
        it, e.g. the finish and usage chunks, ``[DONE]``, a chunk cut by the block's end, takes the
        general path). Split at every CRLF, the run must be ``size, data, size, data, ..., b""`` with each
        ``size`` line read as :meth:`_chunked` reads it (``int(line, 16)``) equal to its data's length:
        then the general path would cut the same chunks (it reads a size line up to its first CRLF, then
        that many bytes, then a CRLF), and all that is left to check is the events themselves."""
        state = self._runs
        end = state.event_end()
        if end is None:
            return pos
        cut = buf.rfind(end + b"\r\n", pos)
        if cut < 0:
            return pos
        cut += len(end) + 2
        parts = (buf[pos:cut] if pos or cut < len(buf) else buf).split(b"\r\n")
        events = parts[1::2]  # parts ends with b"" (the run ends with CRLF), so pairs are whole
        lens = list(map(len, events))
        size_lines = parts[0:-1:2]
        if list(map(_HEX.get, size_lines)) != lens:
            if len(_HEX) >= _HEX_MAX:
                return pos
            for line in set(size_lines).difference(_HEX):
                if len(line) > 8:  # not a size this reader caches: the general path reads it
                    return pos
                try:
                    _HEX[line] = int(line, 16)
                except ValueError:  # extensions or not a size: the general path reads it
                    return pos
            if list(map(_HEX.__getitem__, size_lines)) != lens:
                return pos
        if 0 in lens or not state.feed_events(events, lens, now):  # a size-0 chunk ends the body
            return pos
        return cut

    def _payload(self, data: bytes, now: int) -> None:
        if self._decomp is not None:
            data = self._decomp.decompress(data)
        if not data:
            return
        if self.waiter.done():  # the stream said it was over: read to the end of the message, unused
            self._discarded += len(data)
            if self._discarded > _MAX_DISCARD:
                self.conn.drop(self)
            return
        if self.sse:
            try:
                if self.state.feed(data, now):
                    self._finish()
            except Exception as exc:  # a malformed chunk: handed to the task, the connection given up
                self.fail(exc)
        elif len(self.excerpt) < _EXCERPT:
            self.excerpt += data[: _EXCERPT - len(self.excerpt)]

    def _message_end(self, now: int) -> None:
        if self._decomp is not None:
            rest = self._decomp.flush()
            self._decomp = None
            if rest:
                self._payload(rest, now)
        if self._phase != 1:
            return
        self._phase = 2
        self._fast = False
        if self.sse and not self.waiter.done():
            try:
                self.state.close(now)  # a last line without a newline still counts
            except Exception as exc:
                self.exc = exc
        self._finish()
        self.conn.done(self)


def _chunk_size(text: bytes) -> int:
    """A chunk-size line's size (extensions after ``;`` ignored); -1 when it is not one."""
    text = text.split(b";", 1)[0].strip()
    if not text or text[:1] in (b"+", b"-", b"_"):
        return -1
    try:
        return int(text, 16)
    except ValueError:
        return -1


class _Deflate:
    """``Content-Encoding: deflate``: zlib-wrapped, or raw deflate as some servers send it."""

    __slots__ = ("_d", "_first")

    def __init__(self) -> None:
        self._d = zlib.decompressobj()
        self._first = True

    def decompress(self, data: bytes) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._d.decompress(data)
            except zlib.error:
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return self._d.flush()


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: bytes go to the current :class:`WireResponse` with their arrival time
    (``perf_counter_ns``, taken once per block)."""

    __slots__ = (
        "closed",
        "drained",
        "idle_for",
        "idle_since",
        "key",
        "loop",
        "pool",
        "resp",
        "served",
        "transport",
    )

    def __init__(self, pool: WirePool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.resp: WireResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self.served = 0  # responses read to their end on this connection
        self.idle_for = 0.0  # how long it was idle before its current request (s; 0 for a new one)
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport
        t.set_write_buffer_limits(high=0)  # told when a buffered body has left (resume_writing)

    def data_received(self, data: bytes) -> None:
        now = _clock()
        resp = self.resp
        if resp is None:  # bytes on an idle connection: the server is confused, do not reuse it
            self.close()
            return
        runs = resp._runs
        if resp._fast and runs is not None:  # a stream's usual block: one template event (feed_chunk)
            if runs.feed_chunk(data, now):
                return
            resp.data(data, now, True)
            return
        resp.data(data, now)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        by_server = not self.closed
        self.closed = True
        resp = self.resp
        self.resp = None
        if by_server and self.served:
            if resp is None:  # closed while idle, right after a response it said was kept alive
                prompt = self.loop.time() - self.idle_since < _PROMPT_CLOSE_S
            else:  # a request that met the close got no byte back, on a connection idle only briefly
                prompt = resp.status is None and not resp._buf and self.idle_for < _PROMPT_CLOSE_S
            if prompt:
                self.pool.closes_after_response.add(self.key)
        if resp is not None:
            resp.lost(exc, time.perf_counter_ns())
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)  # the response (above) says what happened
        self.pool._forget(self)

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # -- the pool's side ---------------------------------------------------------------------------------

    def done(self, resp: WireResponse) -> None:
        """``resp``'s message is over: back to the pool when reusable, else closed."""
        if self.resp is resp:
            self.resp = None
            self.served += 1
            if resp.keep_alive and not self.closed and self.key not in self.pool.closes_after_response:
                self.pool._release(self)
            else:
                self.close()

    def drop(self, resp: WireResponse) -> None:
        """``resp`` will not be read to its end: the connection is closed."""
        if self.resp is resp:
            self.resp = None
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class WirePool:
    """At most ``limit`` connections to the endpoints of a run, each sending one request at a time.

    ``headers``: sent with every request (the session's: credentials and ``--header`` values).
    ``keepalive_s``: an idle connection older than this is closed instead of reused.
    ``queue_waits_s``: a list that gets, for every request that found every connection busy, how long
    it waited for one (seconds)."""

    def __init__(
        self,
        limit: int,
        headers: dict[str, str] | None = None,
        *,
        keepalive_s: float = 4.0,
        queue_waits_s: list[float] | None = None,
    ) -> None:
        for name, value in (headers or {}).items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: a newline or NUL in a header name or value")
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.queue_waits_s = queue_waits_s if queue_waits_s is not None else []
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: dict[tuple[str, int], list[_Conn]] = collections.defaultdict(list)
        self._all: set[_Conn] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._heads: dict[str, tuple[tuple[str, int], bytes]] = {}
        self.closed = False
        # (host, port) seen closing connections right after a response they said was kept alive: these
        # get a fresh connection per request
        self.closes_after_response: set[tuple[str, int]] = set()

    @staticmethod
    def accepts(url: str) -> bool:
        """Plain ``http://`` URLs (``https`` goes through aiohttp)."""
        return url.startswith("http://")

    def _head(self, url: str) -> tuple[tuple[str, int], bytes]:
        """(host, port) and the request head up to ``Content-Length: `` for ``url``."""
        got = self._heads.get(url)
        if got is None:
            u = URL(url)
            host, port = u.raw_host or "", u.port or 80
            hostport = u.raw_host if u.port == 80 or u.port is None else f"{u.raw_host}:{u.port}"
            if ":" in host and not host.startswith("["):  # an IPv6 literal in the Host header
                hostport = f"[{host}]" if u.port in (80, None) else f"[{host}]:{u.port}"
            head = (
                f"POST {u.raw_path_qs or '/'} HTTP/1.1\r\nHost: {hostport}\r\n"
                "Accept: */*\r\nAccept-Encoding: identity\r\nUser-Agent: agentperf-kit\r\n"
                f"{self._extra}Content-Type: application/json\r\nContent-Length: "
            ).encode()
            got = self._heads[url] = ((host, port), head)
        return got

    async def post(self, url: str, body: bytes, state: Any, holder: list | None = None) -> WireResponse:
        """Send ``body`` to ``url`` and return the response once its task has something to do (see
        :class:`WireResponse`); ``sent_ns`` is when the body's last byte was handed to the socket.
        ``holder`` (a list) gets the response as soon as it exists, for a caller that is cancelled
        meanwhile. The connection is closed if this is cancelled before the response is read to its
        end."""
        key, head = self._head(url)
        conn = await self._acquire(key)
        resp = WireResponse(conn, state)
        conn.resp = resp
        if holder is not None:
            holder.append(resp)
        try:
            transport = conn.transport
            assert transport is not None
            transport.writelines((head, b"%d\r\n\r\n" % len(body), body))
            if transport.get_write_buffer_size():
                drained = conn.drained
                if drained is not None and not drained.done():
                    await drained
            resp.sent_ns = time.perf_counter_ns()
            if not resp.waiter.done():
                await resp.waiter
        except BaseException:
            conn.drop(resp)
            raise
        return resp

    async def _acquire(self, key: tuple[str, int]) -> _Conn:
        if self.closed:
            raise aiohttp.ClientConnectionError("the run's connection pool is closed")
        t0 = 0.0
        try:
            while True:
                idle = self._idle.get(key)
                now = self.loop.time()
                while idle:
                    conn = idle.pop()
                    if not conn.closed and now - conn.idle_since <= self.keepalive_s:
                        conn.idle_for = now - conn.idle_since
                        return conn
                    conn.close()
                    self._all.discard(conn)
                if len(self._all) + self._opening < self.limit:
                    break
                if not t0:
                    t0 = time.perf_counter()
                fut = self.loop.create_future()
                self._waiters.append(fut)
                try:
                    await fut
                except BaseException:
                    if fut.done() and not fut.cancelled():
                        self._wake()  # woken, then cancelled: pass the turn on
                    fut.cancel()
                    raise
        finally:
            if t0:
                self.queue_waits_s.append(time.perf_counter() - t0)
        self._opening += 1
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self, key), *key)
        except BaseException:
            self._opening -= 1
            self._wake()
            raise
        self._opening -= 1
        if conn.closed:  # lost while connecting
            self._wake()
            raise aiohttp.ServerDisconnectedError()
        self._all.add(conn)
        return conn

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _release(self, conn: _Conn) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle[conn.key].append(conn)
        self._wake()

    def _forget(self, conn: _Conn) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._wake()

    def close(self) -> None:
        """Close every connection (requests still running see their connection close)."""
        self.closed = True
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.cancel()
