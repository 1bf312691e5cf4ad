"""The on-disk trajectory format: JSONL (optionally gzip-compressed) and Parquet.

JSONL layout (see ``docs/trajectories.md``): the first line is a header object::

    {"kind": "agentperf-trajectories", "schema_version": 1, "source": "synthetic", "meta": {...}}

then one object per turn, in order, turns of a trajectory contiguous::

    {"trajectory_id": "syn-0001", "turn": 0, "phase": 0, "prefix_tokens": 0, "new_tokens": 7012,
     "output_tokens": 212, "reasoning_tokens": 120, "tool_calls": true, "tool_delay_s": 0.84}

Optional per-turn fields: ``messages`` and ``tools`` (recorded OpenAI request parts), ``meta`` (object).
Parquet holds the same per-turn columns (messages/tools as JSON strings) and the header in the file's
key-value metadata under ``agentperf``.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .model import Trajectory, TrajectoryFormatError, Turn

__all__ = [
    "DEFAULT_TRAJECTORIES_PATH",
    "TRAJECTORY_SCHEMA_VERSION",
    "default_trajectories",
    "load_trajectories",
    "save_trajectories",
]

TRAJECTORY_SCHEMA_VERSION = 1
_KIND = "agentperf-trajectories"
DEFAULT_TRAJECTORIES_PATH = Path(__file__).resolve().parent.parent / "data" / "default_trajectories.jsonl.gz"

_INT_FIELDS = ("turn", "phase", "prefix_tokens", "new_tokens", "output_tokens")


def _open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def save_trajectories(
    trajectories: Iterable[Trajectory], path: str | os.PathLike, *, meta: dict[str, Any] | None = None
) -> Path:
    """Write trajectories to ``path`` (``.jsonl``, ``.jsonl.gz`` or ``.parquet``); returns the path."""
    path = Path(path)
    if not (path.suffix == ".parquet" or path.name.endswith((".jsonl", ".jsonl.gz"))):
        raise ConfigError(
            f"path: cannot tell the format of {str(path)!r} from its name; use a name ending in .jsonl, "
            ".jsonl.gz or .parquet"
        )
    trajectories = list(trajectories)
    source = trajectories[0].source if trajectories else "unknown"
    header = {
        "kind": _KIND,
        "schema_version": TRAJECTORY_SCHEMA_VERSION,
        "source": source,
        "meta": meta or {},
    }
    rows = list(_turn_records(trajectories))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        _write_parquet(rows, header, path)
        return path
    if path.suffix == ".gz":
        # no file name and a fixed mtime in the gzip header: the same set always gives the same bytes
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(_jsonl_bytes(header, rows))
    else:
        path.write_bytes(_jsonl_bytes(header, rows))
    return path


# explicit Arrow types: nullable integers stay integers (pandas would turn them into floats)
_PARQUET_TYPES = {
    "trajectory_id": "string",
    "turn": "int64",
    "phase": "int64",
    "prefix_tokens": "int64",
    "new_tokens": "int64",
    "output_tokens": "int64",
    "reasoning_tokens": "int64",
    "tool_calls": "bool_",
    "tool_delay_s": "float64",
    "messages": "string",
    "tools": "string",
    "meta": "string",
}
_JSON_COLUMNS = ("messages", "tools", "meta")


def _write_parquet(rows: list[dict[str, Any]], header: dict[str, Any], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name, type_name in _PARQUET_TYPES.items():
        values = [r.get(name) for r in rows]
        if name in _JSON_COLUMNS:
            values = [None if v is None else json.dumps(v) for v in values]
        columns[name] = pa.array(values, type=getattr(pa, type_name)())
    table = pa.table(columns).replace_schema_metadata({b"agentperf": json.dumps(header).encode()})
    pq.write_table(table, path)


def _jsonl_bytes(header: dict, rows: list[dict]) -> bytes:
    lines = [json.dumps(header, separators=(",", ":"))]
    lines += [json.dumps(r, separators=(",", ":")) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _turn_records(trajectories: list[Trajectory]) -> Iterator[dict[str, Any]]:
    for traj in trajectories:
        for i, t in enumerate(traj.turns):
            rec: dict[str, Any] = {
                "trajectory_id": traj.trajectory_id,
                "turn": i,
                "phase": t.phase,
                "prefix_tokens": t.prefix_tokens,
                "new_tokens": t.new_tokens,
                "output_tokens": t.output_tokens,
                "reasoning_tokens": t.reasoning_tokens,
                "tool_calls": t.tool_calls,
                "tool_delay_s": round(t.tool_delay_s, 6),
            }
            if t.messages is not None:
                rec["messages"] = t.messages
            if t.tools is not None:
                rec["tools"] = t.tools
            if i == 0 and traj.meta:
                rec["meta"] = traj.meta
            yield rec


def load_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    """Load and validate a trajectory file (``.jsonl``, ``.jsonl.gz`` or ``.parquet``).

    Raises:
        TrajectoryFormatError: naming the file, line, field, value and the fix; also for a file that
            cannot be read as a trajectory file at all (a directory, a truncated or corrupt ``.jsonl.gz``
            or ``.parquet``, text that is not UTF-8, no permission).
        FileNotFoundError: when the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    if path.is_dir():
        raise TrajectoryFormatError(
            "is a directory; give a .jsonl, .jsonl.gz or .parquet trajectory file", path=str(path)
        )
    try:
        return _parquet_or_jsonl(path)
    except TrajectoryFormatError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TrajectoryFormatError(
            f"the compressed file is truncated or corrupt ({exc or type(exc).__name__}); write it again "
            "(save_trajectories) or copy it whole",
            path=str(path),
        ) from None
    except UnicodeDecodeError as exc:
        raise TrajectoryFormatError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start}); a trajectory file is UTF-8 JSONL",
            path=str(path),
        ) from None
    except OSError as exc:
        raise TrajectoryFormatError(f"cannot read it ({exc.strerror or exc})", path=str(path)) from None
    except (ValueError, KeyError) as exc:  # e.g. a Parquet file cut short (pyarrow's ArrowInvalid)
        raise TrajectoryFormatError(
            f"cannot read it as {'Parquet' if path.suffix == '.parquet' else 'JSONL'} ({exc}); write it "
            "again with save_trajectories()",
            path=str(path),
        ) from None


