"""The per-request table: one row per request, every column declared once with its unit.

Raw columns are what a run records (ids, timestamps from the run's monotonic clock, token counts,
status). Derived columns (``ttft_s``, ``output_speed_tps``, ``in_window``, ``tool_wait_s``...) are computed
from the raw ones by :mod:`agentperf_kit.metrics` when a run is finalized or loaded, so a definition can
change without re-running. All times are seconds since the run's clock origin (recorded in the manifest
with its wall-clock time); a time that did not happen is NaN.

``SCHEMA_VERSION`` changes whenever a column or a manifest/summary field changes meaning; loaders refuse
versions they do not know (see ``docs/schema.md``).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import InputFormatError

__all__ = [
    "DERIVED_COLUMNS",
    "RAW_COLUMNS",
    "REQUEST_COLUMNS",
    "SCHEMA_VERSION",
    "Column",
    "UnknownSchemaVersionError",
    "check_schema_version",
    "json_safe",
    "strict_json_dumps",
]

SCHEMA_VERSION = 1


class UnknownSchemaVersionError(InputFormatError):
    """A saved result has a ``schema_version`` this toolkit does not know."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the per-request table: name, pandas dtype, unit and meaning."""

    name: str
    dtype: str
    unit: str
    description: str
    derived: bool = False


_COLUMNS: tuple[Column, ...] = (
    # --- ids
    Column("run_id", "string", "", "identifier of the run (one level of a sweep is one run)"),
    Column("level", "int64", "", "index of the measured level within a sweep (0 for a single run)"),
    Column("concurrency", "int64", "agents", "N: agents alive at once during the level"),
    Column("agent", "int64", "", "agent index, 0..N-1"),
    Column("trajectory_id", "string", "", "id of the trajectory this turn comes from"),
    Column("phase", "int64", "", "phase index within the trajectory"),
    Column("phase_id", "int64", "", "unique per phase instance within the run (one per random marker)"),
    Column("turn", "int64", "", "turn index within the trajectory"),
    # --- raw timestamps (seconds since the run's clock origin; NaN if it did not happen)
    Column("t_scheduled_s", "float64", "s", "when the agent wanted to send (previous end + tool delay)"),
    Column(
        "t_send_s", "float64", "s", "when the request actually went out; t_send - t_scheduled = client lag"
    ),
    Column("t_first_s", "float64", "s", "first visible delta (content, reasoning or tool call)"),
    Column("t_first_answer_s", "float64", "s", "first non-reasoning visible delta (content or tool call)"),
    Column("t_last_s", "float64", "s", "last visible delta"),
    Column("t_end_s", "float64", "s", "end of the response (stream closed, error or timeout)"),
    # --- token counts
    Column("prompt_tokens", "Int64", "tokens", "usage.prompt_tokens as the server reported it"),
    Column("cached_prompt_tokens", "Int64", "tokens", "usage.prompt_tokens_details.cached_tokens"),
    Column("output_tokens", "Int64", "tokens", "usage.completion_tokens (reasoning included), else deltas"),
    Column("first_chunk_tokens", "Int64", "tokens", "tokens in the first visible chunk, where known"),
    Column("reasoning_tokens", "Int64", "tokens", "reasoning tokens of the output, where reported"),
    Column("target_prompt_tokens", "int64", "tokens", "prompt size the trajectory asked for (marker incl.)"),
    Column("target_output_tokens", "int64", "tokens", "forced output length (max_tokens)"),
    Column("n_chunks", "int64", "chunks", "SSE data events that carried a visible delta"),
    # --- response
    Column("finish_reason", "string", "", "finish_reason of the last choice ('length', 'stop', ...)"),
    Column("has_tool_calls", "bool", "", "the response contained tool-call deltas"),
    Column("tool_delay_s", "float64", "s", "planned tool wait after this turn"),
    Column("ok", "bool", "", "request completed without error"),
    Column("http_status", "Int64", "", "HTTP status (NA when no response)"),
    Column("error", "string", "", "error class (see docs/schema.md), empty when ok"),
    Column("error_detail", "string", "", "error detail (body excerpt, message), secrets removed"),
    Column("retry_after_s", "float64", "s", "the server's Retry-After (429), in seconds; NaN when absent"),
    Column(
        "usage_mismatch",
        "bool",
        "",
        "the server's usage disagrees with what was asked or streamed (see note); speed uses n_chunks",
    ),
    Column("note", "string", "", "why a row's values are flagged or were recorded as invalid; '' when none"),
    # --- derived (metrics.derive_request_metrics)
    Column("ttft_s", "float64", "s", "t_first - t_send; +inf when no token arrived", derived=True),
    Column("ttfo_s", "float64", "s", "t_first_answer - t_send (time to first non-reasoning token)", True),
    Column("e2e_s", "float64", "s", "t_end - t_send", derived=True),
    Column(
        "output_speed_tps",
        "float64",
        "tokens/s",
        "(output_tokens - first-chunk tokens) / (t_last - t_first); 0 if failed; NaN if < 2 tokens or "
        "unmeasurable; unfinished at the end: (tokens seen - 1) / (t_end - t_first)",
        derived=True,
    ),
    Column(
        "speed_unmeasurable",
        "bool",
        "",
        "ok, >= 2 tokens, but all visible output in one chunk/read or none visible: speed NaN",
        derived=True,
    ),
    Column(
        "speed_formula",
        "string",
        "",
        "aa_first_chunk (first_chunk_tokens known) or minus_one; empty when no speed",
        derived=True,
    ),
    Column(
        "tool_wait_s", "float64", "s", "actual wait: next request's t_send - this t_end (same agent)", True
    ),
    Column("in_window", "bool", "", "request belongs to the level's steady window", derived=True),
)

REQUEST_COLUMNS: dict[str, Column] = {c.name: c for c in _COLUMNS}
RAW_COLUMNS: tuple[str, ...] = tuple(c.name for c in _COLUMNS if not c.derived)
DERIVED_COLUMNS: tuple[str, ...] = tuple(c.name for c in _COLUMNS if c.derived)


def check_schema_version(found: Any, *, what: str) -> None:
    """Raise :class:`UnknownSchemaVersionError` unless ``found`` is a schema version this toolkit reads."""
    if found != SCHEMA_VERSION:
        raise UnknownSchemaVersionError(
            f"{what}: schema_version {found!r} is not one this toolkit reads (it reads {SCHEMA_VERSION}); "
            "upgrade agentperf-kit or re-run the measurement with this version"
        )


def json_safe(obj: Any) -> Any:
    """Return a copy of ``obj`` that strict JSON can hold: non-finite floats become None.

    Use beside a ``*_is_inf``/flag field where the difference between +inf and missing matters. numpy
    scalars become Python numbers; tuples become lists.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):  # numpy scalar
        with contextlib.suppress(ValueError, TypeError):
            obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    try:
        import pandas as pd

        if obj is pd.NA or obj is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return obj


def strict_json_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes ``Infinity``/``NaN`` (they become null via :func:`json_safe`)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
