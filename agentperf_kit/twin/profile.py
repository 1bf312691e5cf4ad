"""Profile a live OpenAI-compatible server and write its twin preset (``agentperf profile``).

Measurements (token-id prompts on ``/v1/completions``, so prompt sizes are exact; fresh random ids per
request, so nothing is cached unless meant to be; every request streamed through the live client
:func:`agentperf_kit.client.http.send_request`):

1. **Prefill, uncached**: single requests (2 output tokens) at geometric prompt sizes, ``repeats`` each;
   TTFT from the client's send = request set-up + the prefill steps (the prompt cut into chunks of
   ``chunk_tokens``).
2. **Prefill on a cached prefix**: a prompt, then the same prompt plus ``64`` new tokens; the server's
   reported ``cached_tokens`` says how much was served from cache.
3. **Decode step time against batch size**: ``B`` streams started together (short and long prompts);
   between the last stream's first token and the first stream's end every step is pure decode, so the
   mean gap between chunks there is one decode step at a known batch and context.
4. **Mixed steps**: ``B`` streams decoding when a one-chunk prompt arrives; the gap in the streams
   around its first token is the one step that ran both (how far prefill and decode overlap).
5. **Short streams**: single requests of ``stream_tokens`` output tokens (an agent's short answer) at a
   few prompt sizes; from the first token to the end of the stream are ``stream_tokens - 1`` decode steps
   and the request's finish (freeing its slot, the final usage chunk), which 128-token decode windows
   leave out.
6. **Arrivals**: ``B`` long streams decoding while one short request (a prompt of ``P`` new tokens,
   ``stream_tokens`` output) arrives, runs and finishes; the streams' time from their chunk before its
   send to their chunk after its end holds every step it shared with them plus all its per-request work
   (admission, prefill, finish), wherever in the engine loop that work lands.
7. **Engine limits**: the largest batch (llama.cpp ``/props`` ``total_slots``; else a probe with
   ``probe_streams`` streams reading ``num_requests_running`` / ``num_requests_waiting`` from
   ``/metrics``), the KV capacity in tokens (vLLM ``cache_config_info`` blocks x block size; llama.cpp
   ``/props`` ``n_ctx``; else ``kv_cache_usage_perc`` under a request of known size), the context limit
   (``max_model_len`` of ``/v1/models``, llama.cpp ``n_ctx`` per slot), the prefix cache's granularity
   (vLLM ``cache_config_info`` ``block_size``; else the smallest power of two that explains every cached
   count the server reported in 2.), and whether a prompt stays cached after 4x the KV capacity of other
   prompts went through (a host prompt cache, llama.cpp ``--cache-ram``; probed where that takes at most
   20 s), and whether the server keeps one prompt per slot (llama.cpp without a host prompt cache: a
   prompt dropped after ``max_num_seqs`` other small prompts whose KV fits far within the capacity;
   :func:`_slot_cache`). Arguments override the first three.

Durations are converted to the server's own seconds where it says it runs scaled time (``agentperf
serve-sim --time-scale X``: ``/v1/models`` ``agentperf_sim.time_scale``): measured x X.

The fit (:func:`agentperf_kit.twin.fit.fit_step_time`) and the provenance (server identity from
``/v1/models`` and ``/metrics``, date, load average, every observation with its residual) go into the
preset (:func:`write_twin`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from .._version import __version__
from ..agents import RequestPlan
from ..client.http import Endpoint, open_session, send_request
from ..errors import ConfigError, MeasurementError, TargetError
from ..sim.twin import SHAPE, TERMS, TWIN_KIND, dump_toml
from ..trajectories.model import Turn
from .fit import COLUMNS, Observation, StepFit, fit_step_time

__all__ = [
    "ProfileConfig",
    "ProfileResult",
    "cache_granularity",
    "profile_server",
    "profile_sync",
    "refit_twin",
    "write_twin",
]

log = logging.getLogger(__name__)

_VLLM_DEFAULT_SEQS = 256
NOISE_MIN_STREAMS = 8  # short streams needed for a [noise] section (their spread is the server's noise)


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """What to measure. ``base_url`` like ``http://127.0.0.1:8000/v1``; sizes in tokens.

    ``max_context``: the largest prompt + output to send (default: the server's context limit, at most
    8,192). ``chunk_tokens``: the server's prefill chunk (vLLM ``max_num_batched_tokens``; default
    from the server where it says, else 8,192). ``max_batch``, ``kv_capacity``: set to skip the probes.
    ``budget_s``: wall seconds after which the optional measurements (long-prompt decode, large batches)
    are skipped.
    """

    base_url: str
    model: str
    max_context: int | None = None
    repeats: int = 3
    decode_tokens: int = 128
    stream_tokens: int = 32  # output tokens of the short streams and arrivals (an agent's short answer)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    chunk_tokens: int | None = None
    max_batch: int | None = None
    kv_capacity: int | None = None
    probe_streams: int = 64
    budget_s: float = 240.0
    request_timeout_s: float = 300.0
    token_id_range: tuple[int, int] = (100, 4000)
    seed: int | None = None  # None: fresh ids every run (a server keeps its prefix cache between runs)


@dataclass(slots=True)
class ProfileResult:
    """Everything measured: observations, the fit, the engine limits (with where each came from) and
    the server's identity."""

    observations: list[Observation]
    fit: StepFit
    limits: dict[str, Any]
    limit_sources: dict[str, str]
    server: dict[str, Any]
    time_scale: float
    wall_s: float
    started_utc: str
    notes: list[str] = field(default_factory=list)


def _root(base_url: str) -> str:
    b = base_url.rstrip("/")
    return b[: -len("/v1")] if b.endswith("/v1") else b


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url) as r:
            if r.status != 200:
                return None
            return await r.json(content_type=None)
    except (aiohttp.ClientError, OSError, ValueError):
        return None


async def _get_text(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, OSError):
        return None


def _metrics(text: str | None) -> dict[str, list[tuple[dict[str, str], float]]]:
    if not text:
        return {}
    from ..telemetry.prometheus import PrometheusParseError, parse_prometheus_text

    try:
        parsed = parse_prometheus_text(text)
    except PrometheusParseError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for s in parsed.samples:
        out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _gauge(m: dict[str, list[tuple[dict[str, str], float]]], *names: str) -> float | None:
    for n in names:
        if n in m:
            return sum(v for _, v in m[n])
    return None


