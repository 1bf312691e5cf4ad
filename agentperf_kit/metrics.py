"""Per-request metrics derived from raw timestamps, and per-level statistics.

Definitions (docs/metrics.md); all times in seconds on the run's monotonic clock:

- ``ttft_s`` = t_first - t_send, where t_first is the first *visible* delta (non-empty content or reasoning,
  or a tool call with a non-empty name or arguments). A request with no visible token that did not finish
  ok (failed, or unfinished at the end of the run) has TTFT = +inf: a miss. A request that finished ok with
  ``usage.completion_tokens > 0`` but no visible text (``n_chunks == 0``) has TTFT undefined (NaN): the
  client cannot see when its first token came (the public reference harness leaves it undefined too).
- ``ttfo_s`` = t_first_answer - t_send: time to the first non-reasoning visible delta (content or tool
  call). NaN when the response never produced one (reasoning only) and +inf when it failed before any
  visible token. For an answer made only of tool calls, the first tool-call delta is the first answer.
- ``e2e_s`` = t_end - t_send.
- ``output_speed_tps``: where the first visible chunk's token count is known (``first_chunk_tokens``, from
  continuous usage), AA's API formula (output_tokens - first_chunk_tokens) / (t_last - t_first); else
  (output_tokens - 1) / (t_last - t_first); output_tokens from the server's ``usage.completion_tokens``
  (reasoning included), or the visible chunks streamed (``n_chunks``, with the ``minus_one`` formula)
  where the row's ``usage_mismatch`` says the server's usage is not to be trusted (docs/replay.md).
  ``speed_formula`` says which (``aa_first_chunk`` or ``minus_one``). NaN for a successful request with
  fewer than 2 output tokens (no speed: excluded from speed percentiles, counted in TTFT).
  **Unmeasurable** (NaN, flagged in ``speed_unmeasurable``): an ok request with >= 2 tokens whose visible
  output came in one chunk or one network read (t_last == t_first), or had no visible text: the client
  cannot see a speed. A request that did not finish ok has speed ``failed_speed`` (0: a miss).
- A request still running when the run ended (``cancelled_at_end``) is judged on what it showed: TTFT as
  observed (+inf if no visible token came), speed = (tokens seen - 1) / (t_end - t_first), the tokens seen
  being ``output_tokens`` where known, else its visible chunks (0 when fewer than 2: a miss).

A server that ignored ``ignore_eos`` returns fewer tokens than asked: see :func:`output_length_mismatch`;
its speed is still computed from what it returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .percentiles import percentile_sorted, sorted_sample

__all__ = ["METRICS", "Metric", "derive_request_metrics", "level_stats", "output_length_mismatch"]


@dataclass(frozen=True, slots=True)
class Metric:
    """A per-request metric: column name, label, unit, and which direction is better."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ttft_s", "Time to first token", "s", False, "first visible delta - request sent"),
        Metric("ttfo_s", "Time to first answer token", "s", False, "first non-reasoning delta - sent"),
        Metric("e2e_s", "End-to-end latency", "s", False, "end of response - request sent"),
        Metric(
            "output_speed_tps",
            "Output speed",
            "tokens/s",
            True,
            "(output_tokens - 1) / (t_last - t_first)",
        ),
    )
}


def derive_request_metrics(df: pd.DataFrame, *, failed_speed: float = 0.0) -> pd.DataFrame:
    """Copy of a raw per-request frame with ``ttft_s, ttfo_s, e2e_s, output_speed_tps`` added, and
    ``speed_unmeasurable`` (bool) and ``speed_formula`` (``aa_first_chunk`` / ``minus_one`` / empty).

    ``failed_speed`` is the speed given to a request that did not finish ok (default 0: a miss; use NaN to
    exclude failures from speed percentiles instead). Definitions: module docstring.
    """
    return add_request_metrics(df.copy(), failed_speed=failed_speed)


