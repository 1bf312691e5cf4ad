"""Per-request engine work measured in situ: from a short replay of the workload itself.

The profile's isolated probes time a request's set-up and end on an otherwise quiet server (one short
request arriving beside 1 or 4 decoding streams). On a real server that work depends on what the server
holds and does at load: llama.cpp's server restores each arriving prompt from its host prompt cache and
saves the idle slots' prompts there, all in the one thread that also runs the decode steps (measured: an
arrival stalls the other streams 6.5 ms in a 32-agent replay where the same server's isolated probes fit
0 ms; docs/simulator.md, "Fourth pass");
vLLM's API server does much of its per-request work in another process beside the engine, so that the
isolated probe overstates what the steps wait for at load. The in-situ fit measures it where it matters.
It can also depend on the server's history: on llama.cpp (-t 1, 32 agents of the validation workload) an
arrival cost 3.8 ms on a freshly started server and 5.2-5.5 ms in three replays after it (its host prompt
cache had filled), so replay with a warm-up long enough to bring the server to the state it serves in.

Definitions (one level of a replay, the client's rows; times in seconds): a request's **decode span** is
``t_end_s - t_first_s`` (first to last token), over ``steps = output_tokens - 1`` engine steps. During it,
``w_j`` is the share of the span that request ``j`` was decoding too (overlap of its own span), so the
span's step work, in the twin's terms (:mod:`agentperf_kit.twin.fit`), is ``step_s = steps``,
``decode_seq_s = steps x (1 + sum w_j)``, ``context_token_s = steps x (c + sum w_j c_j)`` with ``c`` a
request's mean context (prompt tokens + output tokens / 2), plus the prefill work of every other request
whose first token came inside the span (:func:`agentperf_kit.twin.profile.prefill_work` of its new and
cached prompt tokens, without extra steps: a prefill rides in steps that run anyway). **Arrivals** are
those other requests; **other finishes** are the others whose last token came inside the span.

The fit: each span of the steady window (``in_window``, when it holds at least 30; every span otherwise)
has its residual over the twin's step terms (its per-request terms left out) regressed, by non-negative
least squares, on ``[arrivals, other finishes, 1]``: seconds per arrival (the new ``admit_s``), per other
request's end (``o``: what the others wait for when a request ends) and per span (``e``: what a stream
waits for at its own end), with standard errors ``s^2 (X^T X)^-1``. In the twin the others wait
``finish_s + release_s`` and the finishing stream ``finish_s + end_s``, so the shared part is
``finish_s = min(o, e)`` and the rest is ``release_s = o - e`` (llama.cpp: the slot is released after the
final chunk is sent) or ``end_s = e - o``. What the terms leave, per step, is reported
(``leftover_per_step_s``) and not used: a positive one says the server's steps are slower in situ than
in the isolated probes.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, MeasurementError
from .fit import COLUMNS, _predict

__all__ = ["InsituFit", "fit_insitu", "insitu_twin", "insitu_work", "replay_file"]

MIN_SPANS = 30  # fewer decode spans than this cannot separate arrivals from finishes
# the terms the in-situ fit replaces
PER_REQUEST = ("admit_s", "finish_s", "end_s", "release_s", "queued_step_s")


@dataclass(frozen=True, slots=True)
class InsituFit:
    """Per-request engine work (seconds, with standard errors) from ``spans`` decode spans of one replay,
    in the twin's terms: ``admit_s`` per arrival, ``finish_s`` per finish (the finishing stream and the
    others wait), ``end_s`` (only the finishing stream waits) and ``release_s`` (only the others wait);
    ``other_finish_s`` / ``own_end_s`` are the regression's raw per-finish costs to the others and to the
    finishing stream itself; ``replays`` = the replays pooled; ``leftover_per_step_s`` = mean residual
    per step after the terms (diagnostic); ``arrivals_per_span`` / ``finishes_per_span`` = their means
    over the spans (others' ends plus its own: how much the data exercise them); ``queued_step_s`` =
    seconds added to a step while a request waits for admission, ``queued_steps_share`` = the share of
    the spans' steps taken so."""

    admit_s: float
    admit_s_se: float
    finish_s: float
    finish_s_se: float
    end_s: float
    end_s_se: float
    release_s: float
    release_s_se: float
    queued_step_s: float
    queued_step_s_se: float
    other_finish_s: float
    own_end_s: float
    spans: int
    replays: int
    leftover_per_step_s: float
    arrivals_per_span: float
    finishes_per_span: float
    queued_steps_share: float

    def as_dict(self) -> dict[str, float]:
        """The fields as a flat dict (for a TOML section)."""
        return {k: getattr(self, k) for k in self.__slots__}


def queued_share(rows: pd.DataFrame, slots: int, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each span ``[first[k], end[k]]``: the share of it during which more than ``slots`` of ``rows``'
    requests were in flight (sent, not ended: a request then waits for admission at a server with
    ``slots`` sequences at most), from the client's clock."""
    t_send = rows["t_send_s"].to_numpy(float)
    t_end = rows["t_end_s"].to_numpy(float)
    ok = np.isfinite(t_send) & np.isfinite(t_end)
    times = np.concatenate([t_send[ok], t_end[ok]])
    steps = np.concatenate([np.ones(ok.sum()), -np.ones(ok.sum())])
    order = np.argsort(times, kind="stable")
    times, count = times[order], np.cumsum(steps[order])
    if len(times) < 2:
        return np.zeros(len(first))
    over = (count > slots).astype(float)  # in force from times[i] to times[i + 1]
    # F(t): time spent over ``slots`` up to t, piecewise linear between the event times
    cum = np.concatenate([[0.0], np.cumsum(over[:-1] * np.diff(times))])
    spent = np.interp(end, times, cum) - np.interp(first, times, cum)
    return np.clip(spent / np.maximum(end - first, 1e-12), 0.0, 1.0)


def insitu_work(
    rows: pd.DataFrame, chunk: int, slots: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The decode spans of ``rows`` (ok requests with >= 2 output tokens), their work amounts (columns
    :data:`~agentperf_kit.twin.fit.COLUMNS`; ``admit_s`` = arrivals, ``finish_s`` = the other finishes
    plus 1, its own end), their
    step counts and whether each is in the steady window (``in_window``; all True without the column),
    by the module's definitions. ``chunk``: the server's prefill chunk (tokens); ``slots``: its largest
    batch, which gives ``queued_step_s`` = steps x the span's share with a request waiting
    (:func:`queued_share`; none without it)."""
    from .profile import prefill_work

    d = rows[rows["ok"].astype(bool) & (rows["output_tokens"] >= 2)]
    first = d["t_first_s"].to_numpy(float)
    end = d["t_end_s"].to_numpy(float)
    keep = end > first
    d, first, end = d[keep], first[keep], end[keep]
    window = d["in_window"].to_numpy(bool) if "in_window" in d else np.ones(len(d), bool)
    out = d["output_tokens"].to_numpy(float)
    prompt = d["prompt_tokens"].to_numpy(float)
    cached = d["cached_prompt_tokens"].fillna(0).to_numpy(float).clip(0, prompt)
    ctx = prompt + out / 2.0
    pre = np.array(
        [
            [prefill_work(int(n), int(c), chunk).get(col, 0.0) for col in COLUMNS]
            for n, c in zip(prompt - cached, cached, strict=True)
        ]
    ).reshape(len(d), len(COLUMNS))
    pre[:, COLUMNS.index("step_s")] = 0.0
    steps = out - 1.0
    x = np.zeros((len(d), len(COLUMNS)))
    col = {n: j for j, n in enumerate(COLUMNS)}
    for k in range(len(d)):
        a, b = first[k], end[k]
        w = (np.minimum(end, b) - np.maximum(first, a)).clip(min=0.0) / (b - a)
        w[k] = 0.0
        inside = (first > a) & (first < b)
        inside[k] = False
        ends = (end > a) & (end < b)
        ends[k] = False
        x[k] = pre[inside].sum(axis=0)
        x[k, col["step_s"]] = steps[k]
        x[k, col["decode_seq_s"]] = steps[k] * (1.0 + w.sum())
        x[k, col["context_token_s"]] += steps[k] * (ctx[k] + float(w @ ctx))
        x[k, col["admit_s"]] = inside.sum()
        x[k, col["finish_s"]] = 1.0 + ends.sum()
    if slots is not None:
        x[:, col["queued_step_s"]] = steps * queued_share(rows, slots, first, end)
    return end - first, x, steps, window


def fit_insitu(
    rows: pd.DataFrame | Sequence[pd.DataFrame],
    step: dict[str, float],
    chunk: int,
    slots: int | None = None,
) -> InsituFit:
    """Fit ``admit_s`` and ``finish_s`` from a replay's ``rows`` given the twin's other coefficients
    ``step`` (its ``[step]`` table; :data:`PER_REQUEST` ignored) and ``end_s`` and ``release_s`` with
    them (the module's mapping). ``rows`` may be several replays (each on its own clock, e.g. at a low and
    a high load): their spans are pooled into one fit, so that the terms hold over the loads replayed
    rather than at one. With ``slots`` (the server's largest batch) the steps taken while a request waits
    for admission get their own cost, ``queued_step_s`` (fitted when at least :data:`MIN_SPANS` spans
    saw a queue; else 0). Raises :class:`~agentperf_kit.errors.MeasurementError` with fewer than
    :data:`MIN_SPANS` spans in any replay."""
    from scipy.optimize import nnls

    frames = [rows] if isinstance(rows, pd.DataFrame) else list(rows)
    if not frames:
        raise MeasurementError("the in-situ fit needs at least one replay")
    parts = []
    for i, frame in enumerate(frames):
        span, x, steps, window = insitu_work(frame, chunk, slots)
        if window.sum() >= MIN_SPANS:  # the steady window's spans (others in the warm-up still count)
            span, x, steps = span[window], x[window], steps[window]
        if len(span) < MIN_SPANS:
            which = f"replay {i + 1} of {len(frames)}" if len(frames) > 1 else "the in-situ replay"
            raise MeasurementError(
                f"{which} gave {len(span)} decode spans, fewer than {MIN_SPANS}: "
                "replay more agents or for longer (agentperf run -n N --duration S)"
            )
        parts.append((span, x, steps))
    span = np.concatenate([p[0] for p in parts])
    x = np.vstack([p[1] for p in parts])
    steps = np.concatenate([p[2] for p in parts])
    names = [n for n in COLUMNS if n in step and n not in PER_REQUEST]
    theta = np.array([float(step[n]) for n in names])
    resid = span - _predict(theta, names, x)
    arrivals = x[:, COLUMNS.index("admit_s")]
    others = x[:, COLUMNS.index("finish_s")] - 1.0  # the other requests' ends inside the span
    queued = x[:, COLUMNS.index("queued_step_s")]
    cols = [arrivals, others, np.ones(len(span))]
    if np.count_nonzero(queued) >= MIN_SPANS:  # enough spans saw a queue to tell its cost
        cols.append(queued)
    design = np.column_stack(cols)
    coef, _ = nnls(design, resid)
    left = resid - design @ coef
    k = design.shape[1]
    s2 = float(left @ left) / max(1, len(span) - k)
    try:
        cov = s2 * np.linalg.inv(design.T @ design)
    except np.linalg.LinAlgError:
        cov = np.full((k, k), np.inf)
    a, o, e = (float(c) for c in coef[:3])
    var = np.diag(cov)
    q, q_se = (float(coef[3]), float(var[3] ** 0.5)) if k == 4 else (0.0, 0.0)
    diff_se = float(np.sqrt(max(0.0, var[1] + var[2] - 2.0 * cov[1, 2])))
    # others wait finish_s + release_s, the finishing stream finish_s + end_s: the shared part is finish_s
    if e <= o:
        finish, finish_se, end, end_se, release, release_se = e, var[2] ** 0.5, 0.0, 0.0, o - e, diff_se
    else:
        finish, finish_se, end, end_se, release, release_se = o, var[1] ** 0.5, e - o, diff_se, 0.0, 0.0
    return InsituFit(
        admit_s=a,
        admit_s_se=float(var[0] ** 0.5),
        finish_s=finish,
        finish_s_se=float(finish_se),
        end_s=end,
        end_s_se=end_se,
        release_s=release,
        release_s_se=release_se,
        queued_step_s=q,
        queued_step_s_se=q_se,
        other_finish_s=o,
        own_end_s=e,
        spans=len(span),
        replays=len(frames),
        leftover_per_step_s=float(left.sum() / steps.sum()),
        arrivals_per_span=float(arrivals.mean()),
        finishes_per_span=float(others.mean() + 1.0),
        queued_steps_share=float(queued.sum() / steps.sum()),
    )


def replay_file(source: str | os.PathLike) -> Path:
    """The ``requests.parquet`` of replay directory (or file) ``source``; a
    :class:`~agentperf_kit.errors.ConfigError` naming what to give when there is none."""
    p = Path(source)
    file = p / "requests.parquet" if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(
            f"{source}: no requests.parquet there; give the directory of a replay "
            "('agentperf run --out DIR', or a sweep level DIR/levels/nNNNNN_e0)"
        )
    return file


def _read_rows(source: str | os.PathLike) -> pd.DataFrame:
    from ..results import read_requests_file

    return read_requests_file(replay_file(source))


def insitu_twin(
    src: str | os.PathLike,
    replay: str | os.PathLike | Sequence[str | os.PathLike],
    dst: str | os.PathLike,
    *,
    rows: pd.DataFrame | Sequence[pd.DataFrame] | None = None,
) -> tuple[Path, InsituFit]:
    """Write twin ``dst``: twin ``src`` with ``admit_s``, ``finish_s``, ``end_s`` and ``release_s`` (and
    their standard errors) fitted in situ from the replay in directory ``replay``, or pooled over several
    replays (:func:`fit_insitu`; ``rows`` instead of reading them); the fit's figures and the replays'
    paths go to ``[insitu]``, the isolated probes' values to ``[insitu] probe_admit_s``,
    ``probe_finish_s`` and ``probe_end_s``."""
    from ..sim.twin import TWIN_KIND, dump_toml
    from .profile import _COMMENTS

    data = tomllib.loads(Path(src).read_text())
    if data.get("kind") != TWIN_KIND:
        raise ConfigError(f"{src}: not a twin preset (kind = {data.get('kind')!r}, expected {TWIN_KIND!r})")
    replays = [replay] if isinstance(replay, str | os.PathLike) else list(replay)
    if rows is None:
        rows = [_read_rows(r) for r in replays]
    step = dict(data.get("step") or {})
    se = dict(data.get("step_se") or {})
    chunk = int(data["engine"]["max_num_batched_tokens"])
    f = fit_insitu(rows, step, chunk, int(data["engine"]["max_num_seqs"]))
    old = dict(data.get("insitu") or {})
    section = {
        "source": str(replays[0]) if len(replays) == 1 else [str(r) for r in replays],
        "probe_admit_s": old.get("probe_admit_s", float(step.get("admit_s", 0.0))),
        "probe_finish_s": old.get("probe_finish_s", float(step.get("finish_s", 0.0))),
        "probe_end_s": old.get("probe_end_s", float(step.get("end_s", 0.0))),
        **f.as_dict(),
        "fitted_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for term in PER_REQUEST:  # the fitted values and their standard errors replace the probes'
        step[term], se[term] = getattr(f, term), getattr(f, f"{term}_se")
    data["step"], data["step_se"], data["insitu"] = step, se, section
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_toml(data, comments=_COMMENTS))
    return out, f
