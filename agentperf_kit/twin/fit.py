"""Least-squares fit of the twin's linear step-time model, with standard errors.

Each :class:`Observation` is one measured duration (seconds) and the amounts of work it contains, summed
over the engine steps it spans: ``step_s`` = number of steps, ``prefill_token_s`` = prefill tokens,
``decode_seq_s`` = decode sequence-steps, ``context_token_s`` = context tokens read, ``prefill_pair_s`` =
prefill attention pairs (the terms of :class:`agentperf_kit.sim.twin.StepModel`), plus ``request_s`` = 1
for a duration measured from the client's send (the HTTP round trip and request set-up the engine does
not see; 0 for an inter-token gap). The fit minimises the residuals weighted by 1 / each row's expected
noise ``sigma``
(default: the duration itself, i.e. relative residuals, so a 10 ms decode step counts as much as a 1 s
prefill; the profiler adds the measured jitter of single requests), with every coefficient >= 0
(non-negative least squares; with ``robust``, the default, a soft-L1 loss then limits the pull of rows
more than 3 sigma off, e.g. a step another process stalled). Standard errors: ``s^2 (A^T A)^-1`` over
the identified terms, ``A`` the weighted design matrix, ``s^2`` the weighted residual variance (rows
minus identified terms degrees of freedom). A term that no observation exercises is reported as not
identified (0 +- 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, nnls

from ..errors import MeasurementError
from ..sim.twin import TERMS, StepModel

__all__ = ["COLUMNS", "Observation", "StepFit", "fit_step_time"]

COLUMNS = (*TERMS, "request_s")
ROBUST_SIGMAS = 3.0


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
    """Result of :func:`fit_step_time`: coefficients and standard errors by column name (seconds per
    unit), which columns were identified, and the relative residuals (measured / predicted - 1)."""

    coef: dict[str, float]
    se: dict[str, float]
    identified: tuple[str, ...]
    predicted: list[float] = field(default_factory=list)
    rel_residuals: list[float] = field(default_factory=list)

    @property
    def model(self) -> StepModel:
        return StepModel(**{t: self.coef[t] for t in TERMS})

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
    if robust:
        # soft-L1 loss: rows further than ``ROBUST_SIGMAS`` sigma from the fit count linearly, not
        # quadratically (one step stalled by another process on a shared machine must not set a term)
        sol = least_squares(
            lambda b: a_s @ b - w * y,
            np.maximum(beta_s, 1e-12),
            bounds=(0.0, np.inf),
            loss="soft_l1",
            f_scale=ROBUST_SIGMAS,
        )
        beta_s = np.maximum(sol.x, 0.0)
    beta = beta_s / scale
    resid = a_s @ beta_s - w * y
    dof = max(1, len(rows) - len(used))
    s2 = float(resid @ resid) / dof
    cov_s = s2 * np.linalg.pinv(a_s.T @ a_s)
    se = np.sqrt(np.clip(np.diag(cov_s), 0.0, None)) / scale
    coef = dict.fromkeys(COLUMNS, 0.0)
    ses = dict.fromkeys(COLUMNS, 0.0)
    for k, j in enumerate(used):
        coef[COLUMNS[j]] = float(beta[k])
        ses[COLUMNS[j]] = float(se[k])
    pred = x @ np.array([coef[c] for c in COLUMNS])
    rel = [float(yy / pp - 1.0) if pp > 0 else math.inf for yy, pp in zip(y, pred, strict=True)]
    return StepFit(coef, ses, tuple(COLUMNS[j] for j in used), [float(p) for p in pred], rel)
