"""Event-driven model of an LLM serving engine (continuous batching, chunked prefill, prefix cache).

**Scheduler** (mirrors vLLM V1 / SGLang): each engine step processes every running decode sequence (one
token each) plus chunked prefill up to ``max_num_batched_tokens`` (decode first, then prefill, FCFS);
at most ``max_num_seqs`` sequences run. Admission is FCFS, head of line, under one of two KV policies
(``kv_policy``, from the deployment):

- ``preempt`` (the default; vLLM's behaviour): a request is admitted when its prompt fits with a 1 %
  watermark left free, after evicting idle prefix-cache entries in LRU order. Decoding sequences grow the
  KV by one token per step; idle entries are evicted as needed, and when the running requests alone outgrow
  the cache the newest is preempted by recompute: it frees its KV (kept as an idle cache entry while it
  survives), goes back to the head of the queue, and is re-prefilled later with its prompt plus the tokens
  generated so far (hitting whatever of that entry is still cached) before generating the rest; its client
  sees a stall, not a restart.
- ``reserve``: admission reserves prompt + forced output, so nothing is ever preempted.

In both, a request that does not fit waits, and everything behind it: the queueing that makes TTFT explode
when the KV cache fills.

**Prefix cache** at phase granularity: when a request finishes, its phase keeps an idle cache entry of
prompt + output tokens, of which only the prompt is reusable by the phase's next turn (the server cached
its own generated text, which differs from the recorded output the next turn carries). An entry is
evictable (LRU) while the agent's tool runs. A hit covers min(reusable, prompt prefix of the next turn),
rounded down to 16-token blocks, and skips that prefill.

**Step time** (whole system; every term named in docs/simulator.md "Step-time model", parameters and
sources in ``presets/physics.toml``): ``latency x floor + max(cmp, mem) + (1 - overlap) x min(cmp, mem) +
comm``. ``cmp`` = non-expert linear FLOPs at the weight precision's peak + routed-expert FLOPs on the
busiest rank (BF16 peak for FP4 experts on accelerators without FP4 tensor cores) + attention FLOPs (a
per-query part for sparse attention and a per-(query, context token) part); ``mem`` = dense weights
(one copy per GPU under data-parallel attention) + KV read (per context token and per decoding sequence)
+ the routed experts the batch touches (E x (1 - (1 - k/E)^tokens) per MoE layer, busiest rank, at the
dequant bandwidth factor); ``comm`` = exposed EP all-to-all per MoE layer and TP all-reduces across
nodes. With MTP a pure-decode step verifies 1 + draft tokens per sequence and counts as 1 + acceptance
output tokens (``decode_step_time``).

**Events, not steps**: between events (an arrival, a finish, a prefill chunk) the decode batch is constant
and each step adds B context tokens, so step time grows linearly with the step index and the time of the
next event is closed form (``_advance_decode``). Steps that carry prefill are simulated one by one.
The real-time face (``agentperf serve-sim``, ``sim/server.py``) drives the same engine step by step and
reads each request's progress through :meth:`Engine.decoding` and :meth:`Engine.tokens_done`.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mypy_extensions import mypyc_attr

from ..errors import SimulatorInvariantError
from .presets import Deployment, Efficiency

__all__ = ["BLOCK_TOKENS", "Engine", "SimRequest", "SimulatorInvariantError"]

BLOCK_TOKENS = 16


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request inside the engine (token counts in tokens, times in virtual seconds)."""

    key: Any
    phase_id: int
    prompt: int
    prefix: int  # prompt tokens that repeat the phase's previous prompt (0 for a fresh phase)
    output: int
    t_arrival: float
    hit: int = 0  # prefix-cache hit of the first attempt (what the server reports as cached)
    prefilled: int = 0
    reserve: int = 0
    t_first: float = math.nan
    ctx0_minus_g: int = 0
    finish_step: int = 0
    # the current attempt: after a preemption by recompute the request is re-prefilled with its prompt
    # plus the tokens generated so far (gen0) and generates the rest
    pe: int = -1  # effective prompt
    oe: int = -1  # effective output
    gen0: int = 0
    preemptions: int = 0
    seq: int = 0  # admission order (newest is preempted first)
    kv_ready: bool = False  # its KV arrives from a prefill pool (disaggregation): nothing to prefill
    in_decode: bool = False  # in the decode batch now (False while queued or re-prefilled after preemption)


