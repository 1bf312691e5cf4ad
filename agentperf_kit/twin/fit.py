"""Least-squares fit of the twin's step-time model, with standard errors.

Each :class:`Observation` is one measured duration (seconds) and the amounts of work it contains, summed
over the engine steps it spans: ``step_s`` = number of steps, ``prefill_token_s`` = prefill tokens,
``decode_seq_s`` = decode sequence-steps, ``context_token_s`` = context tokens read, ``prefill_pair_s`` =
prefill attention pairs, ``admit_s`` = requests admitted, ``finish_s`` = requests finished, ``end_s`` =
request ends the span waits for (the terms of
:class:`agentperf_kit.sim.twin.StepModel`), plus ``request_s`` = 1
for a duration measured from the client's send (the HTTP round trip and request set-up the engine does
not see; 0 for an inter-token gap).

Two forms are fitted (:mod:`agentperf_kit.sim.twin` states them): the **additive** one (``overlap`` = 0,
``mem_s`` = 0: every term adds, linear in the coefficients) and the **overlap** one (a memory-side part
``M`` with its own per-step ``mem_s`` and a prefill-compute part ``X``, of which the smaller hides
``overlap`` under the larger; the sum over a row's steps is ``n step_s + max(M, X) + (1 - overlap)
min(M, X)`` with ``M`` and ``X`` summed over the steps, exact when the steps are alike). The overlap form
is kept only where the data ask for it: an F test (5 %) of its 2 extra terms against the additive form's
residuals; otherwise ``mem_s`` and ``overlap`` are 0 and not identified.

Both minimise the residuals weighted by 1 / each row's expected noise ``sigma`` (default: the duration
itself, i.e. relative residuals, so a 10 ms decode step counts as much as a 1 s prefill; the profiler adds
the measured jitter of single requests), every time coefficient >= 0 and ``overlap`` within 0..1 (with
``robust``, the default, a soft-L1 loss limits the pull of rows more than 3 sigma off, e.g. a step another
process stalled). Standard errors: ``s^2 (J^T J)^-1`` over the identified terms, ``J`` the Jacobian of
the weighted residuals (the design matrix of the additive form), ``s^2`` the weighted residual variance
(rows minus identified terms degrees of freedom). A term that no observation exercises is reported as not
identified (0 +- 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, nnls
from scipy.stats import f as f_dist

from ..errors import MeasurementError
from ..sim.twin import SHAPE, TERMS, StepModel

__all__ = ["COLUMNS", "Observation", "StepFit", "fit_step_time"]

COLUMNS = (*TERMS, "request_s")
ROBUST_SIGMAS = 3.0
F_TEST_LEVEL = 0.05  # significance at which the overlap form replaces the additive one


@dataclass(frozen=True, slots=True)
class Observation:
    """One measured duration ``seconds`` with its work amounts ``x`` (keys from :data:`COLUMNS`) and its
    expected noise ``sigma`` (seconds; the row's weight is 1 / sigma, default 1 / seconds)."""

    kind: str
    x: dict[str, float]
    seconds: float
    note: str = ""
    sigma: float | None = None  # expected noise of ``seconds`` (s); None: relative (= seconds)


@dataclass(slots=True)
class StepFit:
    """Result of :func:`fit_step_time`: coefficients and standard errors by name (the columns and the
    shape terms ``mem_s``, ``overlap``; seconds per unit, overlap a share), which were identified, the
    relative residuals (measured / predicted - 1) and the form chosen (``additive`` or ``overlap``, with
    the F test's p-value; 1.0 where the overlap form was not tried)."""

    coef: dict[str, float]
    se: dict[str, float]
    identified: tuple[str, ...]
    predicted: list[float] = field(default_factory=list)
    rel_residuals: list[float] = field(default_factory=list)
    form: str = "additive"
    overlap_p_value: float = 1.0

    @property
    def model(self) -> StepModel:
        return StepModel(**{t: self.coef.get(t, 0.0) for t in (*TERMS, *SHAPE)})

    @property
    def rms_rel(self) -> float:
        r = np.asarray(self.rel_residuals)
        return float(np.sqrt(np.mean(r**2))) if r.size else math.nan

    @property
    def max_abs_rel(self) -> float:
        return float(np.max(np.abs(self.rel_residuals))) if self.rel_residuals else math.nan


def fit_step_time(observations: Sequence[Observation], *, robust: bool = True) -> StepFit:
    """Fit the step-time coefficients to ``observations`` (see the module docstring).

    Raises :class:`MeasurementError` with fewer usable rows than identified terms + 1."""
    rows = [o for o in observations if o.seconds > 0 and math.isfinite(o.seconds)]
    x = np.array([[float(o.x.get(c, 0.0)) for c in COLUMNS] for o in rows], dtype=float).reshape(
        len(rows), len(COLUMNS)
    )
    y = np.array([o.seconds for o in rows], dtype=float)
    used = [j for j, _ in enumerate(COLUMNS) if np.any(x[:, j] != 0)]
    if len(rows) < len(used) + 1:
        raise MeasurementError(
            f"step-time fit needs more observations than terms: {len(rows)} usable rows for "
            f"{len(used)} terms (profile with more sizes or repeats)"
        )
    w = np.array([1.0 / (o.sigma if o.sigma and o.sigma > 0 else o.seconds) for o in rows], dtype=float)
    a = x[:, used] * w[:, None]
    scale = np.linalg.norm(a, axis=0)  # column scaling: the terms differ by orders of magnitude
    a_s = a / scale
    beta_s, _ = nnls(a_s, w * y, maxiter=50 * len(used))
    loss = "soft_l1" if robust else "linear"
    # soft-L1 loss: rows further than ``ROBUST_SIGMAS`` sigma from the fit count linearly, not
    # quadratically (one step stalled by another process on a shared machine must not set a term)
    sol = least_squares(
        lambda b: a_s @ b - w * y,
        np.maximum(beta_s, 1e-12),
        bounds=(0.0, np.inf),
        loss=loss,
        f_scale=ROBUST_SIGMAS,
    )
    beta_s = np.maximum(sol.x, 0.0)
    cost_add = float(sol.cost)
    coef = dict.fromkeys((*COLUMNS, *SHAPE), 0.0)
    for k, j in enumerate(used):
        coef[COLUMNS[j]] = float(beta_s[k] / scale[k])
    ses = dict.fromkeys(coef, 0.0)
    names = [COLUMNS[j] for j in used]
    jac = a_s
    theta_s = beta_s
    form, p_value = "additive", 1.0
    over = _fit_overlap(x, y, w, coef, loss) if "step_s" in names else None
    if over is not None:
        coef_o, cost_o = over
        dof_o = len(rows) - len(used) - 2
        if dof_o >= 1 and cost_o < cost_add:
            stat = ((cost_add - cost_o) / 2.0) / (cost_o / dof_o) if cost_o > 0 else math.inf
            p_value = float(f_dist.sf(stat, 2, dof_o)) if math.isfinite(stat) else 0.0
            if p_value < F_TEST_LEVEL:
                form, coef = "overlap", coef_o
                names = names + list(SHAPE)
                scale = np.array([scale[k] for k in range(len(used))] + [scale[used.index(0)], 1.0])
                theta_s = np.array([coef[n] for n in names]) * scale
                jac = _jacobian(lambda t: _residuals(t / scale, names, x, y, w), theta_s)
    resid = _residuals(theta_s / scale, names, x, y, w)
    dof = max(1, len(rows) - len(names))
    s2 = float(resid @ resid) / dof
    se = np.sqrt(np.clip(np.diag(s2 * np.linalg.pinv(jac.T @ jac)), 0.0, None)) / scale
    for k, n in enumerate(names):
        ses[n] = float(se[k])
    pred = _predict(np.array([coef[n] for n in names]), names, x)
    rel = [float(yy / pp - 1.0) if pp > 0 else math.inf for yy, pp in zip(y, pred, strict=True)]
    return StepFit(coef, ses, tuple(names), [float(p) for p in pred], rel, form, p_value)


def _predict(theta: np.ndarray, names: Sequence[str], x: np.ndarray) -> np.ndarray:
    """Seconds of each row of work amounts ``x`` (columns :data:`COLUMNS`) under coefficients ``theta``
    (by ``names``; absent ones are 0)."""
    c = dict(zip(names, theta, strict=True))
    col = {n: x[:, j] for j, n in enumerate(COLUMNS)}
    mem = (
        c.get("mem_s", 0.0) * col["step_s"]
        + c.get("decode_seq_s", 0.0) * col["decode_seq_s"]
        + c.get("context_token_s", 0.0) * col["context_token_s"]
    )
    cmp_ = (
        c.get("prefill_token_s", 0.0) * col["prefill_token_s"]
        + c.get("prefill_pair_s", 0.0) * col["prefill_pair_s"]
    )
    hidden = 1.0 - c.get("overlap", 0.0)
    return (
        c.get("request_s", 0.0) * col["request_s"]
        + c.get("step_s", 0.0) * col["step_s"]
        + c.get("admit_s", 0.0) * col["admit_s"]
        + c.get("finish_s", 0.0) * col["finish_s"]
        + c.get("end_s", 0.0) * col["end_s"]
        + np.maximum(mem, cmp_)
        + hidden * np.minimum(mem, cmp_)
    )


def _residuals(theta: np.ndarray, names: Sequence[str], x: np.ndarray, y: np.ndarray, w: np.ndarray):
    return w * (_predict(theta, names, x) - y)


def _jacobian(fun, theta: np.ndarray) -> np.ndarray:
    """Central-difference Jacobian of ``fun`` at ``theta`` (scaled parameters, steps of 1e-6)."""
    cols = []
    for k in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[k]))
        up, dn = theta.copy(), theta.copy()
        up[k] += h
        dn[k] -= h
        cols.append((fun(up) - fun(dn)) / (2 * h))
    return np.stack(cols, axis=1)


