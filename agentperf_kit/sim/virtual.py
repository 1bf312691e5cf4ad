"""Virtual-time runs: the shared agent fleet driven against the simulated engine on a simulated clock.

The same :class:`agentperf_kit.agents.AgentFleet` as a live run decides what the agents do (phases,
markers, tool delays, trajectory order, steady window, validity); this module only owns the clock and
the target. It writes the same files and columns as a live run (``requests.parquet``, ``manifest.json``).

Every request's outcome comes from the engine: ``t_send`` = scheduled (no client lag), ``t_first`` = end of
the step that finishes its prefill, ``t_last`` = ``t_end`` = end of the step of its last token,
``t_first_answer`` interpolated linearly at the first non-reasoning token, ``prompt_tokens`` = trajectory
input + ``MARKER_TOKENS`` (the phase marker), ``cached_prompt_tokens`` = the prefix-cache hit,
``output_tokens`` = the forced length (one token per chunk).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
from ..recorder import RunWriter
from ..results import (
    RunResult,
    finalize_frame,
    finalize_run,
    prepare_run_dir,
    run_manifest,
    window_manifest,
    write_manifest,
)
from ..trajectories.model import Trajectory
from .disagg import make_engine
from .engine import SimRequest, SimulatorInvariantError
from .presets import DEFAULT_DEPLOYMENT, Deployment, efficiency, get_deployment

if TYPE_CHECKING:
    import pandas as pd

    from ..sweep_early import EarlyStop

__all__ = ["ACTIVITY_FACTOR", "MARKER_TOKENS", "run_sim_level"]

MARKER_TOKENS = 16
ACTIVITY_FACTOR = 0.7  # share of (TDP - idle) drawn while busy; an assumption of the power model
_TICK_S = 5.0


def modelled_power_w(dep: Deployment, busy_fraction: float) -> float:
    """Modelled whole-system accelerator power (W): idle + (TDP - idle) * ACTIVITY_FACTOR * busy share."""
    per = dep.idle_w_per_accelerator + (dep.tdp_w_per_accelerator - dep.idle_w_per_accelerator) * (
        ACTIVITY_FACTOR * min(1.0, max(0.0, busy_fraction))
    )
    return per * dep.accelerator_count


def run_sim_level(
    trajectories: Sequence[Trajectory],
    n_agents: int,
    rules: RunRules,
    *,
    deployment: str | Deployment = DEFAULT_DEPLOYMENT,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    level: int = 0,
    run_id: str | None = None,
    efficiency: str = "mid",
    progress: bool = False,
    overwrite: bool = False,
    early_stop: EarlyStop | None = None,
) -> RunResult:
    """Run one level of ``n_agents`` closed-loop agents against the simulated deployment, in virtual time.

    Returns the tidy per-request table and the manifest; with ``out_dir`` also writes them there
    (raw rows streamed to disk while the run goes, so memory stays bounded by the live agents).
    ``out_dir`` must be new or empty; ``overwrite=True`` replaces a previous run there (never other
    files: :func:`~agentperf_kit.results.prepare_run_dir`, :class:`~agentperf_kit.errors.OutputError`).
    ``early_stop``: interim looks that may close the window early once the verdicts a sweep needs are
    decided (:mod:`agentperf_kit.sweep_early`); the window summary's ``stopped_early_reason`` says so.
    """
    dep = get_deployment(deployment) if isinstance(deployment, str) else deployment
    eff = _efficiency(efficiency)
    run_id = run_id or f"sim-{uuid.uuid4().hex[:8]}"
    rows: list[tuple] = []
    if out_dir is not None:
        prepare_run_dir(out_dir, overwrite=overwrite)
    writer = RunWriter(out_dir) if out_dir is not None else None
    sink = writer if writer is not None else rows.append
    fleet = AgentFleet(trajectories, n_agents, rules, seed=seed, sink=sink, run_id=run_id, level=level)
    config = {
        "target": f"sim:{dep.name}",
        "model": dep.model,
        "concurrency": n_agents,
        "rules": {k: getattr(rules, k) for k in rules.__dataclass_fields__},
        "seed": seed,
        "efficiency": eff.name,
        "trajectories": len(fleet.trajectories),
    }
    manifest = run_manifest(
        run_id=run_id,
        level=level,
        config=config,
        target={"kind": "sim", "deployment": dep.as_dict()},
        clock={"kind": "virtual", "origin_s": 0.0},
        accelerators=dep.accelerator_count,
        accelerator_type=dep.accelerator,
    )
    if out_dir is not None:
        write_manifest(out_dir, manifest)

    wall0 = time.perf_counter()
    try:  # an interrupt (Ctrl-C) or an invariant error: the rows written so far stay readable
        sim = _SimLevel(fleet, dep, eff)
        if early_stop is not None:
            sim.early_stop = early_stop
            fleet.early_stop_looks = early_stop.looks
            sim.read_rows = _row_reader(writer, out_dir, rows)
        # the cyclic garbage collector pauses while the level runs: its event loop allocates millions of
        # short-lived objects (plans, engine requests, rows) and makes no reference cycles, so the
        # collector's passes only cost time; reference counting still frees everything (docs/simulator.md
        # "Compiled core")
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            sim.run(rules.drain_timeout_s)
        finally:
            if gc_was_enabled:
                gc.enable()
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        raise
    window = fleet.window_summary()
    manifest.update(window_manifest(window))
    manifest.update(sim.manifest_sections(time.perf_counter() - wall0))
    if writer is not None and out_dir is not None:
        writer.close()
        # the table is written a chunk at a time and read back on first use: a level of millions of
        # requests is never held whole (RunResult.read_requests reads the columns a sweep judges)
        return finalize_run(out_dir, manifest, load=False, simulated=True)
    return _in_memory_result(rows, manifest, window)


class _SimLevel:
    """One simulated level: the send queue on the virtual clock, the engine's answers turned into
    outcomes for the fleet, the drain and the end; one method per job."""

    def __init__(self, fleet: AgentFleet, dep: Deployment, eff: Any) -> None:
        self.fleet = fleet
        self.dep = dep
        self.in_flight: dict[int, RequestPlan] = {}
        self.sends: list[tuple[float, int, RequestPlan]] = []
        self.counter = 0
        self.engine = make_engine(dep, eff, self.finish, self.reject)
        self.t_end = 0.0
        # a twin's fixed request cost (HTTP round trip, set-up; 0 elsewhere) delays the engine's arrival
        self.request_s = getattr(dep, "request_s", 0.0)
        self.early_stop: EarlyStop | None = None
        # (start, cut) -> the window's rows so far, for the early stop's looks (_row_reader)
        self.read_rows: Callable[[float, float], pd.DataFrame] | None = None

    def schedule(self, plan: RequestPlan) -> None:
        self.counter += 1
        heapq.heappush(self.sends, (plan.t_scheduled_s, self.counter, plan))

    def finish(self, req: SimRequest, t_end: float) -> None:
        """The engine finished ``req`` at ``t_end``: its outcome (times from the engine's steps)."""
        plan = self.in_flight.pop(id(req.key))
        turn = plan.turn
        out = req.output
        t_first = req.t_first
        reasoning = min(turn.reasoning_tokens or 0, out - 1) if out > 1 else 0
        t_ans = t_first + (t_end - t_first) * reasoning / (out - 1) if out > 1 else t_first
        # RequestOutcome(t_end_s=t_end, t_first_s=t_first, t_first_answer_s=t_ans, t_last_s=t_end,
        # prompt_tokens=req.prompt, cached_prompt_tokens=req.hit, output_tokens=out, first_chunk_tokens=1,
        # reasoning_tokens=..., n_chunks=out, finish_reason="length", has_tool_calls=turn.tool_calls,
        # http_status=200, target_prompt_tokens=req.prompt), without building it
        nxt = self.fleet.complete_streamed(
            plan,
            t_end,
            t_first,
            t_ans,
            req.prompt,
            req.hit,
            out,
            reasoning if turn.reasoning_tokens is not None else None,
        )
        if nxt is not None:
            self.counter += 1
            heapq.heappush(self.sends, (nxt.t_scheduled_s, self.counter, nxt))

    def reject(self, req: SimRequest, t: float, detail: str) -> None:
        """The engine refused ``req`` (e.g. longer than its context): a failed row, as a 400."""
        plan = self.in_flight.pop(id(req.key))
        nxt = self.fleet.complete(
            plan,
            RequestOutcome(
                t_send_s=plan.t_send_s,
                t_end_s=t,
                ok=False,
                http_status=400,
                error="http_error",
                error_detail=f"400: {detail}",
                target_prompt_tokens=req.prompt,
            ),
        )
        if nxt is not None:
            self.schedule(nxt)

    def submit(self, plan: RequestPlan) -> None:
        t = plan.t_scheduled_s
        self.fleet.on_send(plan, t)
        turn = plan.turn
        self.in_flight[id(plan)] = plan
        prefix = 0 if plan.fresh_phase else turn.prefix_tokens + MARKER_TOKENS
        t_arrival = t + self.request_s
        self.engine.submit(
            SimRequest(
                plan, plan.phase_id, turn.input_tokens + MARKER_TOKENS, prefix, turn.output_tokens, t_arrival
            )
        )

    def run(self, drain_timeout_s: float) -> None:
        """Advance the engine from send to send until the window closes and the drain ends, then cancel
        what is left (raises :class:`SimulatorInvariantError` if a request was lost)."""
        fleet, engine, sends = self.fleet, self.engine, self.sends
        for plan in fleet.start(0.0):
            self.schedule(plan)
        next_tick = _TICK_S
        t_closed = math.nan
        isnan, inf, heappop = math.isnan, math.inf, heapq.heappop
        may_send, submit, advance = fleet.may_send, self.submit, engine.advance
        while True:
            t_send = sends[0][0] if sends else inf
            if isnan(t_closed):
                t_event = min(t_send, next_tick)
            else:
                t_event = min(t_send, t_closed + drain_timeout_s)
            if engine.has_work:
                advance(t_event)  # may stop early when the engine runs out of work
            elif t_event < inf:  # finite (never NaN)
                engine.now = max(engine.now, t_event)
            else:
                break
            now = engine.now
            if isnan(t_closed):
                if next_tick <= now:  # the next tick after now (one step may span many ticks)
                    next_tick = (math.floor(now / _TICK_S) + 1) * _TICK_S
                    if self.early_stop is not None:
                        self.look(now)
                if not may_send(now):
                    t_closed = fleet.window_end_s
            elif now >= t_closed + drain_timeout_s:
                break
            while sends and sends[0][0] <= now:
                plan = heappop(sends)[2]
                if not may_send(plan.t_scheduled_s):
                    if isnan(t_closed):
                        t_closed = fleet.window_end_s
                    continue
                submit(plan)
            if not isnan(t_closed) and not engine.has_work and not sends:
                break
        self.t_end = engine.now
        for req in engine.cancel_all():  # checks the engine's conservation of requests
            fleet.cancel(self.in_flight.pop(id(req.key)), self.t_end)
        if self.in_flight:  # a request sent but never answered, rejected or cancelled: its agent is lost
            raise SimulatorInvariantError(
                f"{len(self.in_flight)} request(s) sent to the simulated deployment {self.dep.name!r} were "
                "never answered, rejected or cancelled (a simulator bug: please report it with the command)"
            )

    def look(self, now: float) -> None:
        """An interim look of the early stop, if one is due at ``now``: judge the window's requests sent
        before the earliest one still running (all of them ended), and close the window there if the
        verdicts the sweep needs are decided (:class:`~agentperf_kit.sweep_early.EarlyStop`)."""
        es = self.early_stop
        assert es is not None and self.read_rows is not None
        window = es.window_to_judge(self.fleet, now, self.in_flight.values())
        if window is None:
            return
        reason = es.decide(self.read_rows(*window), window)
        if reason is not None:
            self.fleet.stop_early(window[1], reason)

    def manifest_sections(self, wall_s: float) -> dict[str, Any]:
        """``client_ok``, the modelled power and the ``sim`` section of the manifest."""
        engine, t_end = self.engine, self.t_end
        busy_fraction = engine.busy_s / t_end if t_end > 0 else 0.0
        return {
            "client_ok": True,
            "power_w": modelled_power_w(self.dep, busy_fraction),
            "power_scope": "modelled",
            "power_detail": {
                "busy_fraction": busy_fraction,
                "activity_factor": ACTIVITY_FACTOR,
                "note": "modelled: idle + (TDP - idle) x activity x busy share, per accelerator",
            },
            "sim": {
                "virtual_s": t_end,
                "wall_s": wall_s,
                "engine_steps": engine.steps,
                "requests": self.fleet.requests_done,
                "prefix_cache_hit_rate": engine.cached_tokens_total / max(1, engine.prompt_tokens_total),
            },
        }


def _row_reader(
    writer: RunWriter | None, out_dir, rows: list[tuple]
) -> Callable[[float, float], pd.DataFrame]:
    """``read(start, cut)``: the window's rows so far (:func:`agentperf_kit.sweep_early.window_rows`), from
    the stream on disk (flushed first) or from the rows kept in memory."""
    from ..sweep_early import window_rows, window_rows_from_stream

    def read(start: float, cut: float) -> pd.DataFrame:
        if writer is not None:
            writer.flush()
            return window_rows_from_stream(out_dir, (writer.path.name,), start, cut)
        return window_rows(rows, start, cut)

    return read


def _in_memory_result(rows: list[tuple], manifest: dict[str, Any], window: dict[str, Any]) -> RunResult:
    """A run without ``out_dir``: the table from the rows kept in memory."""
    import pandas as pd

    from ..schema import RAW_COLUMNS, REQUEST_COLUMNS, json_safe

    raw = pd.DataFrame(rows, columns=list(RAW_COLUMNS)).astype(
        {c: REQUEST_COLUMNS[c].dtype for c in RAW_COLUMNS}
    )
    df = finalize_frame(raw, window["window_start_s"], window["window_end_s"])
    return RunResult(df, json_safe(manifest), None)


def _efficiency(name: str):
    return efficiency(name)