def prefill_work(new: int, cached: int, chunk: int) -> dict[str, float]:
    """Work of prefilling ``new`` tokens on top of ``cached`` ones in chunks of ``chunk`` (the engine's
    definitions): steps, prefill tokens, attention pairs, KV tokens read."""
    steps, pairs, kv = 0, 0.0, 0.0
    p, left = cached, max(1, new)
    while left > 0:
        c = min(chunk, left)
        pairs += c * p + c * c / 2.0
        kv += p + c
        p += c
        left -= c
        steps += 1
    return {
        "step_s": steps,
        "prefill_token_s": float(max(1, new)),
        "prefill_pair_s": pairs,
        "context_token_s": kv,
    }


class _Prober:
    def __init__(self, cfg: ProfileConfig, session: aiohttp.ClientSession, scale: float) -> None:
        self.cfg = cfg
        self.session = session
        self.scale = scale
        self.ep = Endpoint(
            cfg.base_url,
            cfg.model,
            api="completions",
            request_timeout_s=cfg.request_timeout_s,
            first_token_timeout_s=cfg.request_timeout_s,
            stall_timeout_s=cfg.request_timeout_s,
        )
        self.rng = random.Random(cfg.seed)
        self.origin = time.perf_counter_ns()

    def ids(self, n: int) -> list[int]:
        lo, hi = self.cfg.token_id_range
        return [self.rng.randrange(lo, hi) for _ in range(n)]

    async def send(
        self, prompt: list[int], out: int, chunk_log: list[tuple[int, int]] | None = None
    ) -> tuple[Any, list[tuple[int, int]]]:
        """Stream one request; returns its outcome and its chunks' ``(t_ns, tokens)`` (``chunk_log``, when
        given, is filled as they arrive)."""
        turn = Turn(phase=0, prefix_tokens=0, new_tokens=len(prompt), output_tokens=out)
        plan = RequestPlan(0, 0, "profile", 0, turn, 0, "profile", True, 0.0)
        body = {
            "model": self.cfg.model,
            "prompt": prompt,
            "stream": True,
            "max_tokens": out,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
            "min_tokens": out,
            "temperature": 0.0,
        }
        for _attempt in range(3):  # a kept-alive connection the server closed fails before it is sent
            log_: list[tuple[int, int]] = chunk_log if chunk_log is not None else []
            log_.clear()
            o = await send_request(self.session, self.ep, plan, body, self.origin, chunk_log=log_)
            if o.ok or o.error != "connect_error":
                break
        if not o.ok:
            raise TargetError(
                f"profile request to {self.ep.url} failed ({o.error}: {o.error_detail}); check the "
                "server and the model name"
            )
        return o, log_

    def ttft(self, o: Any) -> float:
        return (o.t_first_s - o.t_send_s) * self.scale


def _decode_row(
    outs: list[tuple[Any, list[tuple[int, int]]]], prompt: int, origin: int, scale: float
) -> Observation | None:
    """One pure-decode observation from ``B`` streams run together (None when the window is too short)."""
    firsts = [log_[0][0] for _, log_ in outs if log_]
    lasts = [log_[-1][0] for _, log_ in outs if log_]
    if len(firsts) != len(outs):
        return None
    t0, t1 = max(firsts), min(lasts)
    if t1 <= t0:
        return None
    ctx = 0.0
    steps_all = []
    for o, log_ in outs:
        times = [t for t, _ in log_]
        i0 = sum(1 for t in times if t <= t0)
        i1 = sum(1 for t in times if t <= t1)
        ratio = (o.output_tokens or len(times)) / max(1, len(times))
        steps_all.append((i1 - i0) * ratio)
        ctx += prompt + (i0 + i1) / 2.0 * ratio
    steps = max(steps_all)
    if steps < 4:
        return None
    b = len(outs)
    dt = (t1 - t0) / 1e9 * scale / steps
    return Observation(
        "decode",
        {"step_s": 1.0, "decode_seq_s": float(b), "context_token_s": ctx},
        dt,
        f"B={b} prompt={prompt} steps={steps:.0f}",
    )


