"""Helpers shared by the importers: reading JSON with located errors, sampled tool delays."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path
from typing import Any, TypeGuard

from ..model import TrajectoryFormatError

# the published AA shape of tool delays (docs/trajectories.md), used where a source has none
SAMPLED_DELAY_MEDIAN_S = 1.0
SAMPLED_DELAY_SIGMA = 0.75
SAMPLED_DELAY_RANGE_S = (0.1, 5.0)


def sample_tool_delay(rng: random.Random) -> float:
    """One tool delay in seconds: lognormal, median 1 s, clipped to 0.1-5 s (rounded to 1 ms)."""
    lo, hi = SAMPLED_DELAY_RANGE_S
    value = SAMPLED_DELAY_MEDIAN_S * math.exp(SAMPLED_DELAY_SIGMA * rng.gauss(0.0, 1.0))
    return round(min(hi, max(lo, value)), 3)


def read_json(path: Path) -> Any:
    """Parse a whole JSON file (``.gz`` allowed); a parse error names the file, line and column."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrajectoryFormatError(f"cannot read the file: {exc}", path=str(path)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrajectoryFormatError(
            f"not valid JSON ({exc.msg} at column {exc.colno})", path=str(path), line=exc.lineno
        ) from exc


def iter_jsonl(path: Path):
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (``.gz`` allowed)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TrajectoryFormatError(
                        f"not valid JSON ({exc.msg} at column {exc.colno}); "
                        "each line must be one JSON object",
                        path=str(path),
                        line=lineno,
                    ) from exc
                if not isinstance(obj, dict):
                    raise TrajectoryFormatError(
                        f"expected a JSON object, got {type(obj).__name__}", path=str(path), line=lineno
                    )
                yield lineno, obj
    except (OSError, UnicodeDecodeError) as exc:
        raise TrajectoryFormatError(f"cannot read the file: {exc}", path=str(path)) from exc


def bad(path: Path, line: int | None, field: str, value: Any, must: str) -> TrajectoryFormatError:
    """A located error: ``FILE line N: 'field' must ..., got VALUE``."""
    shown = value if not isinstance(value, str | list | dict) or len(repr(value)) < 80 else "<long value>"
    return TrajectoryFormatError(
        f"{field!r} {must}, got {shown!r}", path=str(path), line=line, field=field, value=value
    )


def is_count(value: Any, minimum: int = 0) -> TypeGuard[int]:
    """True for an int (not bool) >= ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_seconds(value: Any) -> bool:
    """True for a finite non-negative int/float (not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf")
