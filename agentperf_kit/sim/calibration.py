"""Calibration of the simulator's efficiency factors against published throughput points.

The points (``presets/calibration.toml``, from docs/sources.md) are DeepSeek-V3/R1-class serving
figures. Each is a *scenario* the engine's step-time model can run (see that file for the kinds); the
result is a per-GPU throughput in tokens per second comparable with the published figure.

:func:`fit_efficiency` chooses the roofline utilizations (compute, bandwidth) that minimize the root mean
square of ``log(simulated / published)`` over the points; :func:`calibration_table` reports each point's
simulated value and error. AA-AgentPerf's agents-per-GPU results are never used here: they are the
validation (``benchmarks/predict_aa.py``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from .engine import Engine, SimRequest
from .presets import Deployment, Efficiency, get_deployment, physics, with_mtp

__all__ = [
    "CalibrationPoint",
    "calibration_points",
    "calibration_table",
    "error_by_regime",
    "fit_efficiency",
    "simulate_point",
]

SEARCH_MAX_SEQS = 4096
FULL_GRID_MAX = 400


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    """One published figure and the scenario that reproduces it (token counts in tokens, speeds in tok/s)."""

    id: str
    system: str
    figure: str
    published: float  # per GPU, tok/s
    deployment: str
    scenario: str
    depends_on: str
    params: dict[str, float]
    regime: str = "other"
    holdout: bool = False


@cache
def calibration_points() -> tuple[CalibrationPoint, ...]:
    """The published points from ``presets/calibration.toml``."""
    text = resources.files("agentperf_kit.sim").joinpath("presets/calibration.toml").read_text()
    out = []
    for p in tomllib.loads(text)["point"]:
        fixed = {
            k: p[k] for k in ("id", "system", "figure", "published", "deployment", "scenario", "depends_on")
        }
        meta = ("regime", "holdout")
        params = {k: float(v) for k, v in p.items() if k not in fixed and k not in meta}
        fixed["published"] = float(fixed["published"])
        out.append(
            CalibrationPoint(
                **fixed,
                params=params,
                regime=str(p.get("regime", "other")),
                holdout=bool(p.get("holdout", False)),
            )
        )
    return tuple(out)


def _engine(dep: Deployment, eff: Efficiency) -> Engine:
    return Engine(dep, eff, lambda *a: None, lambda *a: None)


def prefill_tps_per_gpu(dep: Deployment, eff: Efficiency, isl: float, cached_share: float) -> float:
    """Input tok/s per GPU (cached tokens included) with every step's budget full of prefill chunks of
    ``isl``-token prompts whose first ``cached_share`` is a prefix-cache hit."""
    eng = _engine(dep, eff)
    p = isl * cached_share
    n = isl - p
    budget = dep.max_num_batched_tokens
    if n <= budget:  # several whole prompts per step
        r = budget / n
        t = eng.step_time(budget, 0.0, r * (n * p + n * n / 2.0), r * (p + n))
        return r * isl / t / dep.accelerator_count
    t, done = 0.0, 0.0  # one prompt over several chunks
    while done < n:
        c = min(budget, n - done)
        pre = p + done
        t += eng.step_time(int(c), 0.0, c * pre + c * c / 2.0, pre + c)
        done += c
    return isl / t / dep.accelerator_count


def _decode_step(eng: Engine, batch: int, context: float) -> float:
    return eng.decode_step_time(batch, batch * context)


def _max_batch(dep: Deployment, context: float) -> int:
    return max(1, min(dep.max_num_seqs, int(dep.kv_capacity_tokens // max(1.0, context))))


def decode_at_speed_tps_per_gpu(dep: Deployment, eff: Efficiency, context: float, user_tps: float) -> float:
    """Output tok/s per GPU at the largest decode batch whose per-user speed is >= ``user_tps``
    (NaN when even one sequence is slower)."""
    eng = _engine(dep, eff)
    lo, hi = 1, _max_batch(dep, context)
    if 1.0 / _decode_step(eng, 1, context) < user_tps:
        return math.nan
    while lo < hi:  # largest batch meeting the speed (speed falls with the batch)
        mid = (lo + hi + 1) // 2
        if 1.0 / _decode_step(eng, mid, context) >= user_tps:
            lo = mid
        else:
            hi = mid - 1
    return lo / _decode_step(eng, lo, context) / dep.accelerator_count


def decode_batch_tps_per_gpu(dep: Deployment, eff: Efficiency, context: float, batch_per_gpu: float) -> float:
    """Output tok/s per GPU with ``batch_per_gpu`` decoding sequences per GPU at ``context`` tokens each
    (capped by ``max_num_seqs`` and the KV capacity)."""
    eng = _engine(dep, eff)
    batch = min(int(batch_per_gpu * dep.accelerator_count), _max_batch(dep, context))
    return batch / _decode_step(eng, batch, context) / dep.accelerator_count


def closed_loop(
    dep: Deployment, eff: Efficiency, concurrency: int, isl: int, osl: int, rounds: int = 3
) -> tuple[float, float]:
    """Fixed-concurrency benchmark (each finished request replaced at once, no prefix reuse):
    ``(output tok/s per GPU, median per-user decode speed tok/s)`` over the last ``rounds - 1`` rounds."""
    finished: list[tuple[float, float]] = []  # (t_first, t_end)
    total = concurrency * rounds
    submitted = 0

    def on_finish(req: SimRequest, t_end: float) -> None:
        nonlocal submitted
        finished.append((req.t_first, t_end))
        if submitted < total:
            submitted += 1
            eng.submit(SimRequest(None, submitted, isl, 0, osl, t_end))

    eng = Engine(dep, eff, on_finish, lambda *a: None)
    for i in range(concurrency):
        submitted += 1
        eng.submit(SimRequest(None, i, isl, 0, osl, 0.0))
    while eng.has_work:
        eng.advance(math.inf)
    skip = concurrency  # the first round fills the system
    steady = finished[skip:] or finished
    t0 = finished[skip - 1][1] if len(finished) > skip else 0.0
    t1 = finished[-1][1]
    tps = len(steady) * osl / max(1e-12, t1 - t0) / dep.accelerator_count
    speeds = sorted((osl - 1) / max(1e-12, e - f) for f, e in steady)
    return tps, speeds[len(speeds) // 2]


def closed_loop_at_speed_tps_per_gpu(
    dep: Deployment, eff: Efficiency, isl: int, osl: int, user_tps: float
) -> float:
    """Output tok/s per GPU at the highest concurrency whose median per-user speed is >= ``user_tps``
    (NaN when one request alone is slower). The published points come from a configuration search, so
    the running-sequence cap is lifted to ``SEARCH_MAX_SEQS`` (the KV capacity still limits admission)
    and, for a model with an MTP layer (DeepSeek), the better of MTP off and on is taken."""
    dep = dataclasses.replace(dep, max_num_seqs=max(dep.max_num_seqs, SEARCH_MAX_SEQS))
    if dep.model.startswith("deepseek") and not dep.mtp:
        results = [_closed_loop_search(with_mtp(dep, on), eff, isl, osl, user_tps) for on in (False, True)]
        finite = [r for r in results if r == r]
        return max(finite) if finite else math.nan
    return _closed_loop_search(dep, eff, isl, osl, user_tps)


def _closed_loop_search(dep: Deployment, eff: Efficiency, isl: int, osl: int, user_tps: float) -> float:
    if closed_loop(dep, eff, 1, isl, osl)[1] < user_tps:
        return math.nan
    lo, hi = 1, dep.max_num_seqs
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if closed_loop(dep, eff, mid, isl, osl)[1] >= user_tps:
            lo = mid
        else:
            hi = mid - 1
    return closed_loop(dep, eff, lo, isl, osl)[0]


def simulate_point(point: CalibrationPoint, eff: Efficiency) -> float:
    """The simulated per-GPU figure for ``point`` with efficiency factors ``eff``."""
    dep = get_deployment(point.deployment)
    p = point.params
    if point.scenario == "prefill":
        return prefill_tps_per_gpu(dep, eff, p["isl"], p["cached_share"])
    if point.scenario == "decode_at_speed":
        return decode_at_speed_tps_per_gpu(dep, eff, p["context"], p["user_tps"])
    if point.scenario == "decode_batch":
        return decode_batch_tps_per_gpu(dep, eff, p["context"], p["batch_per_gpu"])
    if point.scenario == "closed_loop":
        return closed_loop_at_speed_tps_per_gpu(dep, eff, int(p["isl"]), int(p["osl"]), p["user_tps"])
    raise ValueError(f"point {point.id}: unknown scenario {point.scenario!r}")


def _log_errors(points, eff: Efficiency) -> list[float]:
    out = []
    for pt in points:
        sim = simulate_point(pt, eff)
        # a point the model cannot reach at all counts as a 10x miss, so the fit still sees it
        out.append(math.log(sim / pt.published) if sim == sim and sim > 0 else -math.log(10.0))
    return out


def _caps() -> tuple[float, float]:
    caps = physics()["caps"]
    return float(caps["compute"]), float(caps["bandwidth"])


def _rms(points, eff: Efficiency) -> float:
    errs = _log_errors(points, eff)
    return math.sqrt(sum(e * e for e in errs) / len(errs))


def fit_efficiency(
    points: tuple[CalibrationPoint, ...] | None = None,
    *,
    compute_grid: tuple[float, ...] | None = None,
    bandwidth_grid: tuple[float, ...] | None = None,
    latency_grid: tuple[float, ...] | None = None,
    rounds: int = 6,
) -> dict[str, Any]:
    """Fit (compute, bandwidth, latency) to ``points`` (default: the calibration points not held out),
    minimizing the RMS log error: exhaustive over the three grids when they hold at most
    ``FULL_GRID_MAX`` combinations, else coordinate descent (each factor in turn over its whole grid, the
    others held) for up to ``rounds`` rounds (a local optimum on the grid). Compute and bandwidth grids
    stop at the cited kernel caps (``physics.toml [caps]``).

    Returns ``{"compute", "bandwidth", "latency", "rms_log_error", "band"}`` where ``band`` holds the
    ``low`` and ``high`` sets: the fitted utilizations scaled by ``exp(-/+ rms_log_error)`` and the latency
    factor by ``exp(+/- rms_log_error)`` (the fit's scatter carried into the factors), capped.
    """
    points = points or tuple(p for p in calibration_points() if not p.holdout)
    cap_c, cap_b = _caps()
    cg = compute_grid or tuple(round(0.05 * i, 2) for i in range(2, 16) if 0.05 * i <= cap_c + 1e-9)
    bg = bandwidth_grid or tuple(round(0.05 * i, 2) for i in range(4, 18) if 0.05 * i <= cap_b + 1e-9)
    lg = latency_grid or (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    cur = [cg[len(cg) // 2], bg[len(bg) // 2], lg[len(lg) // 2] if 1.0 not in lg else 1.0]
    seen: dict[tuple[float, float, float], float] = {}

    def score(c: float, b: float, lat: float) -> float:
        key = (c, b, lat)
        if key not in seen:
            seen[key] = _rms(points, Efficiency("fit", c, b, lat))
        return seen[key]

    if len(cg) * len(bg) * len(lg) <= FULL_GRID_MAX:  # small grids: exhaustive
        c, b, lat = min(((c, b, lat) for c in cg for b in bg for lat in lg), key=lambda x: score(*x))
        cur = [c, b, lat]
        rounds = 0
    for _ in range(rounds):
        before = tuple(cur)
        for i, grid in enumerate((cg, bg, lg)):

            def moved(v: float, i: int = i) -> float:  # the score with coordinate i set to v
                point = list(cur)
                point[i] = v
                return score(point[0], point[1], point[2])

            best = min(grid, key=moved)
            cur[i] = best
        if tuple(cur) == before:
            break
    c, b, lat = cur
    rms = score(c, b, lat)
    k = math.exp(rms)
    return {
        "compute": c,
        "bandwidth": b,
        "latency": lat,
        "rms_log_error": rms,
        "evaluations": len(seen),
        "band": {
            "low": {"compute": round(c / k, 3), "bandwidth": round(b / k, 3), "latency": round(lat * k, 3)},
            "high": {
                "compute": round(min(cap_c, c * k), 3),
                "bandwidth": round(min(cap_b, b * k), 3),
                "latency": round(lat / k, 3),
            },
        },
    }


def calibration_table(eff: Efficiency, points: tuple[CalibrationPoint, ...] | None = None):
    """One row per point: published and simulated per-GPU tok/s, error %, within +-25 %, dependencies."""
    import pandas as pd

    rows = []
    for pt in points or calibration_points():
        sim = simulate_point(pt, eff)
        err = (sim / pt.published - 1.0) * 100.0 if sim == sim else math.nan
        rows.append(
            {
                "point": pt.id,
                "system": pt.system,
                "figure": pt.figure,
                "deployment": pt.deployment,
                "scenario": pt.scenario,
                "published_tps_per_gpu": pt.published,
                "simulated_tps_per_gpu": sim,
                "error_pct": err,
                "within_25pct": bool(abs(err) <= 25.0) if err == err else False,
                "regime": pt.regime,
                "holdout": pt.holdout,
                "depends_on": pt.depends_on,
            }
        )
    return pd.DataFrame(rows)


def error_by_regime(table) -> Any:
    """RMS log error and count per regime and fit/held-out split of a :func:`calibration_table`."""
    import pandas as pd

    t = table.assign(
        log_error=[
            math.log(1 + e / 100.0) if e == e and e > -100 else -math.log(10.0) for e in table["error_pct"]
        ],
        split=["held out" if h else "fit" for h in table["holdout"]],
    )
    rows = []
    for keys, g in list(t.groupby(["regime"])) + list(t.groupby(["split"])):
        rms = math.sqrt(float((g["log_error"] ** 2).mean()))
        rows.append(
            {
                "group": keys[0],
                "points": len(g),
                "rms_log_error": rms,
                "typical_error_x": math.exp(rms),
                "median_error_pct": float(g["error_pct"].median()),
            }
        )
    return pd.DataFrame(rows)
