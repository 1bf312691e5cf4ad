"""The simulated inference system served in real time over HTTP, streaming like vLLM.

``SimServer`` runs the same :class:`~agentperf_kit.sim.engine.Engine` as the virtual-time runs, with its
clock tied to the wall clock: virtual seconds = wall seconds since start x ``time_scale`` (``time_scale``
> 1 runs faster than real time, so every latency a client measures is the simulated one divided by it).
A driver task advances the engine one step (or, when it fell behind, several) at a time, sleeps until the
wall time at which that step ends, then hands each streaming request the tokens it produced, so SSE
chunks leave at the simulated token times (one chunk per request per step, as vLLM does).

OpenAI-compatible surface: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``
(streaming and not), ``GET /metrics`` (Prometheus text, vLLM metric names) and ``GET /health``.
Semantics:

- Output length: exactly ``max_tokens`` (or ``max_completion_tokens``) tokens, ``finish_reason`` "length";
  the simulated model never stops early, so ``ignore_eos`` is accepted and changes nothing. Without
  ``max_tokens`` it answers ``default_max_tokens`` tokens (capped by the context) and says "stop".
- ``usage`` with ``prompt_tokens_details.cached_tokens`` (the prefix-cache hit) on every non-streaming
  answer, and in a final ``choices: []`` chunk when ``stream_options.include_usage`` is true.
- ``reasoning_share`` of the output (first tokens) streams as ``reasoning_content`` deltas (chat only).
- Prompt tokens: exact for token-id prompts, approximate for text (see :mod:`agentperf_kit.sim.tokens`).
- Bad requests are answered as vLLM does: status 400 (404 for an unknown model) with
  ``{"error": {"message", "type", "param", "code"}}``.
- A client that disconnects has its request aborted in the engine (its KV is freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .engine import Engine, SimRequest
from .presets import DEFAULT_DEPLOYMENT, Deployment, efficiency, get_deployment
from .tokens import PrefixIndex, block_chain, chat_tokens, text_tokens

__all__ = ["SimServer"]

_WORDS = ("the", " model", " thinks", " about", " code", " and", " tests", " it", " again", ".")


@dataclass(eq=False, slots=True)
class _Live:
    """A request being served: the engine's view plus what has been streamed so far."""

    output: int
    event: asyncio.Event = field(default_factory=asyncio.Event)
    req: SimRequest | None = None
    done: bool = False
    rejected: str | None = None


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def _error(message: str, status: int = 400, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class SimServer:
    """The simulated deployment ``deployment`` behind an OpenAI-compatible HTTP API, in real time.

    ``time_scale``: virtual seconds per wall second (> 0). ``max_model_len``: context limit in tokens
    (prompt + output; default the smaller of the model's context and the KV capacity).
    ``reasoning_share``: share of each chat answer streamed as ``reasoning_content``.
    ``default_max_tokens``: answer length when a request names none.
    """

    def __init__(
        self,
        deployment: str | Deployment = DEFAULT_DEPLOYMENT,
        *,
        efficiency_set: str = "mid",
        time_scale: float = 1.0,
        served_model_name: str | None = None,
        max_model_len: int | None = None,
        reasoning_share: float = 0.0,
        default_max_tokens: int = 256,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if not 0.0 <= reasoning_share <= 1.0:
            raise ValueError(f"reasoning_share must be within [0, 1], got {reasoning_share}")
        self.dep = get_deployment(deployment) if isinstance(deployment, str) else deployment
        if self.dep.disaggregated:
            raise ValueError(
                f"{self.dep.name} is a prefill/decode disaggregated preset; serve-sim serves single-pool "
                "presets only (use it in virtual time: agentperf sweep --target sim:NAME)"
            )
        self.eff = efficiency(efficiency_set)
        self.time_scale = float(time_scale)
        self.model = served_model_name or self.dep.model
        cap = min(self.dep.kv_capacity_tokens, self.dep.max_context_tokens)
        self.max_model_len = min(int(max_model_len), cap) if max_model_len else cap
        self.reasoning_share = float(reasoning_share)
        self.default_max_tokens = int(default_max_tokens)
        self.engine = Engine(self.dep, self.eff, self._on_finish, self._on_reject)
        self.prefixes = PrefixIndex()
        self.live: set[_Live] = set()
        self.counters = {"requests_ok": 0, "requests_aborted": 0, "requests_rejected": 0, "generated": 0}
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task | None = None
        self._t0 = 0.0
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = "127.0.0.1"

    # -- lifecycle ------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (starts and stops the engine driver with the app)."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SimServer:
        """Serve on ``host:port`` (0 picks a free port); see :attr:`base_url`."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def _on_startup(self, app: web.Application) -> None:
        self._wake = asyncio.Event()
        self._t0 = asyncio.get_running_loop().time()
        self._driver = asyncio.create_task(self._drive(), name="sim-engine-driver")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        for req in self.engine.cancel_all():
            req.key.done = True
            req.key.event.set()

    # -- clock and engine driver ------------------------------------------------------------------------

    def vnow(self) -> float:
        """Virtual seconds since the server started."""
        return (asyncio.get_running_loop().time() - self._t0) * self.time_scale

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        eng = self.engine
        while True:
            if not eng.has_work:
                self._wake.clear()
                await self._wake.wait()
                eng.now = max(eng.now, self.vnow())
                continue
            if not (eng.prefilling or eng.b) and eng.waiting[0].t_arrival > eng.now:
                eng.now = eng.waiting[0].t_arrival
            eng.advance(max(self.vnow(), eng.now + 1e-9))
            delay = self._t0 + eng.now / self.time_scale - loop.time()
            await asyncio.sleep(max(0.0, delay))
            for live in self.live:
                live.event.set()

    def _on_finish(self, req: SimRequest, t_end: float) -> None:
        live: _Live = req.key
        live.done = True
        self.counters["requests_ok"] += 1
        self.counters["generated"] += req.output

    def _on_reject(self, req: SimRequest, t: float, detail: str) -> None:
        req.key.rejected = detail

    def _submit(self, tokens: list, output: int) -> _Live:
        phase, prefix = self.prefixes.match(block_chain(tokens))
        live = _Live(output)
        eng = self.engine
        req = SimRequest(live, phase, len(tokens), prefix, output, max(eng.now, self.vnow()))
        live.req = req
        eng.submit(req)
        if live.rejected is None:
            self.live.add(live)
            self._wake.set()
        return live

    def _produced(self, live: _Live) -> int:
        return live.output if live.done else self.engine.tokens_done(live.req)

    # -- request parsing ------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRequest(f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model:
            raise _BadRequest(f"The model `{model}` does not exist.", 404, "model")
        if body.get("n", 1) != 1:
            raise _BadRequest("the simulated server supports n=1 only", param="n")
        if not isinstance(body.get("stream", False), bool):
            raise _BadRequest("'stream' must be a boolean", param="stream")
        return body

    def _output_len(self, body: dict[str, Any], prompt_tokens: int) -> tuple[int, str]:
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        room = self.max_model_len - prompt_tokens
        if asked is None:
            if room < 1:
                raise _BadRequest(self._too_long(prompt_tokens, 1))
            return min(self.default_max_tokens, room), "stop"
        if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
            raise _BadRequest(f"max_tokens must be an integer >= 1, got {asked!r}", param="max_tokens")
        min_tokens = body.get("min_tokens", 0) or 0
        if not isinstance(min_tokens, int) or min_tokens < 0 or min_tokens > asked:
            raise _BadRequest(
                f"min_tokens must be an integer in [0, max_tokens], got {min_tokens!r}", param="min_tokens"
            )
        if asked > room:
            raise _BadRequest(self._too_long(prompt_tokens, asked))
        return asked, "length"

    def _too_long(self, prompt: int, out: int) -> str:
        return (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
            f"{prompt + out} tokens ({prompt} in the messages, {out} in the completion). Please reduce the "
            "length of the messages or completion."
        )

    # -- handlers -------------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "agentperf-sim",
            "max_model_len": self.max_model_len,
            "agentperf_sim": {
                "deployment": self.dep.name,
                "efficiency": self.eff.name,
                "time_scale": self.time_scale,
            },
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(isinstance(m, dict) for m in messages)
            ):
                raise _BadRequest("'messages' must be a non-empty list of message objects", param="messages")
            tokens = chat_tokens(messages)
            out, finish = self._output_len(body, len(tokens))
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        return await self._serve(request, body, tokens, out, finish, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]  # a batch of one
            if isinstance(prompt, str):
                tokens: list = text_tokens(prompt)
            elif isinstance(prompt, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt
            ):
                tokens = prompt
            else:
                raise _BadRequest(
                    "'prompt' must be a string or a list of token ids (batches are not supported)",
                    param="prompt",
                )
            if not tokens:
                raise _BadRequest("the prompt is empty", param="prompt")
            out, finish = self._output_len(body, len(tokens))
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        return await self._serve(request, body, tokens, out, finish, chat=False)

    async def _serve(
        self, request: web.Request, body: dict, tokens: list, out: int, finish: str, *, chat: bool
    ) -> web.StreamResponse:
        live = self._submit(tokens, out)
        if live.rejected is not None:
            self.counters["requests_rejected"] += 1
            return _error(live.rejected)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        n_reason = math.floor(out * self.reasoning_share) if chat else 0
        try:
            if body.get("stream"):
                return await self._stream(request, body, live, rid, created, n_reason, finish, chat)
            while not live.done:
                await live.event.wait()
                live.event.clear()
            text = _words(n_reason, out)
            if chat:
                message = {"role": "assistant", "content": text, "tool_calls": []}
                if n_reason:
                    message["reasoning_content"] = _words(0, n_reason)
                choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                obj = "text_completion"
            resp = {"id": rid, "object": obj, "created": created, "model": self.model, "choices": [choice]}
            resp["usage"] = self._usage(live)
            return web.json_response(resp)
        finally:
            self.live.discard(live)
            if not live.done and live.rejected is None:
                self.engine.abort(live.req)
                self.counters["requests_aborted"] += 1

    async def _stream(
        self,
        request: web.Request,
        body: dict,
        live: _Live,
        rid: str,
        created: int,
        n_reason: int,
        finish: str,
        chat: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        head = (
            f'{{"id":"{rid}","object":"{"chat.completion.chunk" if chat else "text_completion"}",'
            f'"created":{created},"model":{json.dumps(self.model)},'
        )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        sent = 0
        while True:
            await live.event.wait()
            live.event.clear()
            n = self._produced(live)
            if n <= sent and not live.done:
                continue
            parts: list[str] = []
            if sent == 0 and chat:
                parts.append(
                    head + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                    '"logprobs":null,"finish_reason":null}]}'
                )
            last = live.done and n >= live.output
            reason_end = min(n, n_reason)
            if sent < reason_end:
                delta = json.dumps({"reasoning_content": _words(sent, reason_end)})
                parts.append(
                    head + f'"choices":[{{"index":0,"delta":{delta},"logprobs":null,'
                    f'"finish_reason":{_fin(last and reason_end == n, finish)}}}]}}'
                )
            start = max(sent, n_reason)
            if start < n:
                text = json.dumps(_words(start, n))
                piece = f'"delta":{{"content":{text}}}' if chat else f'"text":{text}'
                parts.append(
                    head + f'"choices":[{{"index":0,{piece},"logprobs":null,'
                    f'"finish_reason":{_fin(last, finish)}}}]}}'
                )
            if last and include_usage:
                parts.append(head + f'"choices":[],"usage":{json.dumps(self._usage(live))}}}')
            if last:
                parts.append("[DONE]")
            sent = n
            await resp.write("".join(f"data: {p}\n\n" for p in parts).encode())
            if last:
                break
        await resp.write_eof()
        return resp

    def _usage(self, live: _Live) -> dict[str, Any]:
        req = live.req
        return {
            "prompt_tokens": req.prompt,
            "total_tokens": req.prompt + req.output,
            "completion_tokens": req.output,
            "prompt_tokens_details": {"cached_tokens": req.hit},
        }

    async def _metrics(self, request: web.Request) -> web.Response:
        eng = self.engine
        label = f'{{model_name="{self.model}"}}'
        rows = [
            (
                "vllm:num_requests_running",
                "gauge",
                "Requests in prefill or decode.",
                len(eng.prefilling) + eng.b,
            ),
            ("vllm:num_requests_waiting", "gauge", "Requests queued for admission.", len(eng.waiting)),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV cache share held by running requests (0-1).",
                eng.kv_running() / max(1, eng._cap),
            ),
            (
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prompt tokens looked up in the prefix cache.",
                eng.prompt_tokens_total,
            ),
            (
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                eng.cached_tokens_total,
            ),
            ("vllm:num_preemptions_total", "counter", "Preemptions by recompute.", eng.preemptions),
            ("vllm:prompt_tokens_total", "counter", "Prompt tokens admitted.", eng.prompt_tokens_total),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Tokens generated by finished requests.",
                self.counters["generated"],
            ),
            ("vllm:request_success_total", "counter", "Requests finished.", self.counters["requests_ok"]),
            (
                "agentperf_sim:requests_aborted_total",
                "counter",
                "Requests aborted by a disconnect.",
                self.counters["requests_aborted"],
            ),
            (
                "agentperf_sim:requests_rejected_total",
                "counter",
                "Requests that can never fit the KV cache.",
                self.counters["requests_rejected"],
            ),
            (
                "agentperf_sim:idle_cache_tokens",
                "gauge",
                "Tokens held by idle prefix-cache entries.",
                eng.idle_tokens,
            ),
            (
                "agentperf_sim:busy_seconds_total",
                "counter",
                "Virtual seconds the engine spent in steps.",
                eng.busy_s,
            ),
            ("agentperf_sim:virtual_seconds", "gauge", "Virtual clock of the engine.", eng.now),
            ("agentperf_sim:engine_steps_total", "counter", "Engine steps simulated.", eng.steps),
        ]
        lines = []
        for name, kind, doc, value in rows:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{label} {float(value)!r}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


def _fin(last: bool, finish: str) -> str:
    return f'"{finish}"' if last else "null"


def _words(start: int, end: int) -> str:
    """Text of output tokens ``start..end`` (one word per token, deterministic)."""
    return "".join(_WORDS[i % len(_WORDS)] for i in range(start, end))
