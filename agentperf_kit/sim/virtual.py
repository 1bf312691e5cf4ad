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

import heapq
import math
import os
import time
import uuid
from collections.abc import Sequence

from ..agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
from ..recorder import RunWriter
from ..results import RunResult, finalize_frame, finalize_run, prepare_run_dir, run_manifest, write_manifest
from ..trajectories.model import Trajectory
from .disagg import make_engine
from .engine import SimRequest, SimulatorInvariantError
from .presets import DEFAULT_DEPLOYMENT, Deployment, efficiency, get_deployment

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
) -> RunResult:
    """Run one level of ``n_agents`` closed-loop agents against the simulated deployment, in virtual time.

    Returns the tidy per-request table and the manifest; with ``out_dir`` also writes them there
    (raw rows streamed to disk while the run goes, so memory stays bounded by the live agents).
    ``out_dir`` must be new or empty; ``overwrite=True`` replaces a previous run there (never other
    files: :func:`~agentperf_kit.results.prepare_run_dir`, :class:`~agentperf_kit.errors.OutputError`).
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
    in_flight: dict[int, RequestPlan] = {}
    sends: list[tuple[float, int, RequestPlan]] = []
    counter = 0

    def schedule(plan: RequestPlan) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(sends, (plan.t_scheduled_s, counter, plan))

    def finish(req: SimRequest, t_end: float) -> None:
        plan = in_flight.pop(id(req.key))
        turn = plan.turn
        out = req.output
        reasoning = min(turn.reasoning_tokens or 0, out - 1) if out > 1 else 0
        t_ans = req.t_first + (t_end - req.t_first) * reasoning / (out - 1) if out > 1 else req.t_first
        nxt = fleet.complete(
            plan,
            RequestOutcome(
                t_send_s=plan.t_send_s,
                t_end_s=t_end,
                t_first_s=req.t_first,
                t_first_answer_s=t_ans,
                t_last_s=t_end,
                prompt_tokens=req.prompt,
                cached_prompt_tokens=req.hit,
                output_tokens=out,
                first_chunk_tokens=1,
                reasoning_tokens=reasoning if turn.reasoning_tokens is not None else None,
                n_chunks=out,
                finish_reason="length",
                has_tool_calls=turn.tool_calls,
                http_status=200,
                target_prompt_tokens=req.prompt,
            ),
        )
        if nxt is not None:
            schedule(nxt)

    def reject(req: SimRequest, t: float, detail: str) -> None:
        plan = in_flight.pop(id(req.key))
        nxt = fleet.complete(
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
            schedule(nxt)

    engine = make_engine(dep, eff, finish, reject)
    for plan in fleet.start(0.0):
        schedule(plan)
    next_tick = _TICK_S
    t_closed = math.nan
    while True:
        t_send = sends[0][0] if sends else math.inf
        if math.isnan(t_closed):
            t_event = min(t_send, next_tick)
        else:
            t_event = min(t_send, t_closed + rules.drain_timeout_s)
        if engine.has_work:
            engine.advance(t_event)  # may stop early when the engine runs out of work
        elif math.isfinite(t_event):
            engine.now = max(engine.now, t_event)
        else:
            break
        now = engine.now
        if math.isnan(t_closed):
            while next_tick <= now:
                next_tick += _TICK_S
            if not fleet.may_send(now):
                t_closed = fleet.window_end_s
        elif now >= t_closed + rules.drain_timeout_s:
            break
        while sends and sends[0][0] <= now:
            _, _, plan = heapq.heappop(sends)
            if not fleet.may_send(plan.t_scheduled_s):
                if math.isnan(t_closed):
                    t_closed = fleet.window_end_s
                continue
            t = plan.t_scheduled_s
            fleet.on_send(plan, t)
            turn = plan.turn
            key = plan
            in_flight[id(key)] = plan
            prefix = 0 if plan.fresh_phase else turn.prefix_tokens + MARKER_TOKENS
            engine.submit(
                SimRequest(
                    key, plan.phase_id, turn.input_tokens + MARKER_TOKENS, prefix, turn.output_tokens, t
                )
            )
        if not math.isnan(t_closed) and not engine.has_work and not sends:
            break
    t_end = engine.now
    for req in engine.cancel_all():  # checks the engine's conservation of requests
        fleet.cancel(in_flight.pop(id(req.key)), t_end)
    if in_flight:  # a request sent but never answered, rejected or cancelled: its agent would be lost
        raise SimulatorInvariantError(
            f"{len(in_flight)} request(s) sent to the simulated deployment {dep.name!r} were never "
            "answered, rejected or cancelled (a simulator bug: please report it with the command)"
        )
    wall = time.perf_counter() - wall0

    window = fleet.window_summary()
    busy_fraction = engine.busy_s / t_end if t_end > 0 else 0.0
    power = modelled_power_w(dep, busy_fraction)
    manifest.update(
        {
            "window": window,
            "meets_aa_rules": window["meets_aa_rules"],
            "client_ok": True,
            "power_w": power,
            "power_scope": "modelled",
            "power_detail": {
                "busy_fraction": busy_fraction,
                "activity_factor": ACTIVITY_FACTOR,
                "note": "modelled: idle + (TDP - idle) x activity x busy share, per accelerator",
            },
            "sim": {
                "virtual_s": t_end,
                "wall_s": wall,
                "engine_steps": engine.steps,
                "requests": fleet.requests_done,
                "prefix_cache_hit_rate": engine.cached_tokens_total / max(1, engine.prompt_tokens_total),
            },
        }
    )
    if writer is not None and out_dir is not None:
        writer.close()
        return finalize_run(out_dir, manifest)
    import pandas as pd

    from ..schema import RAW_COLUMNS, REQUEST_COLUMNS

    raw = pd.DataFrame(rows, columns=list(RAW_COLUMNS)).astype(
        {c: REQUEST_COLUMNS[c].dtype for c in RAW_COLUMNS}
    )
    df = finalize_frame(raw, window["window_start_s"], window["window_end_s"])
    from ..schema import json_safe

    return RunResult(df, json_safe(manifest), None)


def _efficiency(name: str):
    return efficiency(name)