async def profile_server(cfg: ProfileConfig) -> ProfileResult:
    """Run the measurements of the module docstring against ``cfg.base_url`` and fit the twin."""
    t_wall0 = time.perf_counter()
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    notes: list[str] = []
    root = _root(cfg.base_url)
    lag = _LoopLag()
    lag.start()
    async with open_session(max(cfg.probe_streams, max(cfg.batch_sizes)) + 8) as session:
        models = await _get_json(session, f"{cfg.base_url.rstrip('/')}/models")
        if models is None:
            raise TargetError(f"GET {cfg.base_url}/models failed: is the server up at {cfg.base_url}?")
        card = next((c for c in models.get("data", []) if c.get("id") == cfg.model), None)
        card = card or (models.get("data") or [{}])[0]
        sim = card.get("agentperf_sim") or {}
        scale = float(sim.get("time_scale", 1.0))
        props = await _get_json(session, f"{root}/props")
        metrics_text = await _get_text(session, f"{root}/metrics")
        mets = _metrics(metrics_text)
        server = {
            "base_url": cfg.base_url,
            "model": cfg.model,
            "models_card": {k: v for k, v in card.items() if not isinstance(v, dict | list)},
            "models_meta": {
                k: v for k, v in (card.get("meta") or {}).items() if not isinstance(v, dict | list)
            },
            "agentperf_sim": sim,
            "metrics_families": sorted({n.split(":")[0] for n in mets}),
            "metrics_available": bool(mets),
        }
        if props:
            server["props"] = {
                k: props.get(k) for k in ("total_slots", "model_path", "build_info", "n_ctx") if k in props
            }
        limits, sources = _static_limits(cfg, card, props, mets)
        if scale != 1.0:
            notes.append(f"server runs scaled time (x{scale:g}): durations multiplied by {scale:g}")
        p = _Prober(cfg, session, scale)
        chunk = int(limits["max_num_batched_tokens"])
        max_ctx = int(limits["max_context_tokens"])
        out_n = 2
        await p.send(p.ids(32), out_n)  # warm-up (connection, first-request set-up)
        obs: list[Observation] = []

        # 1. uncached prefill at geometric sizes
        sizes = [s for s in (32, 128, 512, 1024, 2048, 4096, 8192, 16384) if s + out_n <= max_ctx]
        sizes = sizes or [max(8, max_ctx // 2)]
        for _ in range(cfg.repeats):
            for n in sizes:
                o, _ = await p.send(p.ids(n), out_n)
                cached = int(o.cached_prompt_tokens or 0)
                x = prefill_work(n - cached, cached, chunk)
                x["request_s"] = x["admit_s"] = 1.0
                obs.append(Observation("prefill", x, p.ttft(o), f"prompt={n} cached={cached}"))

        # 2. prefill on a cached prefix
        # a base of n + 255 tokens (n a multiple of 256): a cache of g-token blocks (g <= 256) reports
        # n + 256 - g of it, so the granularity shows
        extra, odd = 64, 255
        reported: list[tuple[int, int]] = []  # (cacheable prefix, cached tokens reported)
        for n in [s for s in sizes if s >= 128 and s + odd + extra + out_n <= max_ctx][-3:]:
            for _ in range(max(1, cfg.repeats - 1)):
                base = p.ids(n + odd)
                await p.send(base, out_n)
                o, _ = await p.send(base + p.ids(extra), out_n)
                cached = int(o.cached_prompt_tokens or 0)
                if o.cached_prompt_tokens is not None:
                    reported.append((len(base), cached))
                x = prefill_work(len(base) + extra - cached, cached, chunk)
                x["request_s"] = x["admit_s"] = 1.0
                note = f"prompt={len(base) + extra} cached={cached}"
                obs.append(Observation("prefill_cached", x, p.ttft(o), note))
        if reported and not any(c for _, c in reported):  # counts reported, nothing ever cached
            limits["prefix_caching"] = 0
            sources["prefix_caching"] = (
                f"probed: 0 tokens cached for each of {len(reported)} prompts on a prefix just sent"
            )
        elif "cache_block_tokens" not in limits:
            block = cache_granularity(reported)
            if block is not None:
                limits["cache_block_tokens"] = block
                sources["cache_block_tokens"] = (
                    f"inferred: the smallest power of two that explains the cached counts of {len(reported)} "
                    "prompts on a cached prefix"
                )

        # short streams: decode steps of an agent's short answer and its finish
        so = max(2, int(cfg.stream_tokens))
        stream_sizes = sorted({s for s in (64, 512) if s + so <= max_ctx} or {max(8, max_ctx // 4)})
        for _ in range(max(cfg.repeats, NOISE_MIN_STREAMS // len(stream_sizes) + 1)):
            for n in stream_sizes:
                o, _ = await p.send(p.ids(n), so)
                row = _stream_row(o, n, scale)
                if row is not None:
                    obs.append(row)

        # 3. decode step against batch size (+ the KV probe by usage share where needed)
        if limits.get("max_num_seqs") is None:
            seqs, src = await _probe_batch(p, root, cfg)
            limits["max_num_seqs"], sources["max_num_seqs"] = seqs, src
        max_b = int(limits["max_num_seqs"])
        batches = sorted({b for b in cfg.batch_sizes if b <= max_b} | {min(max_b, max(cfg.batch_sizes))})
        long_p = max(64, (max_ctx - cfg.decode_tokens) // 2)
        kv_probe: list[float] = []
        for prompt in (64, long_p):
            for b in batches:
                if prompt == long_p and time.perf_counter() - t_wall0 > cfg.budget_s:
                    notes.append(f"budget {cfg.budget_s:g} s spent: long-prompt decode at B={b} skipped")
                    continue
                if b * (prompt + cfg.decode_tokens + 16) > (limits.get("kv_capacity_tokens") or math.inf):
                    continue
                for _ in range(max(1, cfg.repeats - 1)):
                    want_kv = limits.get("kv_capacity_tokens") is None and b == batches[-1]
                    res = await _streams(p, b, prompt, cfg.decode_tokens, root if want_kv else None)
                    outs, usage = res
                    if usage:
                        kv_probe.extend(usage)
                    row = _decode_row(outs, prompt, p.origin, scale)
                    if row is not None:
                        obs.append(row)
        # the prefix cache's reach beyond the KV capacity (a host prompt cache, llama.cpp --cache-ram)
        if "host_cache_tokens" not in limits and limits.get("kv_capacity_tokens"):
            reach = await _cache_reach(p, obs, int(limits["kv_capacity_tokens"]), max_ctx, chunk)
            if reach is not None:
                limits["host_cache_tokens"], sources["host_cache_tokens"] = reach
        # one prompt per slot, or as many as the KV capacity holds (llama.cpp without --cache-ram)
        # (the KV capacity as known so far: from the server, or the decode streams' usage readings)
        kv_now = sorted(kv_probe)[len(kv_probe) // 2] if kv_probe else 0
        kv = int(limits.get("kv_capacity_tokens") or kv_now)
        if limits.get("prefix_caching") != 0 and kv:
            block = int(limits.get("cache_block_tokens") or 16)
            slot, why = await _slot_cache(p, max_b, kv, max_ctx, block, _small_request_s(obs, scale))
            if slot is not None:
                limits["slot_prompt_cache"], sources["slot_prompt_cache"] = slot, why
            else:
                notes.append(f"slot_prompt_cache not probed: {why}")

        # 4. mixed steps: a prefill arriving while streams decode (how much of the two overlaps)
        top = min(max_b - 1, max(batches))
        mixed_b = sorted({b for b in (min(4, top), top) if b >= 1})
        for prefill in _mixed_sizes(obs, chunk - top):
            for b in mixed_b:
                if time.perf_counter() - t_wall0 > cfg.budget_s:
                    notes.append(f"budget {cfg.budget_s:g} s spent: mixed step P={prefill} B={b} skipped")
                    continue
                if b * (64 + cfg.decode_tokens + 16) + prefill > (
                    limits.get("kv_capacity_tokens") or math.inf
                ):
                    continue
                for _ in range(max(1, cfg.repeats)):
                    row = await _mixed(p, b, prefill, cfg.decode_tokens, chunk)
                    if row is not None:
                        obs.append(row)
                    else:
                        notes.append(f"mixed step P={prefill} B={b}: no clean step seen (skipped)")
        # 6. arrivals: a short request's whole per-request cost to the streams decoding beside it
        arrive_b = sorted({b for b in (1, min(4, top)) if b >= 1})
        arrive_p = sorted({n for n in (128, 512) if n <= chunk - max(arrive_b) and n + so <= max_ctx})
        bg_out = max(cfg.decode_tokens, 3 * so)  # the streams outlast the request's prefill and answer
        for b in arrive_b:
            for n in arrive_p:
                if time.perf_counter() - t_wall0 > cfg.budget_s:
                    notes.append(f"budget {cfg.budget_s:g} s spent: arrival P={n} B={b} skipped")
                    continue
                if b * (64 + cfg.decode_tokens + 16) + n + so > (
                    limits.get("kv_capacity_tokens") or math.inf
                ):
                    continue
                for _ in range(max(1, cfg.repeats)):
                    row = await _arrival(p, b, n, so, bg_out, chunk)
                    if row is not None:
                        obs.append(row)
                    else:
                        notes.append(f"arrival P={n} B={b}: the streams ended before the request (skipped)")
        if limits.get("kv_capacity_tokens") is None:
            if kv_probe:
                limits["kv_capacity_tokens"] = int(sorted(kv_probe)[len(kv_probe) // 2])
                sources["kv_capacity_tokens"] = (
                    "probed: tokens held by running streams / vllm:kv_cache_usage_perc (median of "
                    f"{len(kv_probe)} readings)"
                )
            else:
                raise MeasurementError(
                    "KV capacity unknown: the server reports neither cache_config_info, /props n_ctx nor "
                    "kv_cache_usage_perc; give it (ProfileConfig.kv_capacity, --kv-capacity TOKENS)"
                )
    lag.stop()
    notes.append(f"client event-loop lag P95 {lag.p95() * 1e3:.1f} ms (wall; part of the rows' noise)")
    obs = _with_noise(obs, scale, lag.p95())
    fit = fit_step_time(obs)
    return ProfileResult(
        obs, fit, limits, sources, server, scale, time.perf_counter() - t_wall0, started, notes
    )


def _static_limits(
    cfg: ProfileConfig, card: dict[str, Any], props: dict[str, Any] | None, mets: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    limits: dict[str, Any] = {"max_num_seqs": None, "kv_capacity_tokens": None}
    src: dict[str, str] = {}
    slots = (props or {}).get("total_slots")
    gen = (props or {}).get("default_generation_settings") or {}
    n_ctx_slot = gen.get("n_ctx") or (props or {}).get("n_ctx")
    # context limit
    meta_ctx = (card.get("meta") or {}).get("n_ctx")
    if card.get("max_model_len"):
        limits["max_context_tokens"], src["max_context_tokens"] = int(card["max_model_len"]), "/v1/models"
    elif n_ctx_slot or meta_ctx:
        limits["max_context_tokens"] = int(n_ctx_slot or meta_ctx or 0)
        src["max_context_tokens"] = "/props n_ctx (per slot)" if n_ctx_slot else "/v1/models meta.n_ctx"
    else:
        limits["max_context_tokens"], src["max_context_tokens"] = 8192, "assumed (server does not say)"
    if cfg.max_context:
        limits["max_context_tokens"] = min(limits["max_context_tokens"], int(cfg.max_context))
        src["max_context_tokens"] += f"; capped by max_context {cfg.max_context}"
    # largest batch
    if cfg.max_batch:
        limits["max_num_seqs"], src["max_num_seqs"] = int(cfg.max_batch), "given (max_batch)"
    elif slots:
        limits["max_num_seqs"], src["max_num_seqs"] = int(slots), "/props total_slots"
    # KV capacity
    info = mets.get("vllm:cache_config_info")
    if cfg.kv_capacity:
        limits["kv_capacity_tokens"], src["kv_capacity_tokens"] = int(cfg.kv_capacity), "given (kv_capacity)"
    elif info and info[0][0].get("num_gpu_blocks"):
        lab = info[0][0]
        cap = int(float(lab["num_gpu_blocks"])) * int(float(lab.get("block_size", 16)))
        limits["kv_capacity_tokens"], src["kv_capacity_tokens"] = cap, "/metrics vllm:cache_config_info"
    if info and info[0][0].get("block_size"):
        if info[0][0].get("enable_prefix_caching", "True") == "False":
            limits["prefix_caching"] = 0
            src["prefix_caching"] = "/metrics vllm:cache_config_info enable_prefix_caching"
        else:
            limits["cache_block_tokens"] = int(float(info[0][0]["block_size"]))
            src["cache_block_tokens"] = "/metrics vllm:cache_config_info block_size"
    elif n_ctx_slot and slots:
        cap = int(n_ctx_slot) * int(slots)
        limits["kv_capacity_tokens"] = cap
        src["kv_capacity_tokens"] = "/props n_ctx per slot x total_slots"
    # prefill chunk
    if cfg.chunk_tokens:
        limits["max_num_batched_tokens"], src["max_num_batched_tokens"] = int(cfg.chunk_tokens), "given"
    elif props and props.get("n_batch"):
        limits["max_num_batched_tokens"], src["max_num_batched_tokens"] = int(props["n_batch"]), "/props"
    else:
        limits["max_num_batched_tokens"] = 8192
        src["max_num_batched_tokens"] = "assumed 8192 (server does not say; chunk_tokens sets it)"
    return limits, src


async def _streams(
    p: _Prober, b: int, prompt: int, out: int, root: str | None
) -> tuple[list[tuple[Any, list[tuple[int, int]]]], list[float]]:
    """Run ``b`` streams at once; with ``root``, also read KV usage shares while they decode and turn each
    into a capacity estimate (tokens held / share)."""
    tasks = [asyncio.ensure_future(p.send(p.ids(prompt), out)) for _ in range(b)]
    caps: list[float] = []
    if root is not None:
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.02)
            m = _metrics(await _get_text(p.session, f"{root}/metrics"))
            share = _gauge(m, "vllm:kv_cache_usage_perc")
            running = _gauge(m, "vllm:num_requests_running")
            waiting = _gauge(m, "vllm:num_requests_waiting") or 0
            if share and share > 0 and running == b and waiting == 0:
                # every stream decoding: each holds its prompt + about half its output, assume mid-way
                caps.append(b * (prompt + out / 2.0) / share)
    outs = await asyncio.gather(*tasks)
    return list(outs), caps


def _mixed_sizes(obs: list[Observation], largest: int) -> list[int]:
    """Prefill sizes for the mixed steps: where a prefill chunk takes about as long as a decode step
    (``P*`` = median pure-decode step / the cold prefill's seconds per token), the sizes at which the
    two parts' overlap shows most, as ``P*/2``, ``P*``, ``2 P*`` within 16 .. ``largest`` tokens."""
    import statistics

    dec = [o.seconds for o in obs if o.kind == "decode"]
    cold = sorted((o.x["prefill_token_s"], o.seconds) for o in obs if o.kind == "prefill")
    if not dec or len(cold) < 2 or cold[-1][0] <= cold[0][0]:
        return [n for n in (128, 512, 2048) if n <= largest]
    per_token = max(1e-12, (cold[-1][1] - cold[0][1]) / (cold[-1][0] - cold[0][0]))
    star = statistics.median(dec) / per_token
    return sorted({int(min(largest, max(16, f * star))) for f in (0.5, 1.0, 2.0)})


async def _beside_streams(
    p: _Prober, b: int, prompt: int, stream_out: int, new: int, out: int
) -> tuple[Any, list[tuple[Any, list[tuple[int, int]]]], list[list[tuple[int, int]]]]:
    """``b`` streams (``prompt``-token prompts, ``stream_out`` tokens) started together; once each has
    streamed 3 chunks (decoding), one request of ``new`` fresh prompt tokens and ``out`` output tokens is
    sent. Returns its outcome, the streams' outcomes and their chunk logs ``(t_ns, tokens)``."""
    logs: list[list[tuple[int, int]]] = [[] for _ in range(b)]
    tasks = [asyncio.ensure_future(p.send(p.ids(prompt), stream_out, logs[i])) for i in range(b)]
    deadline = time.perf_counter() + p.cfg.request_timeout_s
    while not all(len(g) >= 3 for g in logs) and time.perf_counter() < deadline:
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.002)
    o, _ = await p.send(p.ids(new), out)
    outs = await asyncio.gather(*tasks)
    return o, list(outs), logs


async def _mixed(p: _Prober, b: int, prefill: int, out: int, chunk: int) -> Observation | None:
    """One mixed step: ``b`` streams (64-token prompts) decoding when a ``prefill``-token prompt arrives.
    Its prefill (one chunk) runs in the same engine step as their next tokens, so that step is the gap in
    each stream between the chunk nearest the prefill's first token and the one before it (the median
    over the streams). None when the prefill did not land inside every stream's decoding."""
    prompt = 64
    o, outs, logs = await _beside_streams(p, b, prompt, out, prefill, 2)
    tf = p.origin + int(o.t_first_s * 1e9)
    gaps, ctx = [], 0.0
    for (od, _), log_ in zip(outs, logs, strict=True):
        times = [t for t, _ in log_]
        if len(times) < 4:
            return None
        i = min(range(len(times)), key=lambda k: abs(times[k] - tf))
        if i < 2 or i >= len(times) - 1:
            return None  # the prefill landed before the stream decoded or after it ended
        gaps.append((times[i] - times[i - 1]) / 1e9 * p.scale)
        ratio = (od.output_tokens or len(times)) / max(1, len(times))
        ctx += prompt + i * ratio
    x = prefill_work(prefill, int(o.cached_prompt_tokens or 0), chunk)
    if x["step_s"] != 1:
        return None
    x["decode_seq_s"] = float(b)
    x["context_token_s"] += ctx
    x["admit_s"] = 1.0  # the arriving prompt's admission: the streams wait for it too
    gaps.sort()
    return Observation("mixed", x, gaps[len(gaps) // 2], f"B={b} prefill={prefill}")


def _stream_row(o: Any, prompt: int, scale: float) -> Observation | None:
    """A short stream alone: from its first token to its end are ``output - 1`` decode steps at batch 1
    (context from ``prompt`` up), its finish and its own end (None for fewer than 2 tokens)."""
    n = int(o.output_tokens or 0)
    if n < 2 or o.t_end_s <= o.t_first_s:
        return None
    steps = n - 1
    x = {
        "step_s": float(steps),
        "decode_seq_s": float(steps),
        "context_token_s": steps * (prompt + 1 + n / 2.0),
        "finish_s": 1.0,
        "end_s": 1.0,
    }
    return Observation(
        "stream", x, (o.t_end_s - o.t_first_s) * scale, f"prompt={prompt} out={n} steps={steps}"
    )


def _window(log_: list[tuple[int, int]], t0: int, t1: int) -> tuple[int, int] | None:
    """Indexes (i, j) of a stream's last chunk at or before ``t0`` and first at or after ``t1`` (ns);
    None when the stream does not span them with a chunk before and after."""
    times = [t for t, _ in log_]
    i = sum(1 for t in times if t <= t0) - 1
    j = next((k for k, t in enumerate(times) if t >= t1), None)
    if i < 1 or j is None or j >= len(times) - 1:
        return None
    return i, j


async def _arrival(p: _Prober, b: int, new: int, out: int, bg_out: int, chunk: int) -> Observation | None:
    """One arrival: ``b`` streams (64-token prompts, ``bg_out`` tokens) decoding when a request of ``new``
    prompt tokens and ``out`` output tokens is sent; once it has ended, the streams' time from their last
    chunk before its send to their first chunk after its end (the median stream) with the work in it:
    their steps, its prefill, its ``out - 1`` decode steps beside them, one admission and one finish.
    None when a stream ended before the request did."""
    prompt = 64
    o, outs, logs = await _beside_streams(p, b, prompt, bg_out, new, out)
    t0, t1 = p.origin + int(o.t_send_s * 1e9), p.origin + int(o.t_end_s * 1e9)
    spans = []
    for (od, _), log_ in zip(outs, logs, strict=True):
        w = _window(log_, t0, t1)
        if w is None:
            return None
        i, j = w
        ratio = (od.output_tokens or len(log_)) / max(1, len(log_))
        spans.append(((log_[j][0] - log_[i][0]) / 1e9 * p.scale, (j - i) * ratio, (i + j) / 2.0 * ratio))
    spans.sort()
    seconds, steps, mid = spans[len(spans) // 2]
    n = int(o.output_tokens or out)
    pre = prefill_work(new - int(o.cached_prompt_tokens or 0), int(o.cached_prompt_tokens or 0), chunk)
    x = {
        "step_s": steps,
        "decode_seq_s": b * steps + (n - 1),
        "context_token_s": b * steps * (prompt + mid)
        + (n - 1) * (new + 1 + n / 2.0)
        + pre["context_token_s"],
        "prefill_token_s": pre["prefill_token_s"],
        "prefill_pair_s": pre["prefill_pair_s"],
        "admit_s": 1.0,
        "finish_s": 1.0,
    }
    return Observation("arrival", x, seconds, f"B={b} prefill={new} out={n} steps={steps:.0f}")


CACHE_REACH_KV = 4  # the host-cache probe pushes this many KV capacities of other prompts through
CACHE_REACH_BUDGET_S = 20.0  # ... when their prefill takes at most this long (else it is not probed)


async def _cache_reach(
    p: _Prober, obs: list[Observation], kv: int, max_ctx: int, chunk: int
) -> tuple[int, str] | None:
    """Whether a prompt stays cached after :data:`CACHE_REACH_KV` x the KV capacity of other prompts went
    through the server (a host prompt cache): ``(host_cache_tokens, source)``, the tokens pushed through
    as a lower bound of its size where it stayed, 0 where it was evicted; None where the push would take
    longer than :data:`CACHE_REACH_BUDGET_S` (from the cold prefill rows) or the server reports no cached
    counts."""
    cold = [o for o in obs if o.kind == "prefill" and o.x.get("prefill_token_s", 0) >= 256]
    if not cold:
        return None
    per_token = max(o.seconds / o.x["prefill_token_s"] for o in cold) / p.scale
    size = max(64, min(max_ctx, chunk) - 70)
    push = CACHE_REACH_KV * kv
    if push * per_token > CACHE_REACH_BUDGET_S:
        return None
    base = p.ids(min(1024, max_ctx // 2) + 255)
    await p.send(base, 2)
    o, _ = await p.send(base + p.ids(64), 2)
    if o.cached_prompt_tokens is None or int(o.cached_prompt_tokens) < len(base) // 2:
        return None  # no cached counts, or the prompt is not cached even right away
    before = int(o.cached_prompt_tokens)
    pushed, kept, t0 = 0, 0, time.perf_counter()
    # rounds of CACHE_REACH_KV x KV capacity while the prompt stays cached and the budget lasts: the
    # last round it survived is the lower bound reported
    while time.perf_counter() - t0 < CACHE_REACH_BUDGET_S:
        target = pushed + push
        while pushed < target:
            await p.send(p.ids(size), 2)
            pushed += size
        o, _ = await p.send(base + p.ids(64), 2)
        after = int(o.cached_prompt_tokens or 0)
        if after < 0.9 * before:
            break
        kept = pushed
    if kept:
        return kept, (
            f"probed: a prompt stayed cached after {kept} tokens of other prompts ({kept / kv:.0f} x the KV "
            f"capacity) went through in {time.perf_counter() - t0:.0f} s: a host prompt cache of at least "
            "that size"
        )
    return 0, f"probed: a prompt was evicted ({after} of {before} cached) after {pushed} tokens of others"


SLOT_PROBE_OTHER = 64  # tokens of each other prompt in the slot-cache probe
SLOT_PROBE_OUT = 8  # ... and its output tokens (so that the ones sent at once run together)
SLOT_PROBE_EXTRA = 16  # new tokens after the base prompt when it is sent again
SLOT_PROBE_BUDGET_S = 20.0  # the probe runs where its estimated time is at most this (wall seconds)


def _small_request_s(obs: list[Observation], scale: float) -> tuple[float, float] | None:
    """Wall seconds of the smallest cold prompt's TTFT (median of its repeats) and of one decode step of
    a short stream alone (median), from the profile's rows; None without both kinds of row."""
    import statistics

    cold = [o for o in obs if o.kind == "prefill"]
    streams = [o.seconds / o.x["step_s"] for o in obs if o.kind == "stream" and o.x.get("step_s")]
    if not cold or not streams:
        return None
    n0 = min(o.x["prefill_token_s"] for o in cold)
    ttft = statistics.median(o.seconds for o in cold if o.x["prefill_token_s"] == n0)
    return ttft / scale, statistics.median(streams) / scale


async def _slot_cache(
    p: _Prober, seqs: int, kv: int, max_ctx: int, block: int, small: tuple[float, float] | None
) -> tuple[bool | None, str]:
    """Whether the server keeps one prompt per slot (llama.cpp without a host prompt cache) or every prompt
    its KV capacity holds (vLLM's block pool, llama.cpp's host cache, serve-sim's engine).

    Rounds for ``k`` = 0, ``seqs - 1`` and ``seqs`` (``seqs``: the server's ``max_num_seqs``), each on a
    fresh base prompt of ``n`` tokens (256, at least two cache blocks of ``block`` tokens): the base
    (2 output tokens), then ``k`` random prompts of :data:`SLOT_PROBE_OTHER` tokens sent at once
    (:data:`SLOT_PROBE_OUT` output tokens each), then the base plus :data:`SLOT_PROBE_EXTRA` new tokens,
    whose cached count says whether the base is still cached. With one prompt per slot the base survives
    ``seqs - 1`` others (they take the other slots: llama.cpp gives a new prompt the least recently used
    idle slot, and the base's is the most recent) and is dropped by ``seqs`` (one of them takes its slot;
    sent at once they take every slot, whichever way a slot is chosen), though the base and all the others
    hold at most half the KV capacity; a cache bounded by the KV capacity keeps the base in every round.
    No other prompt shares 10 % of its tokens with a slot's prompt (random ids; a shared start token is
    1/65), so llama.cpp's choice of a slot by shared prefix (``--slot-prompt-similarity``, 0.1 by
    default) does not apply to them, while the base sent again shares all of its slot's prompt and goes
    back to it.

    ``small``: wall seconds of a small prompt's TTFT and of one decode step (:func:`_small_request_s`),
    for the estimate of the probe's time. Returns ``(slot_prompt_cache, source)``, or ``(None, why)``
    where the probe cannot tell: the others and the base not within half the KV capacity, an estimate
    over :data:`SLOT_PROBE_BUDGET_S`, no cached counts, the base not cached even when sent again at once,
    or the base dropped by fewer others than ``seqs`` (neither one prompt per slot nor the KV capacity).
    """
    extra, out = SLOT_PROBE_EXTRA, SLOT_PROBE_OUT
    n = min(max(256, 2 * block), max_ctx - extra - 2)
    if n < 2 * block or n < 32:
        return None, f"a base prompt of two {block}-token cache blocks does not fit the context ({max_ctx})"
    held = seqs * (SLOT_PROBE_OTHER + out) + n + extra + 2
    if held > kv / 2:
        return None, (
            f"{seqs} prompts of {SLOT_PROBE_OTHER + out} tokens and a {n}-token one ({held} tokens) are not "
            f"within half the KV capacity ({kv}), so a cache bounded by it could drop the prompt too"
        )
    rounds = sorted({0, seqs - 1, seqs})
    if small is not None:
        ttft, step = small
        est = sum(2 * (ttft + step) + k * ttft + out * step for k in rounds)
        if est > SLOT_PROBE_BUDGET_S:
            return None, f"estimated {est:.0f} s (more than {SLOT_PROBE_BUDGET_S:g} s) for {seqs} slots"
    t0 = time.perf_counter()
    cached: dict[int, int] = {}
    for k in rounds:
        base = p.ids(n)
        await p.send(base, 2)
        if k:
            await asyncio.gather(*(p.send(p.ids(SLOT_PROBE_OTHER), out) for _ in range(k)))
        o, _ = await p.send(base + p.ids(extra), 2)
        if o.cached_prompt_tokens is None:
            return None, "the server reports no cached prompt tokens"
        cached[k] = int(o.cached_prompt_tokens)
        if k == 0 and cached[0] < n // 2:
            return None, f"a {n}-token prompt sent again at once had {cached[0]} tokens cached"
    kept = {k: c >= 0.9 * cached[0] for k, c in cached.items()}
    what = (
        f"a {n}-token prompt sent again after k other {SLOT_PROBE_OTHER}-token prompts (sent at once) had "
        + ", ".join(f"{c} tokens cached after k = {k}" for k, c in cached.items())
        + f" ({held} tokens in all, {held / kv:.1%} of the KV capacity; {time.perf_counter() - t0:.1f} s)"
    )
    if not kept[seqs - 1]:
        return None, f"dropped by fewer other prompts than the {seqs} slots: {what}"
    if kept[seqs]:
        return False, f"probed: kept through max_num_seqs = {seqs} other prompts (by KV capacity): {what}"
    return True, (
        f"probed: kept through {seqs - 1} other prompts, dropped by max_num_seqs = {seqs} (one prompt per "
        f"slot): {what}"
    )


def cache_granularity(reported: list[tuple[int, int]], largest: int = 1024) -> int | None:
    """The prefix cache's granularity (tokens) from ``(cacheable prefix, cached tokens reported)`` pairs:
    the smallest power of two ``g`` <= ``largest`` with ``cached == prefix // g * g`` for every pair (1:
    token by token, as llama.cpp's slots). None without a pair that caches anything, or when no power of
    two explains them all (the server caches something else)."""
    pairs = [(n, c) for n, c in reported if c > 0]
    if not pairs:
        return None
    g = 1
    while g <= largest:
        if all(c == n // g * g for n, c in pairs):
            return g
        g *= 2
    return None


async def _probe_batch(p: _Prober, root: str, cfg: ProfileConfig) -> tuple[int, str]:
    """Largest batch: ``probe_streams`` short streams at once, polling running / waiting in /metrics."""
    n = cfg.probe_streams
    tasks = [asyncio.ensure_future(p.send(p.ids(16), 64)) for _ in range(n)]
    max_run, saw_wait, saw_metrics, prev_wait = 0.0, False, False, False
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.02)
        m = _metrics(await _get_text(p.session, f"{root}/metrics"))
        run = _gauge(m, "vllm:num_requests_running", "llamacpp:requests_processing")
        wait = _gauge(m, "vllm:num_requests_waiting", "llamacpp:requests_deferred")
        if run is not None:
            saw_metrics = True
            max_run = max(max_run, run)
        # a limit shows as requests waiting, in two readings in a row (not just arrivals before the
        # next step), while fewer than all the probe's streams run
        if wait and prev_wait and run is not None and run < n:
            saw_wait = True
        prev_wait = bool(wait)
    await asyncio.gather(*tasks)
    if saw_metrics and saw_wait and 0 < max_run < n:
        return int(max_run), f"probed: {n} streams, at most {int(max_run)} running while others waited"
    if saw_metrics:
        seqs = max(_VLLM_DEFAULT_SEQS, int(max_run))
        return seqs, (
            f"not reached by a probe of {n} streams (all ran at once); vLLM's default max_num_seqs "
            f"{_VLLM_DEFAULT_SEQS} assumed (max_batch sets it)"
        )
    return n, f"no /metrics: at least {n} assumed (max_batch sets it)"


class _LoopLag:
    """Overshoot of 1 ms sleeps on the client's event loop while the profile runs (wall seconds): how
    late the client can stamp a chunk on this machine now."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.samples.append(max(0.0, loop.time() - t - 0.001))

    def p95(self) -> float:
        if not self.samples:
            return 0.0
        xs = sorted(self.samples)
        return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def _with_noise(obs: list[Observation], scale: float, loop_lag_s: float = 0.0) -> list[Observation]:
    """Set each row's expected noise (seconds): 2 % of it, plus a timing jitter ``j`` = the largest of
    1 ms, the client's event-loop lag (P95) and the spread between repeats of the smallest cold prompt
    (1.4826 x their median absolute deviation: the standard deviation where they are normal, unmoved by
    one stalled repeat; all in the server's seconds). A single request carries ``j`` once; a decode row is a
    mean over its steps whose window ends are each off by up to ``j``, so it carries ``2 j / steps``."""
    import statistics

    jitter = max(1e-3, loop_lag_s) * scale
    small = [o for o in obs if o.kind == "prefill"]
    if small:
        n0 = min(o.x["prefill_token_s"] for o in small)
        ys = [o.seconds for o in small if o.x["prefill_token_s"] == n0]
        if len(ys) > 1:  # robust: one repeat stalled by another process must not blur every row
            med = statistics.median(ys)
            jitter = max(jitter, 1.4826 * statistics.median(abs(y - med) for y in ys))
    out = []
    for o in obs:
        rel = 0.02 * o.seconds
        if o.x.get("request_s"):
            sigma = math.hypot(rel, jitter)
        elif o.kind in ("stream", "arrival"):  # a whole span: both ends stamped by the client
            sigma = math.hypot(rel, 2.0 * jitter)
        else:
            steps = float(o.note.split("steps=")[1].split()[0]) if "steps=" in o.note else 1.0
            sigma = math.hypot(rel, 2.0 * jitter / max(1.0, steps))
        out.append(Observation(o.kind, o.x, o.seconds, o.note, sigma))
    return out


def profile_sync(cfg: ProfileConfig) -> ProfileResult:
    """:func:`profile_server` in a new event loop."""
    return asyncio.run(profile_server(cfg))


# comments a twin file carries above its sections
_COMMENTS = {
    "engine": "engine limits (tokens); where each came from: [provenance.limit_sources]",
    "step": "fitted step time, s per step / prefill token / decode sequence / context token / pair / "
    "admitted request / finished request / own end / memory-side s per step; overlap share "
    "(agentperf_kit.sim.twin)",
    "step_se": "standard errors of [step]",
    "noise": "server noise: step-time factors the twin draws from, each held hold_s (agentperf_kit.sim.twin)",
    "observation": "measurements behind the fit (seconds; the work amounts by term)",
}


def noise_section(fit: StepFit, observations: list[Observation]) -> dict[str, Any] | None:
    """The twin's ``[noise]`` (:mod:`agentperf_kit.sim.twin`): the short streams' measured / fitted
    ratios divided by their median, sorted, and the median stream's seconds as the hold; None with
    fewer than :data:`NOISE_MIN_STREAMS` streams."""
    import statistics

    used = [o for o in observations if o.seconds > 0]
    pairs = [(o.seconds, p) for o, p in zip(used, fit.predicted, strict=True) if o.kind == "stream" and p > 0]
    if len(pairs) < NOISE_MIN_STREAMS:
        return None
    ratios = [y / p for y, p in pairs]
    med = statistics.median(ratios)
    return {
        "step_factors": sorted(round(r / med, 4) for r in ratios),
        "hold_s": statistics.median(y for y, _ in pairs),
        "source": f"{len(pairs)} short streams of the profile (measured / fitted, over their median)",
    }


def _fit_sections(fit: StepFit, observations: list[Observation], z: float) -> dict[str, Any]:
    """The twin file's sections that come from a fit: ``[step]``, ``[step_se]``, ``[band]``, ``[fit]``,
    ``[noise]`` (where the profile has the streams for it) and every observation with its prediction and
    residual."""
    noise = noise_section(fit, observations)
    return {
        **({"noise": noise} if noise else {}),
        "step": {t: fit.coef[t] for t in (*TERMS, *SHAPE)},
        "step_se": {t: fit.se[t] for t in (*TERMS, *SHAPE)},
        "band": {"z": z, "note": "low = coefficients at estimate + z x SE, high = estimate - z x SE (>= 0)"},
        "fit": {
            "observations": len(observations),
            "identified": list(fit.identified),
            "form": fit.form,
            "overlap_f_test_p": fit.overlap_p_value,
            "request_s": fit.coef["request_s"],
            "request_s_se": fit.se["request_s"],
            "rms_rel_residual": fit.rms_rel,
            "max_abs_rel_residual": fit.max_abs_rel,
        },
        "observation": [
            {
                "kind": o.kind,
                "note": o.note,
                "seconds": o.seconds,
                "predicted_s": pred,
                "rel_residual": rel,
                "sigma_s": o.sigma or o.seconds,
                **{k: float(v) for k, v in o.x.items()},
            }
            for o, pred, rel in zip(
                [o for o in observations if o.seconds > 0], fit.predicted, fit.rel_residuals, strict=True
            )
        ],
    }


def write_twin(res: ProfileResult, path: str | os.PathLike, *, z: float = 1.96) -> Path:
    """Write the twin preset TOML for ``res`` to ``path`` (see :mod:`agentperf_kit.sim.twin`)."""
    fit = res.fit
    model = str(res.server.get("model", "unknown"))
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    data: dict[str, Any] = {
        "kind": TWIN_KIND,
        "version": 1,
        "label": f"twin of {model} at {res.server.get('base_url')} (profiled {res.started_utc})",
        "model": model,
        "accelerator": "measured",
        "accelerator_count": 1,
        "engine": {
            "max_num_seqs": int(res.limits["max_num_seqs"]),
            "max_num_batched_tokens": int(res.limits["max_num_batched_tokens"]),
            "kv_capacity_tokens": int(res.limits["kv_capacity_tokens"]),
            "max_context_tokens": int(res.limits["max_context_tokens"]),
            "kv_policy": "preempt",
            **{
                k: int(res.limits[k])
                for k in ("cache_block_tokens", "host_cache_tokens", "prefix_caching")
                if res.limits.get(k) is not None
            },
            **(
                {"slot_prompt_cache": bool(res.limits["slot_prompt_cache"])}
                if res.limits.get("slot_prompt_cache") is not None
                else {}
            ),
        },
        "provenance": {
            "tool": f"agentperf-kit {__version__} (agentperf profile)",
            "date_utc": res.started_utc,
            "wall_s": round(res.wall_s, 1),
            "loadavg_1m": load[0],
            "time_scale": res.time_scale,
            "notes": res.notes,
            "limit_sources": res.limit_sources,
            "server": {k: v for k, v in res.server.items() if k != "models_card"},
            "models_card": {str(k): str(v) for k, v in res.server.get("models_card", {}).items()},
        },
        **_fit_sections(fit, res.observations, z),
    }
    text = dump_toml(data, comments=_COMMENTS)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


# kinds of observation whose measured span contains the admission of one request (the profile's own
# rows: a cold or cached prefill's TTFT, a mixed step's arriving prompt)
_ADMITS_ONE = ("prefill", "prefill_cached", "mixed")


def refit_twin(src: str | os.PathLike, dst: str | os.PathLike, *, z: float = 1.96) -> tuple[Path, StepFit]:
    """Fit the step-time model again to the observations stored in twin file ``src`` and write the result
    to ``dst``: a profile taken under an earlier form of the model (before ``admit_s``: those rows get
    their one admission; before ``end_s``: short streams get their own end) is re-read under the current
    one without measuring again. Engine limits, provenance and observations are kept; ``[step]``,
    ``[step_se]``, ``[fit]`` and each observation's prediction are the new fit's; ``[provenance]
    refit_of`` names ``src``; an ``[insitu]`` fit (fitted on the old coefficients) is dropped."""
    data = tomllib.loads(Path(src).read_text())
    if data.get("kind") != TWIN_KIND:
        raise ConfigError(f"{src}: not a twin preset (kind = {data.get('kind')!r}, expected {TWIN_KIND!r})")
    rows = data.get("observation") or []
    obs = []
    for r in rows:
        x = {c: float(r[c]) for c in COLUMNS if c in r}
        if "admit_s" not in r and r.get("kind") in _ADMITS_ONE:
            x["admit_s"] = 1.0
        if "end_s" not in r and r.get("kind") == "stream":  # a short stream's span ends with its own end
            x["end_s"] = 1.0
        note = str(r.get("note", ""))
        obs.append(Observation(str(r["kind"]), x, float(r["seconds"]), note, r.get("sigma_s")))
    fit = fit_step_time(obs)
    data.update(_fit_sections(fit, obs, z))
    prov = dict(data.get("provenance") or {})
    if data.pop("insitu", None) is not None:  # fitted on the old coefficients: apply --insitu again
        prov["insitu_dropped"] = "the refit replaced the in-situ admit_s and finish_s; apply --insitu again"
    prov["refit_of"] = str(src)
    prov["refit_tool"] = f"agentperf-kit {__version__} (agentperf profile --refit)"
    prov["refit_date_utc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data["provenance"] = prov
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_toml(data, comments=_COMMENTS))
    return out, fit