def add_request_metrics(out: pd.DataFrame, *, failed_speed: float = 0.0) -> pd.DataFrame:
    """:func:`derive_request_metrics` adding the columns to ``out`` itself (no copy of the frame: what
    :func:`agentperf_kit.results.finalize_frame` uses on the rows it owns); returns ``out``."""
    n = len(out)
    t_send = out["t_send_s"].to_numpy(dtype=float)
    t_first = out["t_first_s"].to_numpy(dtype=float)
    t_first_answer = out["t_first_answer_s"].to_numpy(dtype=float)
    t_last = out["t_last_s"].to_numpy(dtype=float)
    t_end = out["t_end_s"].to_numpy(dtype=float)
    ok = out["ok"].to_numpy(dtype=bool)
    tokens = _num(out, "output_tokens", n)
    first_tokens = _num(out, "first_chunk_tokens", n)
    chunks = _num(out, "n_chunks", n)
    if "usage_mismatch" in out:  # the server's usage is not to be trusted: count what was streamed
        flagged = out["usage_mismatch"].fillna(False).to_numpy(dtype=bool)
        tokens = np.where(flagged, chunks, tokens)
        first_tokens = np.where(flagged, np.nan, first_tokens)
    if "error" in out:
        cancelled = (out["error"].astype("string") == "cancelled_at_end").fillna(False).to_numpy(dtype=bool)
    else:
        cancelled = np.zeros(n, dtype=bool)

    no_token = np.isnan(t_first)
    # ok, tokens reported, but nothing visible: the client could not see the first token
    invisible = ok & (chunks == 0) & ~no_token
    ttft = np.where(no_token, np.inf, t_first - t_send)
    ttft = np.where(invisible, np.nan, ttft)
    ttfo = np.where(np.isnan(t_first_answer), np.where(no_token, np.inf, np.nan), t_first_answer - t_send)
    ttfo = np.where(invisible, np.nan, ttfo)
    aa = ~np.isnan(first_tokens) & (first_tokens >= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        span = t_last - t_first
        speed = np.where(aa, tokens - first_tokens, tokens - 1.0) / span
        seen = np.where(np.isnan(tokens), chunks, tokens)
        speed_cut = np.where(seen >= 2, (seen - 1.0) / (t_end - t_first), 0.0)
    unmeasurable = ok & (tokens >= 2) & ((span == 0) | invisible)
    speed = np.where(unmeasurable, np.nan, speed)
    speed = np.where(tokens < 2, np.nan, speed)
    speed = np.where(np.isnan(tokens) & ok, np.nan, speed)
    speed = np.where(ok, speed, failed_speed)
    speed_cut = np.where(np.isfinite(speed_cut) & (speed_cut >= 0), speed_cut, 0.0)
    speed = np.where(cancelled, speed_cut, speed)
    out["ttft_s"] = ttft
    out["ttfo_s"] = ttfo
    out["e2e_s"] = t_end - t_send
    out["output_speed_tps"] = speed
    out["speed_unmeasurable"] = unmeasurable
    out["speed_formula"] = pd.array(
        np.where(ok & ~np.isnan(speed), np.where(aa, "aa_first_chunk", "minus_one"), ""), dtype="string"
    )
    return out


def _num(df: pd.DataFrame, col: str, n: int) -> np.ndarray:
    """A numeric column as float (NA -> NaN); all-NaN when the frame lacks it."""
    if col not in df:
        return np.full(n, np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def output_length_mismatch(df: pd.DataFrame) -> pd.Series:
    """True where an ok request returned a different number of tokens than forced (ignore_eos ignored)."""
    got = pd.to_numeric(df["output_tokens"], errors="coerce")
    return df["ok"].astype(bool) & got.notna() & (got != df["target_output_tokens"])


def _in_flight(t_send: np.ndarray, t_end: np.ndarray, start: float, end: float) -> tuple[float, float]:
    """Time-weighted mean and max of requests in flight over [start, end)."""
    if not end > start or len(t_send) == 0:
        return float("nan"), float("nan")
    s = np.clip(t_send, start, end)
    e = np.clip(np.where(np.isnan(t_end), end, t_end), start, end)
    keep = e > s
    s, e = s[keep], e[keep]
    if len(s) == 0:
        return 0.0, 0.0
    times = np.concatenate([s, e])
    deltas = np.concatenate([np.ones(len(s)), -np.ones(len(e))])
    order = np.lexsort((deltas, times))  # ends before starts at the same instant
    times, deltas = times[order], deltas[order]
    level = np.cumsum(deltas)
    durations = np.diff(np.append(times, end))
    return float((level * durations).sum() / (end - start)), float(level.max())


#: the columns :func:`level_stats` reads (with those :func:`agentperf_kit.slo.level_intervals` reads)
_STATS_COLUMNS = frozenset(
    (
        "in_window",
        "ok",
        "error",
        "agent",
        "t_send_s",
        "t_end_s",
        "t_scheduled_s",
        "speed_unmeasurable",
        "output_speed_tps",
        "ttft_s",
        "prompt_tokens",
        "cached_prompt_tokens",
        "output_tokens",
    )
)


def level_stats(
    df: pd.DataFrame,
    *,
    window_start_s: float | None = None,
    window_end_s: float | None = None,
    accelerators: int | None = None,
    confidence: float = 0.95,
    speed_percentile: float = 25.0,
    ttft_percentile: float = 95.0,
    ci_method: str = "agent+time",
    failure_policy: str = "miss",
) -> dict[str, Any]:
    """Statistics of one level over its in-window requests (the columns of ``levels.csv``).

    Rates (requests/s, tokens/s) divide by the window length; without window bounds, by the span from
    the first send to the last end of the in-window requests. Prefix-cache hit rate = sum of
    cached_prompt_tokens / sum of prompt_tokens over requests that report both. The percentiles and
    their intervals (``ci_method``, :func:`agentperf_kit.slo.level_intervals`) are over the rows the
    ``failure_policy`` judges; counts, error rate and rates over all in-window rows.
    """
    from .slo import _window, level_intervals, policy_frame

    # only the columns read below: the row filter then copies these, not every column of the level
    df = df[[c for c in df.columns if c in _STATS_COLUMNS]]
    w = _window(df, True)
    n = len(w)
    ok = w["ok"].to_numpy(dtype=bool)
    if window_start_s is None or window_end_s is None:
        window_start_s = float(w["t_send_s"].min()) if n else float("nan")
        window_end_s = float(w["t_end_s"].max()) if n else float("nan")
    length = window_end_s - window_start_s
    judged = policy_frame(w, failure_policy)
    speed = sorted_sample(judged["output_speed_tps"].to_numpy(dtype=float))
    ttft = sorted_sample(judged["ttft_s"].to_numpy(dtype=float))
    win = (window_start_s, window_end_s)
    s_ci = level_intervals(
        judged, "output_speed_tps", speed_percentile, method=ci_method, window=win, confidence=confidence
    )
    t_ci = level_intervals(
        judged, "ttft_s", ttft_percentile, method=ci_method, window=win, confidence=confidence
    )
    unmeasured = judged["speed_unmeasurable"].astype(bool) if "speed_unmeasurable" in judged else None
    cancelled = (w["error"].astype("string") == "cancelled_at_end").fillna(False) if "error" in w else None
    mean_fl, max_fl = _in_flight(
        w["t_send_s"].to_numpy(dtype=float), w["t_end_s"].to_numpy(dtype=float), window_start_s, window_end_s
    )
    prompt = pd.to_numeric(w["prompt_tokens"], errors="coerce")
    cached = pd.to_numeric(w["cached_prompt_tokens"], errors="coerce")
    both = prompt.notna() & cached.notna()
    in_tokens = float(prompt[ok].sum()) if n else 0.0
    out_tokens = float(pd.to_numeric(w["output_tokens"], errors="coerce")[ok].sum()) if n else 0.0
    lag = sorted_sample((w["t_send_s"] - w["t_scheduled_s"]).to_numpy(dtype=float))
    per = accelerators if accelerators else np.nan
    stats = {
        "n_requests": n,
        "n_ok": int(ok.sum()),
        "n_failed": int(n - ok.sum()),
        "error_rate": float(1 - ok.mean()) if n else float("nan"),
        "n_unfinished_at_end": int(cancelled.sum()) if cancelled is not None else 0,
        "n_speed_samples": len(speed),
        "speed_unmeasured_share": float(unmeasured.mean()) if unmeasured is not None and len(judged) else 0.0,
        f"p{speed_percentile:g}_output_speed_tps": s_ci.value,
        f"p{speed_percentile:g}_output_speed_tps_ci_low": s_ci.low,
        f"p{speed_percentile:g}_output_speed_tps_ci_high": s_ci.high,
        f"p{speed_percentile:g}_output_speed_tps_deff": s_ci.deff,
        f"p{ttft_percentile:g}_ttft_s": t_ci.value,
        f"p{ttft_percentile:g}_ttft_s_ci_low": t_ci.low,
        f"p{ttft_percentile:g}_ttft_s_ci_high": t_ci.high,
        f"p{ttft_percentile:g}_ttft_s_deff": t_ci.deff,
        "p50_ttft_s": percentile_sorted(ttft, 50),
        "p50_output_speed_tps": percentile_sorted(speed, 50),
        "mean_in_flight": mean_fl,
        "max_in_flight": max_fl,
        "window_s": length,
        "requests_per_s": n / length if length > 0 else float("nan"),
        "input_tokens_per_s": in_tokens / length if length > 0 else float("nan"),
        "output_tokens_per_s": out_tokens / length if length > 0 else float("nan"),
        "input_tokens_per_s_per_accelerator": in_tokens / length / per if length > 0 else float("nan"),
        "output_tokens_per_s_per_accelerator": out_tokens / length / per if length > 0 else float("nan"),
        "prefix_cache_hit_rate": float(cached[both].sum() / prompt[both].sum())
        if both.any()
        else float("nan"),
        "p95_client_lag_s": percentile_sorted(lag, 95),
    }
    return stats