@mypyc_attr(allow_interpreted_subclasses=True)  # TwinEngine (sim/twin.py) is not compiled
class Engine:
    """The simulated serving engine. ``on_finish(req, t_end)`` is called when a request's last token
    is produced; ``on_reject(req, t, detail)`` when a request can never fit the KV cache."""

    def __init__(
        self,
        dep: Deployment,
        eff: Efficiency,
        on_finish: Callable[[SimRequest, float], None],
        on_reject: Callable[[SimRequest, float, str], None],
        kv_policy: str | None = None,
    ) -> None:
        self.dep = dep
        self.kv_policy = kv_policy or dep.kv_policy
        if self.kv_policy not in ("reserve", "preempt"):
            raise ValueError(f"kv_policy must be 'reserve' or 'preempt', got {self.kv_policy!r}")
        self.preempt = self.kv_policy == "preempt"
        self.prefill_alloc = 0  # KV of the prompts being prefilled (preempt policy)
        self.prefill_computed = 0  # prompt tokens actually prefilled (recomputation included)
        self.preemptions = 0
        self.eff = eff
        self.on_finish = on_finish
        self.on_reject = on_reject
        self.now = 0.0
        self.waiting: deque[SimRequest] = deque()
        self.prefilling: list[SimRequest] = []
        self.step_admits = 0  # requests admitted since the last mixed step (a twin's step time reads it)
        # prefix-cache granularity (tokens): a twin's from its server, else the simulator's blocks
        self._block = int(getattr(dep, "cache_block_tokens", 0) or BLOCK_TOKENS)
        if not getattr(dep, "prefix_caching", True):  # a server without prefix caching: no block is reused
            self._block = 1 << 62
        self._decode: list[tuple[int, int, SimRequest]] = []
        self._n = 0  # tie-breaker
        self.g = 0  # global decode step index
        self.b = 0  # decoding sequences
        self.s = 0  # sum over decoders of (ctx0 - g0): context sum at step g is s + b * g
        self.cache: OrderedDict[int, tuple[int, int]] = OrderedDict()  # phase -> (mem, reusable)
        # a host prompt cache beyond the device's KV (llama.cpp --cache-ram; a twin's host_cache_tokens):
        # entries the device evicts stay reusable there, LRU within its capacity (tokens)
        self._host_cap = int(getattr(dep, "host_cache_tokens", 0) or 0)
        self.host_cache: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # a server that keeps one prompt per slot (a twin's slot_prompt_cache: llama.cpp without a host
        # cache): idle entries + running requests <= max_num_seqs, the least recently used entry evicted
        self._slot_cache = bool(getattr(dep, "slot_prompt_cache", False))
        self.host_tokens = 0
        self.idle_tokens = 0
        self.running_tokens = 0
        self.busy_s = 0.0
        self.steps = 0
        self.cached_tokens_total = 0
        self.prompt_tokens_total = 0
        # conservation: submitted = finished + rejected + cancelled + aborted + still in the engine
        self.submitted = 0
        self.finished_count = 0
        self.rejected_count = 0
        self.cancelled_count = 0
        self.aborted_count = 0
        self._finished = False
        # constants of the step-time model
        self._fe = dep.flops_per_s * eff.compute
        self._fa = dep.attn_flops_per_s * eff.compute
        self._fx = (dep.expert_flops_per_s or dep.flops_per_s) * eff.compute
        self._dense = dep.dense_weight_bytes * dep.dense_weight_replicas
        self._be = dep.bandwidth_bytes_per_s * eff.bandwidth
        self._bx = self._be * dep.expert_bandwidth_factor
        # fixed latencies, scaled by the efficiency set's latency factor
        self._fixed = dep.step_overhead_s * eff.latency
        self._a2a_lat = dep.a2a_latency_s * eff.latency
        self._tp_lat = dep.tp_allreduce_latency_s * eff.latency
        self._cap = dep.kv_capacity_tokens
        # preempt policy: admission leaves 1 % of the cache free (vLLM's watermark), against thrashing
        self._watermark = int(0.01 * self._cap) if self.preempt else 0
        self._ov = 1.0 - dep.overlap
        self._kv_ctx = dep.kv_read_bytes_per_ctx
        # (a twin's deployment has no bandwidth: TwinEngine replaces the step-time model that reads this)
        self._dm = dep.kv_read_bytes_per_ctx / self._be if self._be > 0 else 0.0
        self._dcache: dict[int, tuple[float, ...]] = {}  # decode batch -> _decode_coeffs
        # the step time's constant factors, each the leading operations of the expression it replaces
        # (left to right), so every step time is bit-identical to the expression written out in full
        self._k_lin = 2.0 * (dep.active_params - dep.expert_active_params)
        self._k_x = 2.0 * dep.expert_active_params
        self._x_keep = 1.0 - dep.experts_per_token / dep.routed_experts if dep.routed_experts else 1.0
        self._x_bytes = dep.expert_weight_bytes_per_layer * dep.moe_layers

    # -- public -----------------------------------------------------------------------------------------

    def submit(self, req: SimRequest) -> None:
        """Queue a request that arrived at ``req.t_arrival`` (>= the engine clock)."""
        req.pe, req.oe = req.prompt, req.output
        self.submitted += 1
        if req.prompt + req.output > self._cap:
            self.rejected_count += 1
            self.on_reject(
                req,
                req.t_arrival,
                f"prompt {req.prompt} + output {req.output} tokens exceed the KV capacity "
                f"({self._cap} tokens)",
            )
            return
        self.waiting.append(req)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.b)

    def advance(self, limit: float) -> None:
        """Run engine steps until the clock reaches ``limit``, the engine runs out of work, or a request
        finishes (its callback may schedule an earlier event, so control returns to the driver)."""
        self._finished = False
        waiting = self.waiting
        while self.now < limit and (waiting or self.prefilling or self.b) and not self._finished:
            if waiting:
                if waiting[0].t_arrival <= self.now:
                    self._admit()
                # a request submitted ahead of its arrival (a twin delays arrivals by the request's fixed
                # cost) is an event: decode runs up to it, an idle engine waits for it
                t_next = waiting[0].t_arrival if waiting else math.inf
            else:
                t_next = math.inf
            if self.prefilling:
                self._mixed_step()
            elif self.b:
                self._advance_decode(min(limit, t_next) if t_next > self.now else limit)
            elif t_next > self.now:
                self.now = min(limit, t_next)
            else:  # waiting requests that cannot be admitted and nothing running: cannot happen
                raise RuntimeError("engine stalled: queued requests but nothing running")

    def cancel_all(self) -> list[SimRequest]:
        """Remove and return every request still queued or running (end of a run)."""
        out = list(self.waiting) + self.prefilling + [r for _, _, r in self._decode]
        for _, _, r in self._decode:
            r.gen0, r.in_decode = self.tokens_done(r), False
        self.waiting.clear()
        self.prefilling = []
        self._decode = []
        self.b = self.s = 0
        self.cancelled_count += len(out)
        self.check_conservation()
        return out

    def in_engine(self) -> int:
        """Requests queued, prefilling or decoding now."""
        return len(self.waiting) + len(self.prefilling) + len(self._decode)

    def check_conservation(self) -> None:
        """Raise :class:`SimulatorInvariantError` unless every submitted request is finished, rejected,
        cancelled, aborted or still in the engine (exactly once), and the decode counters agree."""
        accounted = (
            self.finished_count
            + self.rejected_count
            + self.cancelled_count
            + self.aborted_count
            + self.in_engine()
        )
        if accounted != self.submitted or self.b != len(self._decode):
            raise SimulatorInvariantError(
                f"simulated engine lost track of requests on deployment {self.dep.name!r}: submitted "
                f"{self.submitted}, finished {self.finished_count}, rejected {self.rejected_count}, "
                f"cancelled {self.cancelled_count}, aborted {self.aborted_count}, in the engine "
                f"{self.in_engine()} (decoders counted {self.b}, listed {len(self._decode)}). This is a "
                "simulator bug: please report it with the command that produced it."
            )

    def abort(self, req: SimRequest) -> bool:
        """Remove one queued or running request (a client that disconnected); its KV is freed and, if it
        had finished prefill, its prompt stays reusable in the phase's cache entry. Returns whether it
        was still in the engine."""
        if req in self.waiting:
            self.waiting.remove(req)
            self.aborted_count += 1
            return True
        if req in self.prefilling:
            self.prefilling.remove(req)
            self.running_tokens -= req.reserve
            self.prefill_alloc -= req.pe
            self.aborted_count += 1
            return True
        for i, (_, _, r) in enumerate(self._decode):
            if r is req:
                req.gen0, req.in_decode = self.tokens_done(req), False
                self._decode[i] = self._decode[-1]
                self._decode.pop()
                heapq.heapify(self._decode)
                self.b -= 1
                self.s -= req.ctx0_minus_g
                self._release(req)
                self.aborted_count += 1
                return True
        return False

    def kv_running(self) -> int:
        """KV tokens held by running requests: their reservations (``reserve`` policy) or their prompts
        plus the tokens generated so far (``preempt`` policy)."""
        if self.preempt:
            return self.prefill_alloc + self.s + self.b * self.g
        return self.running_tokens

    def decoding(self) -> list[SimRequest]:
        """The requests in the decode batch now (each produces one token per step); a request preempted by
        recompute is absent until its re-prefill completes."""
        return [r for _, _, r in self._decode]

    def tokens_done(self, req: SimRequest) -> int:
        """Output tokens produced so far by a request (0 before its first token; after a preemption, the
        tokens generated before it until the re-prefill completes; the full output once finished)."""
        if req.t_first != req.t_first:  # NaN: prefill not finished
            return 0
        if not req.in_decode:  # queued/re-prefilling after a preemption, finished, or aborted
            return req.gen0
        return min(req.output, req.gen0 + 1 + self.g - (req.finish_step - req.oe + 1))

    def step_time(
        self,
        tokens: float,
        decode_ctx: float,
        prefill_pairs: float,
        prefill_kv: float,
        decode_seqs: float | None = None,
    ) -> float:
        """Seconds for one step with ``tokens`` query tokens processed (decode + prefill), decode context
        sum ``decode_ctx`` (tokens), prefill attention pairs and prefill KV tokens read. ``decode_seqs``:
        the decoding sequences in the batch (default: every token when the step carries no prefill work
        and has decode context, else none). The terms are listed in docs/simulator.md."""
        if decode_seqs is None:
            decode_seqs = tokens if (prefill_pairs == 0 and prefill_kv == 0 and decode_ctx > 0) else 0
        return self._step(tokens, decode_seqs, 1.0, decode_ctx, prefill_pairs, prefill_kv)[0]

    def decode_step_time(self, batch: int, decode_ctx: float) -> float:
        """Seconds per output token of a pure decode step of ``batch`` sequences at context sum
        ``decode_ctx``; with MTP a step verifies 1 + draft tokens per sequence and yields 1 + acceptance
        tokens on average, so this is the verification step's time / (1 + acceptance)."""
        return self._decode_parts(batch, decode_ctx)[0]

    def _decode_parts(self, b: int, ctx: float) -> tuple[float, float]:
        c = self._dcache.get(b)
        if c is None:
            c = self._dcache[b] = self._decode_coeffs(b)
        # the same operations, in the same order, as _step(b x q, b, q, ctx, 0, 0): bit-identical
        c_lin, c_q, dq, kvq, x_mem, tail, gain = c
        t_cmp = c_lin + (c_q + dq * ctx + 0.0) / self._fa
        t_mem = (self._dense + self._kv_ctx * ctx + kvq + 0.0) / self._be + x_mem
        dc, dm = dq / self._fa, self._dm
        if t_cmp >= t_mem:
            t, slope = self._fixed + (t_cmp + self._ov * t_mem) + tail, dc + self._ov * dm
        else:
            t, slope = self._fixed + (t_mem + self._ov * t_cmp) + tail, dm + self._ov * dc
        return t / gain, slope / gain

    def _decode_coeffs(self, b: int) -> tuple[float, ...]:
        """The parts of a pure decode step of ``b`` sequences that do not depend on the context sum."""
        d = self.dep
        q = 1.0 + d.mtp_draft_tokens
        tokens = b * q
        c_lin = 2.0 * (d.active_params - d.expert_active_params) * tokens / self._fe
        c_lin += 2.0 * d.expert_active_params * tokens * d.expert_imbalance / self._fx
        gain = 1.0 + d.mtp_acceptance if d.mtp else 1.0
        return (
            c_lin,
            d.attn_flops_per_query * tokens,
            d.attn_flops_decode_per_pair * q,
            d.kv_read_bytes_per_query * b,
            self._expert_mem(tokens),
            self._comm(tokens),
            gain,
        )

    def _expert_mem(self, tokens: float) -> float:
        d = self.dep
        if not d.routed_experts:
            return 0.0
        touched = d.routed_experts * (1.0 - self._x_keep**tokens)
        return self._x_bytes * touched * d.expert_imbalance / self._bx

    def _step(
        self, tokens: float, n_dec: float, q: float, ctx: float, pairs: float, pkv: float
    ) -> tuple[float, float]:
        """(step seconds, d seconds / d decode context) for ``tokens`` query tokens of which the decode
        sequences (``n_dec``) each carry ``q`` queries over context sum ``ctx``."""
        d = self.dep
        # compute: non-expert linear layers, routed experts (busiest rank), attention
        t_cmp = self._k_lin * tokens / self._fe
        t_cmp += self._k_x * tokens * d.expert_imbalance / self._fx
        t_cmp += (
            d.attn_flops_per_query * tokens
            + d.attn_flops_decode_per_pair * q * ctx
            + d.attn_flops_prefill_per_pair * pairs
        ) / self._fa
        dc = d.attn_flops_decode_per_pair * q / self._fa
        # memory: dense weights (per copy read), KV read, routed experts touched (busiest rank)
        nbytes = self._dense + d.kv_read_bytes_per_ctx * ctx + d.kv_read_bytes_per_query * n_dec
        nbytes += d.kv_bytes_per_token * pkv
        t_mem = nbytes / self._be + self._expert_mem(tokens)
        dm = self._dm
        # partial overlap of compute and memory
        ov = self._ov
        if t_cmp >= t_mem:
            t_roof, slope = t_cmp + ov * t_mem, dc + ov * dm
        else:
            t_roof, slope = t_mem + ov * t_cmp, dm + ov * dc
        return self._fixed + t_roof + self._comm(tokens), slope

    def _comm(self, tokens: float) -> float:
        """Exposed communication: EP all-to-all per MoE layer, TP all-reduces over the scale-out network."""
        d = self.dep
        t = 0.0
        if d.ep_size > 1 and d.moe_layers:
            per_rank = tokens / d.ep_size
            layer = self._a2a_lat + per_rank * d.a2a_bytes_per_token / d.a2a_link_bytes_per_s
            t += d.a2a_exposed * d.moe_layers * layer
        if d.tp_internode_collectives:
            per = self._tp_lat + tokens * d.tp_bytes_per_token / d.scaleout_bytes_per_s
            t += d.tp_internode_collectives * per
        return t

    # -- internals --------------------------------------------------------------------------------------

    def _admit(self) -> None:
        cap = self._cap
        max_seqs = self.dep.max_num_seqs
        waiting, cache, prefilling = self.waiting, self.cache, self.prefilling
        preempt, now = self.preempt, self.now
        while waiting and waiting[0].t_arrival <= now:
            if self.b + len(prefilling) >= max_seqs:
                return
            req = waiting[0]
            phase = req.phase_id
            entry = cache.pop(phase, None)
            on_host = False
            if entry is not None:
                self.idle_tokens -= entry[0]
            elif self.host_cache:  # a prompt the device evicted, kept in host memory (a twin's server)
                entry = self.host_cache.pop(phase, None)
                if entry is not None:
                    self.host_tokens -= entry[0]
                    on_host = True
            pe = req.pe
            reserve = pe if preempt else pe + req.oe
            # kv_running(), written out
            running = self.prefill_alloc + self.s + self.b * self.g if preempt else self.running_tokens
            need = running + self.idle_tokens + reserve + self._watermark - cap
            while need > 0 and cache:
                need -= self._evict_lru()
            if need > 0:
                if entry is not None:  # put the phase's entry back (most recently used)
                    if on_host:
                        self._keep_on_host(phase, entry)
                    else:
                        cache[phase] = entry
                        self.idle_tokens += entry[0]
                return
            waiting.popleft()
            hit = 0
            if req.kv_ready:
                hit = pe
            elif entry is not None and req.prefix > 0:
                hit = min(entry[1], req.prefix) // self._block * self._block
            if req.preemptions == 0 and not req.kv_ready:
                req.hit = hit
                self.cached_tokens_total += hit
                self.prompt_tokens_total += req.prompt
            req.prefilled = hit
            req.reserve = reserve
            self._n += 1
            req.seq = self._n
            self.running_tokens += reserve
            self.prefill_alloc += pe
            prefilling.append(req)
            self.step_admits += 1
            if self._slot_cache:  # the admitted request takes a slot: an idle prompt there is dropped
                while cache and len(cache) + self.b + len(prefilling) > max_seqs:
                    self._evict_lru()

    def _mixed_step(self) -> None:
        b = self.b
        budget = self.dep.max_num_batched_tokens - b
        tokens = b
        pairs = 0.0
        kv_read = 0.0
        computed = 0
        done: list[SimRequest] = []
        for req in self.prefilling:
            if budget <= 0:
                break
            p = req.prefilled
            pe = req.pe
            chunk = min(budget, pe - p)
            pairs += chunk * p + chunk * chunk / 2.0
            kv_read += p + chunk if chunk else 0  # KV handed over (P/D) is not read
            p += chunk
            req.prefilled = p
            computed += chunk
            budget -= chunk
            tokens += chunk
            if p >= pe:
                done.append(req)
        self.prefill_computed += computed
        dt = self._step(max(tokens, 1), b, 1.0, self.s + b * self.g, pairs, kv_read)[0]
        self.step_admits = 0
        now = self.now + dt
        self.now = now
        self.busy_s += dt
        self.steps += 1
        if b:
            g = self.g = self.g + 1
            if self._decode[0][0] <= g:
                self._finish_due()
            if self.preempt:
                self._fit_kv()
        if done:
            # remove exactly the requests completed in this step: a request admitted with nothing to
            # prefill that the loop did not reach (budget spent) completes in the next step (filtering on
            # ``prefilled < pe`` used to drop it without an answer: issue 12)
            pre = self.prefilling
            if len(pre) == len(done) and pre[-1] is done[-1]:  # the common case: every prefill in
                self.prefilling = []  # the step completed (both are heads of the admission order)
            else:
                ids = {id(r) for r in done}
                self.prefilling = [r for r in pre if id(r) not in ids]
            decode = self._decode
            for req in done:
                self.prefill_alloc -= req.pe
                if req.t_first != req.t_first:  # NaN: the first token of the first attempt
                    req.t_first = now
                oe = req.oe
                if oe <= 1:
                    req.gen0 = req.output
                    self._release(req)
                    self.finished_count += 1
                    self.on_finish(req, now)
                    self._finished = True
                    continue
                g = self.g
                req.finish_step = g + oe - 1
                req.ctx0_minus_g = c = req.pe + 1 - g
                self.s += c
                self.b += 1
                self._n += 1
                req.in_decode = True
                heapq.heappush(decode, (req.finish_step, self._n, req))

    def _advance_decode(self, limit: float) -> None:
        b = self.b
        # step time now (a) and its growth per step (slope): pure decode, the context sum grows by b tokens
        # per step and the step time is piecewise linear in it
        a, dt_dctx = self._decode_parts(b, self.s + b * self.g)
        slope = dt_dctx * b
        m = self._decode[0][0] - self.g  # steps to the next finish (>= 1)
        if self.preempt:
            # steps until the decoders' growth (b tokens per step) exceeds the KV cache (idle entries
            # are evicted lazily, at the end of the segment, before anything else reads the cache)
            room = self._cap - (self.prefill_alloc + self.s + self.b * self.g)
            fit = room // self.b
            if fit < 1:
                self._fit_kv()
                return
            m = min(m, fit)
        total = m * a + slope * m * (m - 1) / 2.0
        # queued requests that are not admissible wait for a finish (which frees KV or a slot)
        if self.now + total <= limit:
            steps = m
        else:
            # smallest j with j*a + slope*j*(j-1)/2 >= limit - now  (j >= 1)
            rem = limit - self.now
            if slope > 0:
                aa, bb = slope / 2.0, a - slope / 2.0
                j = math.ceil((-bb + math.sqrt(bb * bb + 4 * aa * rem)) / (2 * aa))
            else:
                j = math.ceil(rem / a)
            steps = max(1, min(m, j))
            total = steps * a + slope * steps * (steps - 1) / 2.0
        self.now += total
        self.busy_s += total
        self.steps += steps
        self.g += steps
        heap = self._decode
        if heap and heap[0][0] <= self.g:
            self._finish_due()
        if self.preempt:
            self._fit_kv()

    def _finish_due(self) -> None:
        heap = self._decode
        g = self.g
        if not heap or heap[0][0] > g:
            return
        now, cache, on_finish = self.now, self.cache, self.on_finish
        pop = heapq.heappop
        while heap and heap[0][0] <= g:
            _, _, req = pop(heap)
            req.gen0, req.in_decode = req.output, False
            self.b -= 1
            self.s -= req.ctx0_minus_g
            # _release(req), written out
            self.running_tokens -= req.reserve
            if not req.kv_ready:  # a decode pool keeps nothing: the next turn is prefilled elsewhere
                mem = req.prompt + req.output
                old = cache.pop(req.phase_id, None)
                if old is not None:
                    self.idle_tokens -= old[0]
                cache[req.phase_id] = (mem, req.prompt)
                self.idle_tokens += mem
            self.finished_count += 1
            on_finish(req, now)
            self._finished = True

    def _fit_kv(self) -> None:
        """``preempt`` policy: evict idle prefix-cache entries (LRU), then preempt the newest running
        requests by recompute, until running + idle KV fits the cache (and the decoders can grow)."""
        cap = self._cap
        running = self.prefill_alloc + self.s + self.b * self.g  # kv_running() of the preempt policy
        if running + self.idle_tokens <= cap and running + self.b <= cap:
            return  # the common case: nothing to evict or preempt
        while self.kv_running() + self.idle_tokens > cap and self.cache:
            self._evict_lru()
        # keep room for one more decode step, so the next segment can advance
        while self.b + len(self.prefilling) > 1 and self.kv_running() + self.b > cap:
            self._preempt_newest()

    def _preempt_newest(self) -> None:
        newest_pre = max(self.prefilling, key=lambda r: r.seq, default=None)
        newest_dec = max((r for _, _, r in self._decode), key=lambda r: r.seq, default=None)
        if newest_pre is not None and (newest_dec is None or newest_pre.seq > newest_dec.seq):
            req = newest_pre
            self.prefilling.remove(req)
            self.prefill_alloc -= req.pe
            kept = req.prefilled  # its prefilled blocks stay cached (idle) until evicted
        else:
            assert newest_dec is not None, "_preempt_newest runs with a request in the batch"
            req = newest_dec
            gen = self.tokens_done(req)
            self._decode = [e for e in self._decode if e[2] is not req]
            heapq.heapify(self._decode)
            self.b -= 1
            self.s -= req.ctx0_minus_g
            req.gen0 = gen
            req.in_decode = False
            req.pe = req.prompt + gen
            req.oe = req.output - gen
            kept = req.pe
        self.running_tokens -= req.reserve
        req.preemptions += 1
        req.kv_ready = False  # recomputed here, as a decode pool does after a preemption
        self.preemptions += 1
        req.prefix = kept
        req.prefilled = 0
        old = self.cache.pop(req.phase_id, None)
        if old is not None:
            self.idle_tokens -= old[0]
        if kept:
            self.cache[req.phase_id] = (kept, kept)
            self.idle_tokens += kept
        self.waiting.appendleft(req)

    def _evict_lru(self) -> int:
        """Evict the least recently used idle prefix-cache entry from the device; returns its tokens. A
        server with a host prompt cache (``host_cache_tokens``) keeps it there."""
        phase, entry = self.cache.popitem(last=False)
        self.idle_tokens -= entry[0]
        if self._host_cap:
            self._keep_on_host(phase, entry)
        return entry[0]

    def _keep_on_host(self, phase: int, entry: tuple[int, int]) -> None:
        """Keep ``entry`` in the host prompt cache (LRU, at most ``host_cache_tokens`` tokens)."""
        host = self.host_cache
        old = host.pop(phase, None)
        if old is not None:
            self.host_tokens -= old[0]
        host[phase] = entry
        self.host_tokens += entry[0]
        while self.host_tokens > self._host_cap and host:
            _, (mem, _) = host.popitem(last=False)
            self.host_tokens -= mem

    def _release(self, req: SimRequest) -> None:
        self.running_tokens -= req.reserve
        if req.kv_ready:  # a decode pool keeps nothing: the next turn is prefilled elsewhere
            return
        mem = req.prompt + req.output
        old = self.cache.pop(req.phase_id, None)
        if old is not None:
            self.idle_tokens -= old[0]
        self.cache[req.phase_id] = (mem, req.prompt)
        self.idle_tokens += mem
