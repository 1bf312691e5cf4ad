"""The simulated inference system served in real time over HTTP, streaming like vLLM.

``SimServer`` runs the same :class:`~agentperf_kit.sim.engine.Engine` as the virtual-time runs, with its
clock tied to the wall clock: virtual seconds = wall seconds since start x ``time_scale`` (``time_scale``
> 1 runs faster than real time, so every latency a client measures is the simulated one divided by it).
A driver task advances the engine exactly one step at a time, records each request's output count at the
end of that step, sleeps until the wall time at which the step ends (``t0 + step end / time_scale``), then
releases those counts to the handlers: the first token leaves at the end of the step in which the last
prefill chunk completes, then one SSE chunk per request per engine step (as vLLM does). A process that
cannot keep up releases late but never merges steps: the lateness is the *lag* (``lag_s``, ``/metrics``
``agentperf_sim:lag_seconds``, a warning in the log when it exceeds ``lag_warn_s``).

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
- Bad requests are answered as vLLM does, before any 200: status 400 (404 for an unknown model) with
  ``{"error": {"message", "type", "param", "code"}}``; wrong types are named by field
  (:mod:`agentperf_kit.sim.request_check`).
- A client that disconnects has its request aborted in the engine (its KV is freed), logged in one line.
- ``X-Request-Id``: the client's, echoed, or the response id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import ConfigError
from .disagg import make_engine
from .engine import Engine, SimRequest
from .presets import DEFAULT_DEPLOYMENT, Deployment, efficiency, get_deployment
from .promtext import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS, Histogram, render_scalar
from .request_check import BadRequest, check_body
from .tokens import PrefixIndex, block_chain, chat_tokens, text_tokens

__all__ = ["SimServer"]

log = logging.getLogger(__name__)

# emitted text: a space + a common English word per token, one token each in common BPE vocabularies
# (GPT-2/cl100k/Llama/DeepSeek style: a leading-space word is one piece), so a client that counts
# output tokens with its own tokenizer counts one per chunk
_WORDS = (" the", " model", " writes", " code", " and", " then", " runs", " the", " tests", " again")


@dataclass(eq=False, slots=True)
class _Live:
    """A request being served: the engine's view plus what the driver has released to its handler.

    ``steps`` holds, for each engine step that produced tokens of this request and has not been streamed
    yet, the request's output token count at the end of that step (the handler sends one chunk per entry).
    ``marked``: the count last released. Times are virtual seconds.
    """

    output: int
    stream: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)
    req: SimRequest | None = None
    done: bool = False
    rejected: str | None = None
    steps: deque[int] = field(default_factory=deque)
    marked: int = 0
    t_last: float = math.nan  # virtual time of the last released token


_BadRequest = BadRequest


def _error(message: str, status: int = 400, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}.get(
        status, "InternalServerError"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class SimServer:
    """The simulated deployment ``deployment`` behind an OpenAI-compatible HTTP API, in real time.

    ``time_scale``: virtual seconds per wall second (> 0). ``max_model_len``: context limit in tokens
    (prompt + output; default the smaller of the model's context and the KV capacity).
    ``reasoning_share``: share of each chat answer streamed as ``reasoning_content``.
    ``default_max_tokens``: answer length when a request names none. ``lag_warn_s``: wall seconds of
    lateness of a step's release above which the server logs that it cannot keep up (at most one warning
    per 10 s). ``count_prompt``: counts a text prompt's tokens (default :func:`text_tokens`; see
    :func:`agentperf_kit.sim.tokens.load_tokenizer` for a local Hugging Face tokenizer).

    Lag: ``lag_s`` is the lateness (wall seconds) of the latest step's release, ``lag_max_s`` the largest
    since start, ``late_steps`` the steps released later than ``lag_warn_s``; ``longest_step_s`` the
    longest engine step so far (virtual seconds).
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
        lag_warn_s: float = 0.05,
        count_prompt: Any = None,
    ) -> None:
        if not time_scale > 0:
            raise ConfigError(f"time_scale must be > 0, got {time_scale}")
        if not 0.0 <= reasoning_share <= 1.0:
            raise ConfigError(f"reasoning_share must be within [0, 1], got {reasoning_share}")
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
        # a twin file (agentperf profile) is served with its fitted step time (TwinEngine, an Engine)
        engine = make_engine(self.dep, self.eff, self._on_finish, self._on_reject)
        assert isinstance(engine, Engine), "a single-pool deployment (P/D presets are refused above)"
        self.engine = engine
        self.prefixes = PrefixIndex()
        self.live: set[_Live] = set()
        self.counters = {"requests_ok": 0, "requests_aborted": 0, "requests_rejected": 0, "generated": 0}
        self.count_prompt = count_prompt or text_tokens
        self.lag_warn_s = float(lag_warn_s)
        self.lag_s = 0.0
        self.lag_max_s = 0.0
        self.late_steps = 0
        self.longest_step_s = 0.0  # virtual seconds
        self._lag_window_max = 0.0
        self._lag_logged_at = -math.inf
        self._finished_now: list[_Live] = []
        self.h_ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token (virtual seconds).", TTFT_BUCKETS
        )
        self.h_itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between output tokens (virtual seconds).", ITL_BUCKETS
        )
        self.h_tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Per request: (last token - first token) / (output tokens - 1) (virtual seconds).",
            ITL_BUCKETS,
        )
        self.h_e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Arrival to last token (virtual seconds).", E2E_BUCKETS
        )
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
        """Serve on ``host:port`` (0 picks a free port); see :attr:`base_url`. Raises
        :class:`~agentperf_kit.errors.ConfigError` for a port outside 0-65535 and ``OSError`` when the
        address cannot be bound."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an integer within 0-65535 (0 picks a free port), got {port!r}")
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        self.host = host
        self.port = self._runner.addresses[0][1]
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
            req.key.rejected = "the server is shutting down"
            req.key.event.set()

    # -- clock and engine driver ------------------------------------------------------------------------

    def vnow(self) -> float:
        """Virtual seconds since the server started."""
        return (asyncio.get_running_loop().time() - self._t0) * self.time_scale

    async def _drive(self) -> None:
        """Advance the engine one step at a time; after each step, sleep until the wall time at which it
        ends, then release to each request the output count it reached in that step."""
        loop = asyncio.get_running_loop()
        eng = self.engine
        wake = self._wake
        assert wake is not None, "start() makes the wake event before the driver"
        while True:
            if not eng.has_work:
                wake.clear()
                await wake.wait()
                continue
            if not (eng.prefilling or eng.b) and eng.waiting[0].t_arrival > eng.now:
                eng.now = eng.waiting[0].t_arrival  # idle until the arrival: the step starts there
            steps0, t_start = eng.steps, eng.now
            self._finished_now.clear()
            eng.advance(math.nextafter(eng.now, math.inf))  # exactly one step (or none: a KV fit)
            if eng.steps == steps0 and not self._finished_now:
                continue
            t_end = eng.now
            self.longest_step_s = max(self.longest_step_s, t_end - t_start)
            released = self._collect(t_end)
            target = self._t0 + t_end / self.time_scale
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._note_lag(loop.time() - target, t_end)
            for live, n in released:
                live.steps.append(n)
                live.event.set()
            await asyncio.sleep(0)  # let the handlers write before the next step is computed

    def _collect(self, t_end: float) -> list[tuple[_Live, int]]:
        """Output counts at the end of the step that ended at ``t_end`` (virtual s), for the requests that
        produced tokens in it (decoding ones and those that finished); updates the latency histograms."""
        out: list[tuple[_Live, int]] = []
        eng = self.engine
        # requests decoding now (a preempted request is absent until its re-prefill completes)
        lives = [req.key for req in eng.decoding()]
        lives += self._finished_now
        for live in lives:
            n = live.output if live.done else eng.tokens_done(live.req)
            if n <= live.marked:
                continue
            if live.marked == 0:
                self.h_ttft.observe(t_end - live.req.t_arrival)
            else:
                self.h_itl.observe(t_end - live.t_last)
            live.marked = n
            live.t_last = t_end
            if live.stream or live.done:  # a non-streaming handler waits for the last step only
                out.append((live, n))
        return out

    def _note_lag(self, lag: float, t_end: float) -> None:
        lag = max(0.0, lag)
        self.lag_s = lag
        self.lag_max_s = max(self.lag_max_s, lag)
        if lag <= self.lag_warn_s:
            return
        self.late_steps += 1
        self._lag_window_max = max(self._lag_window_max, lag)
        now = time.monotonic()
        if now - self._lag_logged_at >= 10.0:
            log.warning(
                "serve-sim cannot keep up with real time: the engine step ending at virtual %.3f s was "
                "released %.3f s late (worst since the last warning %.3f s; %d late steps so far; time "
                "scale %g); clients measure this lag on top of the simulated latencies",
                t_end,
                lag,
                self._lag_window_max,
                self.late_steps,
                self.time_scale,
            )
            self._lag_logged_at = now
            self._lag_window_max = 0.0

    def _on_finish(self, req: SimRequest, t_end: float) -> None:
        live: _Live = req.key
        live.done = True
        self._finished_now.append(live)
        self.counters["requests_ok"] += 1
        self.counters["generated"] += req.output
        self.h_e2e.observe(t_end - req.t_arrival)
        if req.output > 1:
            self.h_tpot.observe((t_end - req.t_first) / (req.output - 1))

    def _on_reject(self, req: SimRequest, t: float, detail: str) -> None:
        req.key.rejected = detail

    def _submit(self, tokens: list, output: int, stream: bool) -> _Live:
        phase, prefix = self.prefixes.match(block_chain(tokens))
        live = _Live(output, stream)
        eng = self.engine
        req = SimRequest(live, phase, len(tokens), prefix, output, max(eng.now, self.vnow()))
        live.req = req
        eng.submit(req)
        if live.rejected is None:
            self.live.add(live)
            assert self._wake is not None, "requests arrive after start()"
            self._wake.set()
        return live

    # -- request parsing ------------------------------------------------------------------------------

    async def _body(self, request: web.Request, *, chat: bool) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRequest(f"invalid JSON body: {exc}") from None
        except RecursionError:
            raise _BadRequest("invalid JSON body: nested too deeply") from None
        check_body(body, chat=chat)
        model = body.get("model")
        if model is not None and model != self.model:
            raise _BadRequest(f"The model `{model}` does not exist.", 404, "model")
        if body.get("n") not in (None, 1):
            raise _BadRequest("the simulated server supports n=1 only", param="n")
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
        min_tokens = body.get("min_tokens") or 0
        if min_tokens < 0 or min_tokens > asked:
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
            body = await self._body(request, chat=True)
            tokens = chat_tokens(body["messages"], self.count_prompt)
            out, finish = self._output_len(body, len(tokens))
        except _BadRequest as exc:
            return _error(str(exc), exc.status, exc.param)
        return await self._serve(request, body, tokens, out, finish, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request, chat=False)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]  # a batch of one
            if isinstance(prompt, str):
                tokens: list = self.count_prompt(prompt)
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
        stream = bool(body.get("stream"))
        live = self._submit(tokens, out, stream)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        headers = {"X-Request-Id": request.headers.get("X-Request-Id") or rid}
        if live.rejected is not None:
            self.counters["requests_rejected"] += 1
            resp = _error(live.rejected)
            resp.headers.update(headers)
            return resp
        created = int(time.time())
        n_reason = math.floor(out * self.reasoning_share) if chat else 0
        try:
            if stream:
                return await self._stream(request, headers, body, live, rid, created, n_reason, finish, chat)
            while not live.done and live.rejected is None:
                try:  # wake once a second to notice a client that hung up (vLLM aborts those too)
                    await asyncio.wait_for(live.event.wait(), 1.0)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        _log_disconnect(headers, live, "connection closed")
                        return web.Response(status=499)  # never sent: the connection is gone
                    continue
                live.event.clear()
            if not live.done:
                return _error(str(live.rejected), 503)
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
            body = {"id": rid, "object": obj, "created": created, "model": self.model, "choices": [choice]}
            body["usage"] = self._usage(live, n_reason)
            return web.json_response(body, headers=headers)
        except asyncio.CancelledError:
            _log_disconnect(headers, live, "cancelled")
            raise
        finally:
            self.live.discard(live)
            if not live.done and live.rejected is None and live.req is not None:
                self.engine.abort(live.req)
                self.counters["requests_aborted"] += 1

    async def _stream(
        self,
        request: web.Request,
        headers: dict[str, str],
        body: dict,
        live: _Live,
        rid: str,
        created: int,
        n_reason: int,
        finish: str,
        chat: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        await resp.prepare(request)
        head = (
            f'{{"id":"{rid}","object":"{"chat.completion.chunk" if chat else "text_completion"}",'
            f'"created":{created},"model":{json.dumps(self.model)},'
        )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        sent = 0
        while sent < live.output:
            await live.event.wait()
            live.event.clear()
            if live.rejected is not None:  # shut down while streaming: end the stream without [DONE]
                return resp
            parts: list[str] = []
            while live.steps:  # one chunk per engine step, even when several are due at once
                n = live.steps.popleft()
                if sent == 0 and chat:
                    parts.append(
                        head + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                        '"logprobs":null,"finish_reason":null}]}'
                    )
                last = n >= live.output
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
                    parts.append(head + f'"choices":[],"usage":{json.dumps(self._usage(live, n_reason))}}}')
                if last:
                    parts.append("[DONE]")
                sent = n
            if parts:
                try:
                    await resp.write("".join(f"data: {p}\n\n" for p in parts).encode())
                except ConnectionError as exc:
                    _log_disconnect(headers, live, type(exc).__name__)
                    return resp
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    def _usage(self, live: _Live, n_reason: int) -> dict[str, Any]:
        req = live.req
        assert req is not None, "usage is reported for a submitted request"
        return {
            "prompt_tokens": req.prompt,
            "total_tokens": req.prompt + req.output,
            "completion_tokens": req.output,
            "prompt_tokens_details": {"cached_tokens": req.hit},
            "completion_tokens_details": {"reasoning_tokens": n_reason},
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
            (
                "agentperf_sim:lag_seconds",
                "gauge",
                "Wall seconds the latest engine step was released after its due time (0: on time).",
                self.lag_s,
            ),
            (
                "agentperf_sim:lag_max_seconds",
                "gauge",
                "Largest release lag since start (wall seconds).",
                self.lag_max_s,
            ),
            (
                "agentperf_sim:late_steps_total",
                "counter",
                "Engine steps released later than the lag warning threshold.",
                self.late_steps,
            ),
        ]
        lines = []
        for name, kind, doc, value in rows:
            lines += render_scalar(name, kind, doc, label[1:-1], value)
        for h in (self.h_ttft, self.h_itl, self.h_tpot, self.h_e2e):
            lines += h.render(label[1:-1])
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


def _log_disconnect(headers: dict[str, str], live: _Live, how: str) -> None:
    if not live.done and live.rejected is None:
        log.info(
            "request %s: client disconnected after %d of %d output tokens (%s); aborted in the engine",
            headers["X-Request-Id"],
            live.marked,
            live.output,
            how,
        )


def _fin(last: bool, finish: str) -> str:
    return f'"{finish}"' if last else "null"


def _words(start: int, end: int) -> str:
    """Text of output tokens ``start..end`` (one word per token, deterministic)."""
    return "".join(_WORDS[i % len(_WORDS)] for i in range(start, end))
