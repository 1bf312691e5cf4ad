"""Loopback aiohttp servers that stream OpenAI-style SSE with set timings, dialects and faults.

``SSEServer(dialect=..., ttft_s=..., itl_s=..., fault=...)`` serves ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions``; it streams ``max_tokens`` tokens, ``tokens_per_chunk``
per chunk, after ``ttft_s``, one chunk every ``itl_s``. It records every request body it saw.

Dialects (from each server's documented behaviour, see ../shared/real-servers/README.md):
- ``vllm``: role-only first chunk with ``content: ""``; one chunk per token, finish_reason on the last
  token's chunk; usage in a separate ``choices: []`` chunk.
- ``llamacpp``: role-only first chunk with ``content: null``; finish_reason on an extra empty chunk; usage
  inside the finish chunk; ``\\r\\n`` line ends; a ``data: null`` event first.
- ``sglang``: several tokens per chunk; usage in a ``choices: []`` chunk; ``: keep-alive`` comments.
- ``reasoning``: vLLM-style with the first half of the tokens as ``reasoning_content`` (and ``reasoning``).
- ``toolcall``: the answer is tool-call deltas only.
- ``trtllm``: TensorRT-LLM ``trtllm-serve`` (from its ``serve/postprocess_handlers.py``): compact JSON
  (pydantic ``model_dump_json``); chat chunks without null fields, the role-only first chunk written as
  ``data: {...} \\n\\n`` (a space before the blank line); token deltas ``{"content": ..,
  "reasoning_content": "", "tool_calls": []}`` plus ``avg_decoded_tokens_per_iter`` in the choice;
  completions chunks with every null field present, ``"usage": null`` included; finish_reason on the last
  token's chunk; usage (with ``prompt_tokens_details``) in a ``choices: []`` chunk; ``[DONE]``. Its
  error object is the top-level ``{"object": "error", "message": ..., "type": ..., "code": ...}`` of
  ``ErrorResponse`` (assumed to be what a failure mid-stream sends; used for the ``stream_error`` fault).

Faults: ``http500``, ``http429``, ``cut`` (connection closed mid-stream), ``stall`` (stops sending),
``malformed`` (a non-JSON data line), ``stream_error`` (an error object in the stream), ``empty`` (no
visible token), ``no_done`` (ends after the last token without finish_reason or [DONE]).

Fault injection for the trust tests (a fault-injecting OpenAI-compatible server):
- before any response: ``no_headers`` (never answers), ``reset`` (closes the connection before the
  status line), ``http404`` (unknown model), ``http500_echo`` (a 500 whose body echoes the request's
  headers, as some proxies do);
- wrong body: ``json200`` (200 ``application/json``), ``html200`` (200 ``text/html``);
- no visible token ever: ``keepalive`` (only ``: keep-alive`` comments), ``drip`` (one byte every
  ``drip_s`` of a data line that never ends), ``empty_events`` (empty-content events forever);
- after half the tokens: ``keepalive_stall`` (comments only from then on);
- lying usage: ``usage_10x`` (completion_tokens 10 times the tokens streamed), ``usage_cached`` (cached
  above the prompt), ``usage_negative``, ``usage_huge`` (2**70), ``finish_object`` (an object as the
  final finish_reason).

``fault`` may be a list: request i (in arrival order) gets ``fault[i % len(fault)]`` (None: a clean
stream). ``script(i, body)``, when given, returns the raw body bytes of request i's 200 SSE response
(any bytes: the fuzz tests), sent in one write before the connection is closed.

``in_flight``/``max_in_flight`` count requests whose handler runs and whose client is still connected
(the handler is cancelled when the client goes: ``handler_cancellation``); ``requests`` counts every
request the completion routes received (streamed or not, any fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web


class SSEServer:
    def __init__(
        self,
        dialect: str = "vllm",
        ttft_s: float = 0.05,
        itl_s: float = 0.005,
        fault: str | None = None,
        tokens_per_chunk: int = 1,
        cached_tokens: bool = True,
        chat_tokens_per_word: float = 1.0,
        chat_overhead_tokens: int = 0,
        script: Callable[[int, dict], bytes] | None = None,
        drip_s: float = 0.05,
    ) -> None:
        self.dialect = dialect
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.fault = fault
        self.script = script
        self.drip_s = drip_s
        self.requests = 0
        # per finished stream: (seconds from the handler's start to the first token's write, the output
        # speed the writes achieved: (tokens - 1) / (last write - first write))
        self.timings: list[tuple[float, float]] = []
        self.tokens_per_chunk = 3 if dialect == "sglang" and tokens_per_chunk == 1 else tokens_per_chunk
        self.cached_tokens = cached_tokens
        # a chat "tokenizer": this many tokens per whitespace-separated word, plus a template overhead
        self.chat_tokens_per_word = chat_tokens_per_word
        self.chat_overhead_tokens = chat_overhead_tokens
        self.bodies: list[dict] = []
        self.headers: list[dict] = []  # request headers, one dict per request
        self.probes: list[dict] = []  # non-streaming requests (prompt-size probes)
        self.in_flight = 0
        self.max_in_flight = 0
        self._prompts: list = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> SSEServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._stream)
        app.router.add_post("/v1/completions", self._stream)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "test-model", "object": "model"}]})

    def _prompt_tokens(self, body: dict) -> tuple[int, int]:
        prompt = body.get("prompt")
        if prompt is None:
            text = "\n".join(m.get("content") or "" for m in body["messages"])
            f = self.chat_tokens_per_word  # word j becomes floor((j+1) f) - floor(j f) tokens: prefix-stable
            toks = ["<t>"] * self.chat_overhead_tokens
            for j, w in enumerate(text.split()):
                toks.extend([w] * (int((j + 1) * f) - int(j * f)))
        else:
            toks = prompt
        cached = 0
        for prev in self._prompts:  # longest common prefix with any earlier prompt
            n = 0
            for a, b in zip(prev, toks):
                if a != b:
                    break
                n += 1
            cached = max(cached, n)
        self._prompts.append(toks)
        return len(toks), cached

    def _usage_only(self, body: dict) -> web.Response:
        """A non-streaming answer (one token): what a prompt-size probe reads."""
        prompt_tokens, _ = self._prompt_tokens(body)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
        msg = {"role": "assistant", "content": " tok"}
        return web.json_response({"id": "x", "choices": [{"index": 0, "message": msg}], "usage": usage})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        if not body.get("stream"):  # kept apart from ``bodies``: those are the streamed requests
            self.probes.append(body)
            return self._usage_only(body)
        i = len(self.bodies)
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self.fault[i % len(self.fault)] if isinstance(self.fault, list) else self.fault
            return await self._respond(request, body, i, fault)
        finally:
            self.in_flight -= 1

    async def _respond(
        self, request: web.Request, body: dict, i: int, fault: str | None
    ) -> web.StreamResponse:
        if fault == "http500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if fault == "http500_echo":
            return web.json_response(
                {"error": {"message": f"bad request, headers {dict(request.headers)}"}}, status=500
            )
        if fault == "http429":
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"}
            )
        if fault == "http404":
            msg = f"The model `{body.get('model')}` does not exist."
            return web.json_response({"error": {"message": msg, "code": 404}}, status=404)
        if fault == "no_headers":
            await asyncio.sleep(3600)
        if fault == "reset":
            request.transport.close()
            await asyncio.sleep(3600)
        if fault == "json200":
            return web.json_response({"id": "x", "choices": [{"message": {"content": "hi"}}]})
        if fault == "html200":
            return web.Response(text="<html><body>login</body></html>", content_type="text/html")
        if self.script is not None:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(self.script(i, body))
            await resp.write_eof()
            return resp
        if fault in ("keepalive", "drip", "empty_events"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            line = b'data: {"choices":[{"index":0,"delta":{"content":"never ends'
            k = 0
            while not request.transport or not request.transport.is_closing():
                if fault == "keepalive":
                    await resp.write(b": keep-alive\n\n")
                elif fault == "drip":
                    await resp.write(line[k % len(line) : k % len(line) + 1])
                    k += 1
                else:
                    await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":""}}]}\n\n')
                await asyncio.sleep(self.drip_s)
            return resp
        return await self._sse(request, body, fault)

    async def _sse(self, request: web.Request, body: dict, fault: str | None) -> web.StreamResponse:
        t0 = time.perf_counter()
        chat = "messages" in body
        n = int(body["max_tokens"])
        prompt_tokens, cached = self._prompt_tokens(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        eol = b"\r\n" if self.dialect == "llamacpp" else b"\n"

        trt = self.dialect == "trtllm"

        async def send(obj, space: bool = False) -> None:
            if isinstance(obj, bytes):
                data = obj
            elif trt:
                data = json.dumps(obj, separators=(",", ":")).encode()
            else:
                data = json.dumps(obj).encode()
            await resp.write(b"data: " + data + (b" " if space else b"") + eol + eol)

        def chunk(delta=None, text=None, finish=None, usage=None, choices=True):
            c = {
                "id": "x",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "model": "test-model",
            }
            if trt:
                c["created"] = 1700000000
            if choices:
                choice = {"index": 0, "finish_reason": finish}
                if chat:
                    choice["delta"] = delta if delta is not None else {}
                else:
                    choice["text"] = text if text is not None else ""
                if trt:
                    choice["avg_decoded_tokens_per_iter"] = 1.0
                    if chat:  # exclude_none
                        if finish is None:
                            del choice["finish_reason"]
                    else:  # every field, nulls included
                        choice.update(token_ids=None, logprobs=None, context_logits=None, stop_reason=None)
                c["choices"] = [choice]
            else:
                c["choices"] = []
            if usage is not None:
                c["usage"] = usage
            elif trt and not chat:
                c["usage"] = None
            return c

        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        if self.dialect == "reasoning":
            usage["completion_tokens_details"] = {"reasoning_tokens": n // 2}
        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        if self.dialect == "llamacpp":
            await send(b"null")
        if chat and trt:
            await send(chunk(delta={"role": "assistant"}), space=True)
        elif chat:
            await send(
                chunk(delta={"role": "assistant", "content": None if self.dialect == "llamacpp" else ""})
            )
        await asyncio.sleep(self.ttft_s)
        if fault == "empty":
            await send(chunk(delta={"content": ""}, text="", finish="length"))
            await send(chunk(usage={**usage, "completion_tokens": 0}, choices=False))
            await send(b"[DONE]")
            return resp
        sent = 0
        t_first = 0.0
        while sent < n:
            k = min(self.tokens_per_chunk, n - sent)
            sent += k
            last = sent == n
            if fault == "cut" and sent > n // 2:
                request.transport.close()
                return resp
            if fault == "stall" and sent > n // 2:
                await asyncio.sleep(3600)
            if fault == "keepalive_stall" and sent > n // 2:
                while not request.transport.is_closing():
                    await resp.write(b": keep-alive" + eol + eol)
                    await asyncio.sleep(self.drip_s)
                return resp
            if fault == "malformed" and sent > n // 2:
                await resp.write(b"data: {not json" + eol + eol)
                return resp
            if fault == "stream_error" and sent > n // 2:
                if trt:
                    await send(
                        {
                            "object": "error",
                            "message": "engine died",
                            "type": "InternalServerError",
                            "param": None,
                            "code": 500,
                        }
                    )
                else:
                    await send({"error": {"message": "engine died", "code": 500}})
                return resp
            piece = " tok" * k
            finish = "length" if last and self.dialect not in ("llamacpp",) and fault != "no_done" else None
            if self.dialect == "reasoning" and sent <= n // 2:
                delta = {"reasoning_content": piece, "reasoning": piece}
            elif self.dialect == "toolcall":
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            elif trt:
                delta = {"content": piece, "reasoning_content": "", "tool_calls": []}
            else:
                delta = {"content": piece}
            running = None
            if continuous:  # vLLM's continuous_usage_stats: the running count on every chunk
                running = {"prompt_tokens": prompt_tokens, "completion_tokens": sent}
                running["total_tokens"] = prompt_tokens + sent
            await send(chunk(delta=delta, text=piece, finish=finish, usage=running))
            t_last = time.perf_counter()
            if not t_first:
                t_first = t_last
            if last:  # what the server really did (its sleeps stretch on a loaded machine)
                speed = (n - 1) / (t_last - t_first) if t_last > t_first else math.inf
                self.timings.append((t_first - t0, speed))
            if self.dialect == "sglang":
                await resp.write(b": keep-alive" + eol + eol)
            if not last:
                await asyncio.sleep(self.itl_s)
        if fault == "no_done":
            return resp
        lie = {
            "usage_10x": {"completion_tokens": 10 * n},
            "usage_cached": {"prompt_tokens_details": {"cached_tokens": prompt_tokens + 5}},
            "usage_negative": {"prompt_tokens": -3},
            "usage_huge": {"completion_tokens": 2**70},
        }.get(fault)
        if lie:
            usage = {**usage, **lie}
        if fault == "finish_object":
            await send(chunk(delta={}, text="", finish={"reason": "length", "n": [1, 2]}))
        if self.dialect == "llamacpp":
            await send(chunk(delta={}, text="", finish="length", usage=usage))
        else:
            await send(chunk(usage=usage, choices=False))
        await send(b"[DONE]")
        return resp


@contextlib.contextmanager
def serving(*servers: Any) -> Iterator[Any]:
    """Run objects with async ``start()``/``stop()`` (an :class:`SSEServer`, a ``SimServer``, any aiohttp
    server wrapper) on an event loop of their own in a background thread, for synchronous callers (the
    sweep, the CLI, subprocesses). Yields the server (or the tuple, for several), started; afterwards stops
    them, the loop and the thread, and closes the loop (no ``ResourceWarning``)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            for s in servers:
                loop.run_until_complete(s.start())
        except BaseException as exc:  # reported to the caller below
            failed.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10), "loopback servers did not start within 10 s"
    if failed:
        t.join(10)
        loop.close()
        raise failed[0]
    try:
        yield servers[0] if len(servers) == 1 else servers
    finally:

        async def stop() -> None:
            for s in servers:
                await s.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        if not t.is_alive():
            loop.close()


def comparable(fields: dict) -> dict:
    """An outcome's fields (``dataclasses.asdict``) with NaN written as ``"nan"``, so that two outcomes
    compare field by field: NaN equals NaN only as the same object, and a compiled ``RequestOutcome``
    (setup.py) boxes each float it returns anew."""
    return {k: "nan" if isinstance(v, float) and v != v else v for k, v in fields.items()}
