"""Import other tools' per-request exports into our per-request table, to judge them with the same tiers.

Two formats are read (field maps in ``docs/schema.md``, section "Imported results"):

- **AIPerf** ``profile_export.jsonl``: one JSON object per request with ``metadata`` (``request_start_ns``,
  ``request_end_ns`` epoch ns, ``x_correlation_id`` per user session, ``conversation_id``,
  ``turn_index``, ``benchmark_phase``, ``was_cancelled``), ``metrics`` (each ``{"value", "unit"}``:
  ``time_to_first_token``, ``time_to_first_output_token``, ``request_latency``, ``output_sequence_length``,
  ``usage_*`` tokens, ``inter_chunk_latency``...) and ``error`` (``code``, ``type``, ``message``, or null).
- **vLLM** ``vllm bench serve --save-result --save-detailed`` JSON: one object with per-request lists
  ``input_lens``, ``output_lens``, ``ttfts`` (s), ``itls`` (list of s per request), ``errors`` and, in
  recent versions, ``start_times`` (s, the client's ``perf_counter``).

What the formats cannot give is left missing (NA/NaN), never invented: neither records the schedule (client
lag), the forced output length, the finish reason or tool calls; vLLM's detailed file has no cached or
reasoning tokens and no end time of a failed request. Imported runs are not closed-loop agent runs: they
never meet AA's validity rules, and the manifest says why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputFormatError
from .results import RunResult, finalize_run, toolkit_provenance

__all__ = ["FORMATS", "ImportFormatError", "import_aiperf", "import_results", "import_vllm_bench"]

FORMATS = ("aiperf", "vllm-bench")

_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}


class ImportFormatError(InputFormatError):
    """An external results file does not have the shape its format promises (file, line, field named)."""


# -- AIPerf -------------------------------------------------------------------------------------------------


def _metric(metrics: dict[str, Any], name: str, where: str) -> Any:
    m = metrics.get(name)
    if m is None:
        return None
    if isinstance(m, dict):
        return m.get("value")
    raise ImportFormatError(f"{where}: metrics.{name} should be an object {{value, unit}}, got {m!r}")


def _seconds(metrics: dict[str, Any], name: str, where: str) -> float:
    m = metrics.get(name)
    if m is None:
        return math.nan
    value = _metric(metrics, name, where)
    unit = m.get("unit", "ms")
    if unit not in _TIME_UNITS:
        raise ImportFormatError(
            f"{where}: metrics.{name} has unit {unit!r}; expected one of {', '.join(_TIME_UNITS)}"
        )
    try:
        return float(value) * _TIME_UNITS[unit]
    except (TypeError, ValueError):
        raise ImportFormatError(f"{where}: metrics.{name}.value must be a number, got {value!r}") from None


def _count(metrics: dict[str, Any], *names: str, where: str) -> int | None:
    for name in names:
        v = _metric(metrics, name, where)
        if v is not None:
            try:
                return int(v)
            except (TypeError, ValueError):
                raise ImportFormatError(
                    f"{where}: metrics.{name}.value must be an integer, got {v!r}"
                ) from None
    return None


def import_aiperf(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read an AIPerf ``profile_export.jsonl`` into raw per-request rows (our raw columns).

    Returns ``(raw, info)``; ``info`` holds the window (the profiling phase) and notes on missing fields.
    Times: ``t_send_s`` = (request_start_ns - earliest request_start_ns) / 1e9; ``t_first_s`` = t_send +
    time_to_first_token; ``t_last_s`` = t_send + request_latency (AIPerf's ITL and per-user throughput use
    the same span, so our output speed equals its ``output_token_throughput_per_user``); ``t_end_s`` from
    request_end_ns. Tokens prefer the server's ``usage_*`` fields over AIPerf's client-side tokenizer counts.
    """
    path = Path(path)
    records = []
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read: {exc}") from exc
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImportFormatError(
                    f"{where}: not JSON ({exc.msg}); is this AIPerf's profile_export.jsonl?"
                ) from None
            if not isinstance(rec, dict) or not isinstance(rec.get("metadata"), dict):
                raise ImportFormatError(
                    f"{where}: no 'metadata' object; AIPerf per-record lines look like "
                    '{"metadata": {...}, "metrics": {...}, "error": null} (profile_export.jsonl, not '
                    "profile_export_aiperf.json)"
                )
            records.append(_aiperf_row(rec, where))
    if not records:
        raise ImportFormatError(f"{path}: no records")
    raw = pd.DataFrame(records)
    phases = raw.pop("_phase_name")
    start_ns = raw.pop("_start_ns")
    end_ns = raw.pop("_end_ns")
    latency = raw.pop("_latency_s")
    origin = start_ns.min()
    t_send = (start_ns - origin) / 1e9
    raw["t_send_s"] = t_send
    raw["t_scheduled_s"] = np.nan  # AIPerf does not record when a request was due
    for col in ("t_first_s", "t_first_answer_s", "t_last_s"):
        raw[col] = t_send + raw[col]
    raw["t_end_s"] = np.where(end_ns.notna(), (end_ns - origin) / 1e9, t_send + latency)
    profiling = phases == "profiling"
    prof = t_send[profiling] if profiling.any() else t_send
    info = {
        "window_start_s": float(prof.min()),
        "window_end_s": float(np.nextafter(prof.max(), np.inf)),
        "phases": sorted(set(phases)),
        "missing": [
            "t_scheduled_s (no schedule: client lag unknown)",
            "target_prompt_tokens/target_output_tokens (the requested lengths are in inputs.json, not read)",
            "finish_reason, has_tool_calls (not exported per record)",
            "http_status of successful requests (only errors carry a code)",
        ],
    }
    return raw, info