def _fit_overlap(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, add: dict[str, float], loss: str
) -> tuple[dict[str, float], float] | None:
    """The overlap form, started from the additive fit ``add`` with the fixed cost split between
    ``step_s`` and ``mem_s`` and several overlaps (the best start wins). Returns (coefficients, cost) or
    None where no row carries both a memory-side and a prefill-compute part (overlap not exercised)."""
    col = {n: x[:, j] for j, n in enumerate(COLUMNS)}
    both = (col["prefill_token_s"] + col["prefill_pair_s"] > 0) & (
        col["decode_seq_s"] + col["context_token_s"] + col["step_s"] > 0
    )
    if not np.any(both):
        return None
    names = [n for n in COLUMNS if np.any(col[n] != 0)] + list(SHAPE)
    a = x[:, [COLUMNS.index(n) for n in names[:-2]]] * w[:, None]
    scale = np.linalg.norm(a, axis=0)
    scale = np.append(scale, [scale[names.index("step_s")], 1.0])
    lo = np.zeros(len(names))
    hi = np.full(len(names), np.inf)
    hi[-1] = 1.0 * scale[-1]
    best: tuple[float, np.ndarray] | None = None
    for ov in (0.3, 0.6, 0.9):
        for share in (0.3, 0.7):
            start = dict(add)
            start["mem_s"] = share * add["step_s"]
            start["step_s"] = (1 - share) * add["step_s"]
            start["overlap"] = ov
            t0 = np.array([max(start[n], 0.0) for n in names]) * scale
            t0 = np.clip(t0 + 1e-12, lo, hi - 1e-9)
            sol = least_squares(
                lambda t: _residuals(t / scale, names, x, y, w),
                t0,
                bounds=(lo, hi),
                loss=loss,
                f_scale=ROBUST_SIGMAS,
            )
            if best is None or sol.cost < best[0]:
                best = (float(sol.cost), sol.x / scale)
    assert best is not None
    coef = dict.fromkeys((*COLUMNS, *SHAPE), 0.0)
    for n, v in zip(names, best[1], strict=True):
        coef[n] = float(max(0.0, v))
    coef["overlap"] = min(1.0, coef["overlap"])
    return coef, best[0]
