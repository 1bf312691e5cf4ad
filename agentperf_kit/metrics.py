"""Per-request metrics derived from raw timestamps, and per-level statistics.

Definitions (METHODOLOGY.md section 3); all times in seconds on the run's monotonic clock:

- ``ttft_s`` = t_first - t_send, where t_first is the first *visible* delta (content, reasoning or a tool
  call). A request with no visible token (failed, or empty) has TTFT = +inf: it counts as a miss.
- ``ttfo_s`` = t_first_answer - t_send: time to the first non-reasoning visible delta (content or tool
  call). NaN when the response never produced one (reasoning only) and +inf when it failed before any
  visible token. For an answer made only of tool calls, the first tool-call delta is the first answer.
- ``e2e_s`` = t_end - t_send.
- ``output_speed_tps`` = (output_tokens - 1) / (t_last - t_first) with output_tokens from the server's
  ``usage.completion_tokens`` (reasoning included), or the visible chunks streamed (``n_chunks``) where
  the row's ``usage_mismatch`` says the server's usage is not to be trusted (docs/replay.md). NaN for a
  successful request with fewer than 2 output tokens (no speed: excluded from speed percentiles, still
  counted in TTFT). When all tokens arrive in one chunk (t_last == t_first) the speed is +inf (the tokens
  came faster than the clock can tell). A request that did not finish ok has speed 0 (a miss), unless the
  failure policy says otherwise.

A server that ignored ``ignore_eos`` returns fewer tokens than asked: see :func:`output_length_mismatch`;
its speed is still computed from what it returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .percentiles import percentile_ci_sorted, percentile_sorted, sorted_sample

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
    """Copy of a raw per-request frame with ``ttft_s, ttfo_s, e2e_s, output_speed_tps`` added.

    ``failed_speed`` is the speed given to a request that did not finish ok (default 0: a miss; use NaN to
    exclude failures from speed percentiles instead).
    """
    out = df.copy()
    t_send = out["t_send_s"].to_numpy(dtype=float)
    t_first = out["t_first_s"].to_numpy(dtype=float)
    t_first_answer = out["t_first_answer_s"].to_numpy(dtype=float)
    t_last = out["t_last_s"].to_numpy(dtype=float)
    t_end = out["t_end_s"].to_numpy(dtype=float)
    ok = out["ok"].to_numpy(dtype=bool)
    tokens = pd.to_numeric(out["output_tokens"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if "usage_mismatch" in out:  # the server's usage is not to be trusted: count what was streamed
        flagged = out["usage_mismatch"].fillna(False).to_numpy(dtype=bool)
        tokens = np.where(flagged, out["n_chunks"].to_numpy(dtype=float), tokens)

    no_token = np.isnan(t_first)
    ttft = np.where(no_token, np.inf, t_first - t_send)
    ttfo = np.where(np.isnan(t_first_answer), np.where(no_token, np.inf, np.nan), t_first_answer - t_send)
    with np.errstate(divide="ignore", invalid="ignore"):
        span = t_last - t_first
        speed = (tokens - 1.0) / span
    speed = np.where(span == 0, np.inf, speed)
    speed = np.where(tokens < 2, np.nan, speed)
    speed = np.where(np.isnan(tokens) & ok, np.nan, speed)
    speed = np.where(ok, speed, failed_speed)
    out["ttft_s"] = ttft
    out["ttfo_s"] = ttfo
    out["e2e_s"] = t_end - t_send
    out["output_speed_tps"] = speed
    return out


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


def level_stats(
    df: pd.DataFrame,
    *,
    window_start_s: float | None = None,
    window_end_s: float | None = None,
    accelerators: int | None = None,
    confidence: float = 0.95,
    speed_percentile: float = 25.0,
    ttft_percentile: float = 95.0,
) -> dict[str, Any]:
    """Statistics of one level over its in-window requests (the columns of ``levels.csv``).

    Rates (requests/s, tokens/s) divide by the window length; without window bounds, by the span from
    the first send to the last end of the in-window requests. Prefix-cache hit rate = sum of
    cached_prompt_tokens / sum of prompt_tokens over requests that report both.
    """
    w = df[df["in_window"].astype(bool)] if "in_window" in df else df
    n = len(w)
    ok = w["ok"].to_numpy(dtype=bool)
    if window_start_s is None or window_end_s is None:
        window_start_s = float(w["t_send_s"].min()) if n else float("nan")
        window_end_s = float(w["t_end_s"].max()) if n else float("nan")
    length = window_end_s - window_start_s
    speed = sorted_sample(w["output_speed_tps"].to_numpy(dtype=float))
    ttft = sorted_sample(w["ttft_s"].to_numpy(dtype=float))
    s_lo, s_hi = percentile_ci_sorted(speed, speed_percentile, confidence) if len(speed) else (np.nan, np.nan)
    t_lo, t_hi = percentile_ci_sorted(ttft, ttft_percentile, confidence) if len(ttft) else (np.nan, np.nan)
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
        "n_speed_samples": len(speed),
        f"p{speed_percentile:g}_output_speed_tps": percentile_sorted(speed, speed_percentile),
        f"p{speed_percentile:g}_output_speed_tps_ci_low": s_lo,
        f"p{speed_percentile:g}_output_speed_tps_ci_high": s_hi,
        f"p{ttft_percentile:g}_ttft_s": percentile_sorted(ttft, ttft_percentile),
        f"p{ttft_percentile:g}_ttft_s_ci_low": t_lo,
        f"p{ttft_percentile:g}_ttft_s_ci_high": t_hi,
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
