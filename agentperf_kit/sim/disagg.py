"""Prefill/decode disaggregation: two engines (pools) and the KV transfer between them.

A request is prefilled in the prefill pool (which holds the prefix cache, so agents' prefix hits happen
there), its KV is then sent to the decode pool over a link of ``kv_transfer_bytes_per_s`` (transfers queue
on that link, first come first served: ``prompt x KV bytes per token / bandwidth`` each), and the decode pool
generates every output token. The client's first token is taken at the end of the transfer (the decode
pool streams the answer). The decode pool admits the request with its KV already present (no prefill),
under its own KV policy; a decode-pool preemption recomputes locally.

:class:`DisaggregatedEngine` offers the :class:`~agentperf_kit.sim.engine.Engine` interface the
virtual-time driver uses, advancing the two pools in lockstep (always the one whose clock is behind), so
neither runs ahead of an event the other produces. :func:`make_engine` returns the right engine for a
deployment.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from ..errors import ConfigError
from .engine import Engine, SimRequest, SimulatorInvariantError
from .presets import Deployment, Efficiency

__all__ = ["DisaggregatedEngine", "make_engine"]


def make_engine(
    dep: Deployment,
    eff: Efficiency,
    on_finish: Callable[[SimRequest, float], None],
    on_reject: Callable[[SimRequest, float, str], None],
    kv_policy: str | None = None,
) -> Engine | DisaggregatedEngine:
    """An :class:`Engine` for a single-pool deployment, a :class:`DisaggregatedEngine` for a P/D one."""
    if dep.disaggregated:
        return DisaggregatedEngine(dep, eff, on_finish, on_reject, kv_policy)
    if getattr(dep, "step_mid", None) is not None:  # a twin: fitted step time (agentperf_kit.sim.twin)
        from .twin import TwinEngine

        return TwinEngine(dep, eff, on_finish, on_reject, kv_policy)  # type: ignore[arg-type]
    return Engine(dep, eff, on_finish, on_reject, kv_policy)


class DisaggregatedEngine:
    """Prefill pool + decode pool + KV link, with the engine interface of the virtual-time driver."""

    def __init__(
        self,
        dep: Deployment,
        eff: Efficiency,
        on_finish: Callable[[SimRequest, float], None],
        on_reject: Callable[[SimRequest, float, str], None],
        kv_policy: str | None = None,
    ) -> None:
        self.dep = dep
        self.on_finish = on_finish
        self.on_reject = on_reject
        if dep.prefill_pool is None or dep.decode_pool is None:
            raise ConfigError(f"deployment {dep.name!r} is not disaggregated (no prefill_pool/decode_pool)")
        self.pre_pool, self.dec_pool = dep.prefill_pool, dep.decode_pool
        self.pre = Engine(self.pre_pool, eff, self._prefilled, self._rejected, kv_policy)
        self.dec = Engine(self.dec_pool, eff, self._decoded, self._rejected, kv_policy)
        self._bw = dep.kv_transfer_bytes_per_s
        self._transfers: list[tuple[float, int, SimRequest]] = []
        self._n = 0
        self._link_free = 0.0
        self._finished = False
        self.transfer_s = 0.0  # total link busy time, s
        # conservation of the outer requests (each pool checks its own at the end of a run too)
        self.submitted = 0
        self.finished_count = 0
        self.rejected_count = 0
        self.cancelled_count = 0

    # -- the engine interface --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return max(self.pre.now, self.dec.now)

    @now.setter
    def now(self, t: float) -> None:
        self.pre.now = max(self.pre.now, t)
        self.dec.now = max(self.dec.now, t)

    @property
    def has_work(self) -> bool:
        return bool(self.pre.has_work or self.dec.has_work or self._transfers)

    @property
    def steps(self) -> int:
        return self.pre.steps + self.dec.steps

    @property
    def busy_s(self) -> float:
        """Busy seconds averaged over all accelerators (each pool's busy time weighted by its GPUs)."""
        n_pre = self.pre_pool.accelerator_count
        n_dec = self.dec_pool.accelerator_count
        return (self.pre.busy_s * n_pre + self.dec.busy_s * n_dec) / (n_pre + n_dec)

    @property
    def cached_tokens_total(self) -> int:
        return self.pre.cached_tokens_total

    @property
    def prompt_tokens_total(self) -> int:
        return self.pre.prompt_tokens_total

    @property
    def preemptions(self) -> int:
        return self.pre.preemptions + self.dec.preemptions

    def submit(self, req: SimRequest) -> None:
        """Queue ``req`` (arrived at ``req.t_arrival``) in the prefill pool."""
        req.pe, req.oe = req.prompt, req.output
        self.submitted += 1
        cap = self.dec_pool.kv_capacity_tokens
        if req.prompt + req.output > cap:
            self.rejected_count += 1
            self.on_reject(
                req,
                req.t_arrival,
                f"prompt {req.prompt} + output {req.output} tokens exceed the decode pool's KV capacity "
                f"({cap} tokens)",
            )
            return
        self.pre.submit(SimRequest(req, req.phase_id, req.prompt, req.prefix, 1, req.t_arrival))

    def advance(self, limit: float) -> None:
        """Advance both pools toward ``limit`` in lockstep; returns early when a request finishes."""
        self._finished = False
        while not self._finished:
            _wake(self.pre)
            _wake(self.dec)
            t_pre = self.pre.now if self.pre.has_work else math.inf
            t_dec = self.dec.now if self.dec.has_work else math.inf
            t_tr = self._transfers[0][0] if self._transfers else math.inf
            t_min = min(t_pre, t_dec, t_tr)
            if t_min >= limit:
                break
            if t_tr == t_min:
                self._deliver(t_tr)
            elif t_pre == t_min:
                self.pre.advance(max(min(limit, t_dec, t_tr), self.pre.now + 1e-12))
            else:
                self.dec.advance(max(min(limit, t_pre, t_tr), self.dec.now + 1e-12))
        if math.isfinite(limit) and not self._finished:
            if not self.pre.has_work:
                self.pre.now = max(self.pre.now, limit)
            if not self.dec.has_work:
                self.dec.now = max(self.dec.now, limit)

    def cancel_all(self) -> list[SimRequest]:
        """Remove and return every request still queued, prefilling, in transfer or decoding."""
        out = [r.key for r in self.pre.cancel_all()] + [r for _, _, r in self._transfers]
        out += [r.key for r in self.dec.cancel_all()]
        self._transfers = []
        self.cancelled_count += len(out)
        if self.finished_count + self.rejected_count + self.cancelled_count != self.submitted:
            raise SimulatorInvariantError(
                f"disaggregated engine {self.dep.name!r} lost track of requests: submitted "
                f"{self.submitted}, finished {self.finished_count}, rejected {self.rejected_count}, "
                f"cancelled {self.cancelled_count}. This is a simulator bug: please report it."
            )
        return out

    # -- pool callbacks ----------------------------------------------------------------------------------

    def _rejected(self, inner: SimRequest, t: float, detail: str) -> None:
        self.rejected_count += 1
        self.on_reject(inner.key, t, detail)

    def _prefilled(self, inner: SimRequest, t: float) -> None:
        outer: SimRequest = inner.key
        outer.hit = inner.hit
        dt = outer.prompt * self.dep.kv_bytes_per_token / self._bw if self._bw > 0 else 0.0
        start = max(t, self._link_free)
        self._link_free = start + dt
        self.transfer_s += dt
        self._n += 1
        heapq.heappush(self._transfers, (start + dt, self._n, outer))

    def _deliver(self, t: float) -> None:
        _, _, outer = heapq.heappop(self._transfers)
        if not self.dec.has_work:
            self.dec.now = max(self.dec.now, t)
        inner = SimRequest(outer, outer.phase_id, outer.prompt, 0, outer.output, t, kv_ready=True)
        inner.t_first = t  # the first token reaches the client from the decode pool
        self.dec.submit(inner)

    def _decoded(self, inner: SimRequest, t: float) -> None:
        outer: SimRequest = inner.key
        outer.t_first = inner.t_first
        self._finished = True
        self.finished_count += 1
        self.on_finish(outer, t)


def _wake(eng: Engine) -> None:
    """Move an engine with only future arrivals (nothing running) to its next arrival."""
    if eng.waiting and not (eng.prefilling or eng.b) and eng.waiting[0].t_arrival > eng.now:
        eng.now = eng.waiting[0].t_arrival