def _parquet_or_jsonl(path: Path) -> list[Trajectory]:
    if path.suffix == ".parquet":
        return _load_parquet(path)
    with _open_text(path, "r") as f:
        first = f.readline()
        header = _parse_line(first, path, 1)
        _check_header(header, path)
        return _build(
            ((i, _parse_line(line, path, i)) for i, line in enumerate(f, start=2) if line.strip()),
            path,
            header.get("source", "unknown"),
        )


def _load_parquet(path: Path) -> list[Trajectory]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if b"agentperf" not in meta:
        raise TrajectoryFormatError(
            "no 'agentperf' header in the Parquet metadata; write the file with save_trajectories()",
            path=str(path),
        )
    header = json.loads(meta[b"agentperf"])
    _check_header(header, path)
    records = table.to_pylist()
    for rec in records:
        for col in ("messages", "tools", "meta"):
            if rec.get(col) is not None:
                rec[col] = json.loads(rec[col])
            elif col in rec:
                del rec[col]
    return _build(((i + 1, rec) for i, rec in enumerate(records)), path, header.get("source", "unknown"))


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrajectoryFormatError(
            f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object",
            path=str(path),
            line=lineno,
        ) from exc
    if not isinstance(obj, dict):
        raise TrajectoryFormatError(
            f"expected a JSON object, got {type(obj).__name__}", path=str(path), line=lineno
        )
    return obj


def _check_header(header: dict[str, Any], path: Path) -> None:
    if header.get("kind") != _KIND:
        raise TrajectoryFormatError(
            f'the first line must be the header {{"kind": "{_KIND}", "schema_version": '
            f"{TRAJECTORY_SCHEMA_VERSION}, ...}}, got kind={header.get('kind')!r}; convert other formats "
            "with `agentperf trajectories import`",
            path=str(path),
            line=1,
            field="kind",
            value=header.get("kind"),
        )
    if header.get("schema_version") != TRAJECTORY_SCHEMA_VERSION:
        raise TrajectoryFormatError(
            f"'schema_version' {header.get('schema_version')!r} is not supported (this toolkit reads "
            f"{TRAJECTORY_SCHEMA_VERSION}); upgrade agentperf-kit",
            path=str(path),
            line=1,
            field="schema_version",
            value=header.get("schema_version"),
        )