def _aiperf_row(rec: dict[str, Any], where: str) -> dict[str, Any]:
    md = rec["metadata"]
    metrics = rec.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ImportFormatError(f"{where}: 'metrics' should be an object, got {type(metrics).__name__}")
    start = md.get("request_start_ns")
    if not isinstance(start, int):
        raise ImportFormatError(
            f"{where}: metadata.request_start_ns must be an integer (epoch ns), got {start!r}"
        )
    error = rec.get("error")
    cancelled = bool(md.get("was_cancelled"))
    ok = error is None and not cancelled
    ttft = _seconds(metrics, "time_to_first_token", where)
    ttfo = _seconds(metrics, "time_to_first_output_token", where)
    latency = _seconds(metrics, "request_latency", where)
    reasoning = _count(metrics, "usage_reasoning_tokens", "reasoning_token_count", where=where)
    if math.isnan(ttfo) and not math.isnan(ttft) and not reasoning:
        ttfo = ttft  # no reasoning: the first token is the first answer token (AIPerf: TTFO == TTFT)
    output = _count(metrics, "usage_completion_tokens", "output_sequence_length", where=where)
    prompt = _count(metrics, "usage_prompt_tokens", "input_sequence_length", "error_isl", where=where)
    chunks = _metric(metrics, "inter_chunk_latency", where)
    n_chunks = len(chunks) + 1 if isinstance(chunks, list) else (1 if not math.isnan(ttft) else 0)
    end = md.get("request_end_ns")
    err_type = (error or {}).get("type") if isinstance(error, dict) else None
    return {
        "_start_ns": start,
        "_end_ns": end if isinstance(end, int) else np.nan,
        "_latency_s": latency,
        "_phase_name": str(md.get("benchmark_phase") or "profiling"),
        "session": str(md.get("x_correlation_id") or md.get("session_num", "")),
        "trajectory_id": str(md.get("conversation_id") or ""),
        "turn": int(md.get("turn_index") or 0),
        "t_first_s": ttft,
        "t_first_answer_s": ttfo,
        "t_last_s": latency if ok else (latency if not math.isnan(ttft) else math.nan),
        "prompt_tokens": prompt,
        "cached_prompt_tokens": _count(metrics, "usage_prompt_cache_read_tokens", where=where),
        "output_tokens": output,
        "first_chunk_tokens": None,
        "reasoning_tokens": reasoning,
        "n_chunks": n_chunks,
        "ok": ok,
        "http_status": (error or {}).get("code") if isinstance(error, dict) else None,
        "error": "" if ok else f"aiperf:{err_type or ('cancelled' if cancelled else 'error')}",
        "error_detail": "" if ok else str((error or {}).get("message", ""))[:500],
    }


