"""A quick upper estimate of a simulated deployment's max agents, for the sweep's starting cap.

The sweep's ramp stops when every tier fails, and at its cap when one still passes (a lower bound); a cap
far above the answer costs nothing, one below it costs a second sweep. On the simulator the default cap is
estimated from the step-time model, so that it is rarely hit:

1. ``c``, the mean context a decoded token sees: sum over turns of output x (prompt + output / 2), over
   the total output (tokens).
2. ``B``, the largest decode batch whose per-sequence speed, ``1 / decode_step_time(B, B x c)``, still
   meets the loosest tier's speed floor (tok/s), bounded by ``max_num_seqs`` and by the KV cache
   (``B x c <= kv_capacity_tokens``). For a disaggregated deployment, the decode pool.
3. ``f``, the share of an agent's time spent decoding when its tokens come at the floor speed: sum of
   output / floor over the sum of (output / floor + tool delay) (prefill and queueing left out).
4. Estimate ``N = B / f`` agents (decoding sequences B = N x f); the cap is ``margin x N`` (1.5), at least
   ``minimum`` (64), rounded up to a multiple of 64.

Every simplification makes the estimate high: prefill steps and chunked prefill slow decoding, queueing
adds to TTFT, and a percentile of speed sits below the mean. ``tests/test_sweep_cap.py`` checks it stays
above measured answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..trajectories.model import Trajectory
from .disagg import make_engine
from .engine import Engine
from .presets import Deployment, efficiency

__all__ = [
    "CAP_MARGIN",
    "decode_capacity",
    "decode_profile",
    "decode_step_ratio",
    "estimate_agents",
    "estimate_max_agents",
]

CAP_MARGIN = 1.5


def _engine(pool: Deployment, eff_name: str) -> Engine:
    """An idle engine of one (non-disaggregated) pool, to read step times from: a twin's pool gets the
    twin's fitted step time (``make_engine``), any other the roofline."""
    eng = make_engine(pool, efficiency(eff_name), lambda *a: None, lambda *a: None)
    assert isinstance(eng, Engine), "a pool is never disaggregated"
    return eng


def decode_capacity(dep: Deployment, eff_name: str, floor_tps: float, context: float) -> int:
    """Largest decode batch (sequences) whose per-sequence speed at mean context ``context`` (tokens)
    meets ``floor_tps`` (tok/s), within ``max_num_seqs`` and the KV cache; 0 when even one is too slow."""
    pool = dep.decode_pool if dep.decode_pool is not None else dep
    eng = _engine(pool, eff_name)
    hi_cap = min(pool.max_num_seqs, max(1, int(pool.kv_capacity_tokens // max(context, 1.0))))

    def fast_enough(b: int) -> bool:
        return 1.0 / eng.decode_step_time(b, b * context) >= floor_tps

    if not fast_enough(1):
        return 0
    lo, hi = 1, hi_cap
    if fast_enough(hi):
        return hi
    while hi - lo > 1:  # speed falls as the batch grows: bisect on the last fast-enough batch
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fast_enough(mid) else (lo, mid)
    return lo


def decode_profile(trajectories: Sequence[Trajectory], floor_tps: float) -> tuple[float, float]:
    """(``c``, ``f``) of steps 1 and 3 of the module docstring: the mean context a decoded token sees
    (tokens) and the share of an agent's time spent decoding at ``floor_tps`` (tok/s); (0.0, 0.0) when
    the trajectories have no output."""
    out = ctx_w = decode_s = tool_s = 0.0
    for t in trajectories:
        for u in t.turns:
            o = float(u.output_tokens)
            out += o
            ctx_w += o * (u.input_tokens + o / 2.0)
            decode_s += o / floor_tps
            tool_s += u.tool_delay_s
    if out <= 0 or decode_s <= 0:
        return 0.0, 0.0
    return ctx_w / out, decode_s / (decode_s + tool_s)


def estimate_agents(
    dep: Deployment, eff_name: str, trajectories: Sequence[Trajectory], floor_tps: float
) -> float:
    """The model's agents ``N = B / f`` (steps 1-4 of the module docstring, without margin or rounding)
    for ``dep`` under the efficiency set ``eff_name`` and the speed floor ``floor_tps`` (tok/s); 0.0 when
    the trajectories have no output."""
    c, f = decode_profile(trajectories, floor_tps)
    if f <= 0:
        return 0.0
    return decode_capacity(dep, eff_name, floor_tps, c) / f


def decode_step_ratio(dep: Deployment, eff_a: str, eff_b: str, batch: int, context: float) -> float:
    """Pure decode step time under the efficiency set ``eff_a`` over that under ``eff_b``, for ``batch``
    sequences at mean context ``context`` (tokens); the decode pool of a disaggregated deployment; 1.0
    when either step time is not positive."""
    pool = dep.decode_pool if dep.decode_pool is not None else dep
    b = max(1, int(batch))

    def step(eff: str) -> float:
        eng = _engine(pool, eff)
        return eng.decode_step_time(b, b * context)

    a, b_ = step(eff_a), step(eff_b)
    return a / b_ if a > 0 and b_ > 0 else 1.0  # a model without a step time: no ratio


def estimate_max_agents(
    dep: Deployment,
    eff_name: str,
    trajectories: Sequence[Trajectory],
    floor_tps: float,
    *,
    margin: float = CAP_MARGIN,
    minimum: int = 64,
) -> int:
    """The sweep's starting cap (agents) for ``dep`` under the loosest speed floor ``floor_tps`` (tok/s);
    the method is in the module docstring."""
    n = margin * estimate_agents(dep, eff_name, trajectories, floor_tps)
    return max(minimum, 64 * math.ceil(n / 64))