def _fail(path: Path, line: int, field: str, value: Any, must: str) -> TrajectoryFormatError:
    return TrajectoryFormatError(
        f"{field!r} {must}, got {value!r}", path=str(path), line=line, field=field, value=value
    )


def _build(records: Iterable[tuple[int, dict[str, Any]]], path: Path, source: str) -> list[Trajectory]:
    out: list[Trajectory] = []
    seen: set[str] = set()
    current: Trajectory | None = None
    for line, rec in records:
        tid = rec.get("trajectory_id")
        if not isinstance(tid, str) or not tid:
            raise _fail(path, line, "trajectory_id", tid, "must be a non-empty string")
        for name in _INT_FIELDS:
            v = rec.get(name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise _fail(path, line, name, v, "must be a non-negative integer")
        if rec["output_tokens"] < 1:
            raise _fail(path, line, "output_tokens", rec["output_tokens"], "must be >= 1 (a forced length)")
        rt = rec.get("reasoning_tokens")
        if rt is not None and (
            not isinstance(rt, int) or isinstance(rt, bool) or not 0 <= rt <= rec["output_tokens"]
        ):
            raise _fail(path, line, "reasoning_tokens", rt, "must be null or an integer in 0..output_tokens")
        delay = rec.get("tool_delay_s", 0.0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay < float("inf"):
            raise _fail(path, line, "tool_delay_s", delay, "must be a finite number of seconds >= 0")
        tc = rec.get("tool_calls", False)
        if not isinstance(tc, bool):
            raise _fail(path, line, "tool_calls", tc, "must be true or false")
        for name in ("messages", "tools"):
            v = rec.get(name)
            if v is not None and not (isinstance(v, list) and all(isinstance(m, dict) for m in v)):
                raise _fail(path, line, name, v, "must be a list of JSON objects (OpenAI format) or absent")
        if current is None or current.trajectory_id != tid:
            if tid in seen:
                raise _fail(
                    path,
                    line,
                    "trajectory_id",
                    tid,
                    "must be unique: the turns of a trajectory must be contiguous lines",
                )
            seen.add(tid)
            meta = rec["meta"] if isinstance(rec.get("meta"), dict) else {}
            current = Trajectory(tid, [], source=source, meta=meta)
            out.append(current)
        turns = current.turns
        if rec["turn"] != len(turns):
            raise _fail(
                path, line, "turn", rec["turn"], f"must be {len(turns)} (turns numbered 0, 1, ... in order)"
            )
        phase, prefix = rec["phase"], rec["prefix_tokens"]
        prev = turns[-1] if turns else None
        if prev is not None and phase < prev.phase:
            raise _fail(
                path, line, "phase", phase, f"must not decrease (previous turn is in phase {prev.phase})"
            )
        if prev is None or phase != prev.phase:
            if prefix != 0:
                raise _fail(
                    path,
                    line,
                    "prefix_tokens",
                    prefix,
                    "must be 0 on the first turn of a phase (nothing before it can be reused)",
                )
        elif prefix > prev.input_tokens:
            raise _fail(
                path,
                line,
                "prefix_tokens",
                prefix,
                f"must be <= the previous turn's prompt "
                f"({prev.input_tokens} tokens): only the previous prompt is a reusable prefix",
            )
        turns.append(
            Turn(
                phase=phase,
                prefix_tokens=prefix,
                new_tokens=rec["new_tokens"],
                output_tokens=rec["output_tokens"],
                reasoning_tokens=rt,
                tool_calls=tc,
                tool_delay_s=float(delay),
                messages=rec.get("messages"),
                tools=rec.get("tools"),
            )
        )
    return out


@lru_cache(maxsize=1)
def _default_cached() -> tuple[Trajectory, ...]:
    return tuple(load_trajectories(DEFAULT_TRAJECTORIES_PATH))


def default_trajectories() -> list[Trajectory]:
    """The default synthetic set shipped inside the package (see ``synth.DEFAULT_SEED``)."""
    return list(_default_cached())