# -- vLLM bench serve ---------------------------------------------------------------------------------------


def import_vllm_bench(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a ``vllm bench serve --save-result --save-detailed`` JSON into raw per-request rows.

    ``t_send_s`` = start_times - min(start_times) (without ``start_times``, older versions, every request
    is placed at 0 and rates/in-flight are meaningless: a note says so); ``t_first_s`` = t_send + ttft;
    ``t_last_s`` = t_first + sum(itls) (vLLM appends one gap per streamed chunk); ``t_end_s`` = t_last
    (the end of a stream is not saved); a failed request with no ttft and no itls got no token.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ImportFormatError(f"{path}: expected a JSON object (vllm bench serve's result file)")
    needed = ("input_lens", "output_lens", "ttfts", "itls", "errors")
    missing = [k for k in needed if k not in data]
    if missing:
        raise ImportFormatError(
            f"{path}: no {', '.join(repr(k) for k in missing)}; write the file with "
            "`vllm bench serve ... --save-result --save-detailed`"
        )
    n = len(data["ttfts"])
    for k in (*needed, "start_times"):
        if k in data and len(data[k]) != n:
            raise ImportFormatError(f"{path}: '{k}' has {len(data[k])} entries but 'ttfts' has {n}")
    notes = []
    starts = data.get("start_times")
    if starts is None:
        starts = [0.0] * n
        notes.append("no start_times (older vLLM): requests are not placed in time; rates are meaningless")
    t0 = min(starts) if n else 0.0
    rows = []
    for i in range(n):
        where = f"{path} request {i}"
        err = data["errors"][i] or ""
        itls = data["itls"][i] or []
        ttft = data["ttfts"][i]
        try:
            ttft = float(ttft) if ttft is not None else math.nan
            gaps = float(sum(float(x) for x in itls))
            t_send = float(starts[i]) - t0
        except (TypeError, ValueError):
            raise ImportFormatError(f"{where}: ttfts/itls/start_times must be numbers") from None
        ok = not err
        got_token = ok or (ttft > 0 or len(itls) > 0)  # vLLM leaves ttft at 0.0 when nothing arrived
        t_first = t_send + ttft if got_token and not math.isnan(ttft) else math.nan
        t_last = t_first + gaps
        out_len = data["output_lens"][i]
        rows.append(
            {
                "session": str(i),
                "trajectory_id": str(i),
                "turn": 0,
                "t_send_s": t_send,
                "t_scheduled_s": math.nan,
                "t_first_s": t_first,
                "t_first_answer_s": math.nan,
                "t_last_s": t_last,
                "t_end_s": t_last if ok else math.nan,
                "prompt_tokens": data["input_lens"][i],
                "cached_prompt_tokens": None,
                "output_tokens": out_len if ok else None,
                "first_chunk_tokens": None,
                "reasoning_tokens": None,
                "n_chunks": len(itls) + 1 if not math.isnan(t_first) else 0,
                "ok": ok,
                "http_status": None,
                "error": "" if ok else "vllm-bench:error",
                "error_detail": str(err)[:500],
            }
        )
    raw = pd.DataFrame(rows)
    if not n:
        raise ImportFormatError(f"{path}: no requests")
    info = {
        "window_start_s": 0.0,
        "window_end_s": float(np.nextafter(raw["t_send_s"].max(), np.inf)),
        "max_concurrency": data.get("max_concurrency"),
        "model": data.get("model_id"),
        "notes": notes,
        "missing": [
            "t_scheduled_s (no schedule: client lag unknown)",
            "t_first_answer_s/ttfo_s (reasoning and answer tokens are not told apart)",
            "cached_prompt_tokens, reasoning_tokens (no usage details saved)",
            "t_end_s of failed requests; http_status; finish_reason; has_tool_calls",
            "agent/session ids (vLLM bench sends independent requests)",
        ],
    }
    return raw, info


# -- both ---------------------------------------------------------------------------------------------------


def import_results(
    path: str | Path,
    source: str,
    out_dir: str | Path,
    *,
    concurrency: int | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Import ``path`` (format ``source``: ``aiperf`` or ``vllm-bench``) into a run directory ``out_dir``
    (``requests.parquet`` + ``manifest.json``, readable by :func:`agentperf_kit.results.load_run`).

    ``concurrency`` (N) is taken from the argument, else from the file where it records one (vLLM's
    ``max_concurrency``), else estimated as the largest number of requests in flight (noted).
    """
    if source not in FORMATS:
        raise ImportFormatError(f"unknown format {source!r}; known: {', '.join(FORMATS)}")
    raw, info = import_aiperf(path) if source == "aiperf" else import_vllm_bench(path)
    notes = list(info.get("notes", []))
    n = concurrency or info.get("max_concurrency")
    if not n:
        n = _max_in_flight(raw)
        notes.append(f"concurrency not given: estimated as the most requests in flight ({n})")
    sessions = raw.pop("session")
    raw["agent"] = pd.factorize(sessions)[0].astype("int64")
    raw["phase"] = 0
    raw["phase_id"] = raw["agent"]
    raw["run_id"] = run_id or Path(out_dir).name
    raw["level"] = 0
    raw["concurrency"] = int(n)
    raw["target_prompt_tokens"] = pd.array([pd.NA] * len(raw), dtype="Int64")
    raw["target_output_tokens"] = pd.array([pd.NA] * len(raw), dtype="Int64")
    raw["finish_reason"] = pd.NA
    raw["has_tool_calls"] = False
    raw["tool_delay_s"] = np.nan
    raw["retry_after_s"] = np.nan
    raw["usage_mismatch"] = False
    raw["note"] = ""
    for col in (
        "prompt_tokens",
        "cached_prompt_tokens",
        "output_tokens",
        "first_chunk_tokens",
        "reasoning_tokens",
        "http_status",
    ):
        raw[col] = pd.to_numeric(raw[col], errors="coerce").astype("Int64")
    raw["n_chunks"] = raw["n_chunks"].astype("int64")
    window = {
        "window_start_s": info["window_start_s"],
        "window_end_s": info["window_end_s"],
        "window_s": info["window_end_s"] - info["window_start_s"],
        "meets_aa_rules": False,
        "aa_rules_reasons": [f"imported from {source}: not a closed-loop agent run with a steady window"],
    }
    manifest = {
        "kind": "agentperf-import",
        "run_id": raw["run_id"].iloc[0],
        "level": 0,
        **toolkit_provenance(),
        "source": {"format": source, "file": str(Path(path).resolve()), "phases": info.get("phases")},
        "config": {"concurrency": int(n), "model": info.get("model")},
        "window": window,
        "meets_aa_rules": False,
        "client_ok": True,
        "power_w": None,
        "power_scope": None,
        "missing_fields": info["missing"],
        "notes": notes,
    }
    return finalize_run(out_dir, manifest, raw=raw)


def _max_in_flight(raw: pd.DataFrame) -> int:
    s = raw["t_send_s"].to_numpy(dtype=float)
    e = raw["t_end_s"].to_numpy(dtype=float)
    e = np.where(np.isnan(e), s, e)
    times = np.concatenate([s, e])
    deltas = np.concatenate([np.ones(len(s)), -np.ones(len(e))])
    order = np.lexsort((deltas, times))
    return max(1, int(np.cumsum(deltas[order]).max()))
