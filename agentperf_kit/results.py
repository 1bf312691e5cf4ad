"""One measured run (one level) on disk: ``requests.parquet`` + ``manifest.json``.

A run directory holds, while the run goes, ``requests.arrow`` (raw rows, see :mod:`.recorder`) and a
``manifest.json`` written at the start (configuration, seeds, clock origin, target); at the end
:func:`finalize_run` derives the metric columns and writes the tidy ``requests.parquet`` and the final
manifest (with the window and validity). :func:`load_run` reads a finished run, or the raw rows of an
interrupted one. With ``record_chunks``, :func:`finalize_chunks` writes ``chunks.parquet`` from the
``chunks.arrow`` stream and :func:`load_chunks` reads either.

A run reads only the files it wrote (``requests.arrow``, ``chunks.arrow``), never whatever else matches a
pattern in the directory, and :func:`prepare_run_dir` / :func:`check_sweep_dir` refuse an output
directory that holds something else (:class:`~agentperf_kit.errors.OutputError`), so results are never
overwritten or mixed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._version import __version__
from .agents import add_run_columns_inplace
from .errors import OutputError
from .recorder import CHUNKS_PARTS_NAME, RAW_PARTS_NAME, read_chunk_rows, read_raw_rows
from .schema import REQUEST_COLUMNS, SCHEMA_VERSION, check_schema_version, strict_json_dumps

__all__ = [
    "RunResult",
    "check_sweep_dir",
    "config_hash",
    "finalize_chunks",
    "finalize_frame",
    "finalize_run",
    "load_chunks",
    "load_run",
    "prepare_run_dir",
    "run_manifest",
    "toolkit_provenance",
    "window_manifest",
    "with_worker_column",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
REQUESTS_NAME = "requests.parquet"
CHUNKS_NAME = "chunks.parquet"


@dataclass
class RunResult:
    """What a run (live or simulated) returns: the tidy per-request table and its manifest.

    Attributes:
        requests: one row per request, columns of :data:`agentperf_kit.schema.REQUEST_COLUMNS`.
        manifest: configuration, provenance, window and validity (JSON-safe dict).
        directory: where it was saved, or None for an in-memory run.
    """

    requests: pd.DataFrame
    manifest: dict[str, Any]
    directory: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> dict[str, Any]:
        """The manifest's ``window`` section (bounds, counts, ``meets_aa_rules`` and reasons)."""
        return self.manifest.get("window", {})


def toolkit_provenance() -> dict[str, Any]:
    """Toolkit version and, when run from a git checkout, its commit."""
    commit = None
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"toolkit_version": __version__, "toolkit_commit": commit}


def config_hash(config: dict[str, Any]) -> str:
    """16 hex digits of the sha256 of ``config`` as sorted-key JSON: equal for runs configured alike."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_manifest(
    *,
    run_id: str,
    level: int,
    config: dict[str, Any],
    target: dict[str, Any],
    clock: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The manifest every driver (live, simulated, any :class:`~agentperf_kit.targets.Target`) starts a
    run with, with the same keys: ``kind``, ``run_id``, ``level``, toolkit provenance, ``config`` (what
    was measured and how), ``config_hash`` (:func:`config_hash`), ``target`` (``kind`` and what it is),
    ``clock`` (its kind and origin), then ``extra``. The driver adds ``window``, validity and its own
    sections at the end (docs/schema.md)."""
    return {
        "kind": "agentperf-run",
        "run_id": run_id,
        "level": level,
        **toolkit_provenance(),
        "config": config,
        "config_hash": config_hash(config),
        "target": target,
        "clock": clock,
        **extra,
    }


def window_manifest(window: dict[str, Any]) -> dict[str, Any]:
    """The manifest keys every driver sets at the end from :meth:`AgentFleet.window_summary`: ``window``,
    and its ``meets_aa_rules`` and ``aborted_reason`` at the top level."""
    return {
        "window": window,
        "meets_aa_rules": window["meets_aa_rules"],
        "aborted_reason": window["aborted_reason"],
    }


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (strict JSON; ``schema_version`` added if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(strict_json_dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def finalize_frame(raw: pd.DataFrame, window_start_s: float, window_end_s: float) -> pd.DataFrame:
    """Raw rows -> tidy table: derived metrics, ``in_window`` and ``tool_wait_s``, schema column order."""
    from .metrics import add_request_metrics

    # a shallow copy (copy-on-write): the new columns go to it, ``raw`` is left as it was, and no row is
    # copied (a simulated level of millions of requests is held once, not three times)
    df = raw.copy(deep=False)
    add_request_metrics(df)
    add_run_columns_inplace(df, window_start_s, window_end_s)
    cols = [c for c in REQUEST_COLUMNS if c in df.columns]
    extra = [c for c in df.columns if c not in REQUEST_COLUMNS]
    return df[cols + extra].reset_index(drop=True)


def finalize_run(
    directory: str | os.PathLike,
    manifest: dict[str, Any],
    *,
    raw: pd.DataFrame | None = None,
) -> RunResult:
    """Finish a run directory: tidy ``requests.parquet`` + final ``manifest.json``.

    ``manifest["window"]`` must hold ``window_start_s`` and ``window_end_s`` (as
    :meth:`AgentFleet.window_summary` returns them). ``raw`` defaults to the rows in the directory.
    """
    directory = Path(directory)
    if raw is None:
        raw = read_raw_rows(directory, names=(RAW_PARTS_NAME,))  # this run's rows only
    window = manifest.get("window", {})
    df = finalize_frame(
        raw, window.get("window_start_s", float("nan")), window.get("window_end_s", float("nan"))
    )
    write_manifest(directory, manifest)
    tmp = directory / (REQUESTS_NAME + ".tmp")
    write_parquet_chunked(df, tmp)
    os.replace(tmp, directory / REQUESTS_NAME)  # atomic: a parquet that exists is complete
    return RunResult(df, json.loads(strict_json_dumps(manifest)), directory)


#: rows converted to Arrow and written at a time by :func:`write_parquet_chunked` (one row group each)
PARQUET_CHUNK_ROWS = 1 << 18


def write_parquet_chunked(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """``df.to_parquet(path, index=False)`` a row group of :data:`PARQUET_CHUNK_ROWS` at a time, so only
    one chunk is ever held in Arrow form beside the frame (a whole-frame conversion doubles the memory
    of a level of millions of requests). Same columns, types and pandas metadata; more row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(df) <= PARQUET_CHUNK_ROWS:
        df.to_parquet(path, index=False)
        return
    first = pa.Table.from_pandas(df.iloc[:PARQUET_CHUNK_ROWS], preserve_index=False)
    with pq.ParquetWriter(path, first.schema) as writer:
        writer.write_table(first)
        del first
        for start in range(PARQUET_CHUNK_ROWS, len(df), PARQUET_CHUNK_ROWS):
            chunk = df.iloc[start : start + PARQUET_CHUNK_ROWS]
            writer.write_table(pa.Table.from_pandas(chunk, preserve_index=False, schema=writer.schema))


def with_worker_column(raw: pd.DataFrame, workers: int) -> pd.DataFrame:
    """``raw`` with the scale-out column ``worker``: the worker process that ran the row's agent
    (``agent % workers``, docs/scale-out.md)."""
    raw["worker"] = (raw["agent"] % workers).astype("int64")
    return raw


def load_run(directory: str | os.PathLike) -> RunResult:
    """Load a run directory. A finished run gives its ``requests.parquet``; an interrupted one (no
    parquet yet) gives the raw rows it left, finalized with the window recorded so far (if any)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.exists():
        raise FileNotFoundError(f"{directory}: no {MANIFEST_NAME}; is this an agentperf run directory?")
    manifest = json.loads(manifest_path.read_text())
    check_schema_version(manifest.get("schema_version"), what=str(manifest_path))
    parquet = directory / REQUESTS_NAME
    if parquet.exists():
        return RunResult(pd.read_parquet(parquet), manifest, directory)
    window = manifest.get("window") or {}
    start = window.get("window_start_s")
    end = window.get("window_end_s")
    raw = read_raw_rows(directory, names=(RAW_PARTS_NAME,))
    workers = (manifest.get("config") or {}).get("workers")
    if workers is not None:  # a scale-out run (docs/scale-out.md): its rows say which worker ran them
        raw = with_worker_column(raw, int(workers))
    df = finalize_frame(
        raw,
        float("nan") if start is None else start,
        float("nan") if end is None else end,
    )
    return RunResult(df, manifest, directory, extra={"interrupted": True})


def finalize_chunks(directory: str | os.PathLike) -> Path | None:
    """``chunks.arrow`` -> ``chunks.parquet`` (atomic), sorted by request and chunk; None if no stream."""
    directory = Path(directory)
    if not (directory / CHUNKS_PARTS_NAME).exists():
        return None
    df = read_chunk_rows(directory, names=(CHUNKS_PARTS_NAME,)).sort_values(
        ["agent", "phase_id", "turn", "chunk"], kind="stable"
    )
    tmp = directory / (CHUNKS_NAME + ".tmp")
    df.reset_index(drop=True).to_parquet(tmp, index=False)
    os.replace(tmp, directory / CHUNKS_NAME)
    return directory / CHUNKS_NAME


def load_chunks(directory: str | os.PathLike) -> pd.DataFrame:
    """The per-chunk table of a run recorded with ``record_chunks`` (``chunks.parquet``, or the rows an
    interrupted run left in ``chunks.arrow``). Join it to ``requests.parquet`` on
    ``run_id, agent, phase_id, turn``."""
    directory = Path(directory)
    parquet = directory / CHUNKS_NAME
    if parquet.exists():
        return pd.read_parquet(parquet)
    if not (directory / CHUNKS_PARTS_NAME).exists():
        raise FileNotFoundError(f"{directory}: no {CHUNKS_NAME}; record it with run_live(record_chunks=True)")
    return read_chunk_rows(directory, names=(CHUNKS_PARTS_NAME,))


def _check_writable(directory: Path, what: str) -> None:
    """``directory`` (or, when it does not exist yet, its nearest existing parent) is a writable directory."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} {directory}: {probe} is not a directory; choose another output directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {directory}: {probe} is not writable; choose another output directory")


def prepare_run_dir(directory: str | os.PathLike, *, overwrite: bool = False, create: bool = True) -> Path:
    """Check (and with ``create`` make) the output directory of one run.

    A run writes only into a directory that does not exist or is empty. With ``overwrite`` a previous
    *run* directory (one holding an agentperf run's ``manifest.json``) is removed first; a directory
    holding anything else is refused even then, so a typo cannot delete a user's files.

    Raises:
        OutputError: the directory is not empty (and not a replaceable run), is a file, or is not writable.
    """
    directory = Path(directory)
    what = "output directory"
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{what} {directory} is a file; choose a directory")
    entries = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if entries:
        if not overwrite:
            raise OutputError(
                f"{what} {directory} is not empty ({', '.join(entries[:4])}"
                f"{', ...' if len(entries) > 4 else ''}); results are never overwritten: choose a new "
                "directory, or pass overwrite=True (--overwrite) to replace a previous run"
            )
        if not _is_run_dir(directory):
            raise OutputError(
                f"{what} {directory} holds files that are not an agentperf run (no run manifest.json); "
                "refusing to replace it even with overwrite: choose a new directory"
            )
    _check_writable(directory, what)
    if entries and create:
        shutil.rmtree(directory)
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what} {directory}: cannot create it ({exc.strerror or exc})") from exc
    return directory


def _is_run_dir(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("kind", "")).endswith("-run")


#: what a sweep directory holds (``sweep.json`` first); anything else there means it is not only a sweep's
SWEEP_ENTRIES = frozenset(
    {
        "sweep.json",
        "levels",
        "levels.csv",
        "summary.json",
        "requests.parquet",
        "report.html",
        "tasks.csv",
        "tasks.parquet",
        "band",
    }
)


def check_sweep_dir(directory: str | os.PathLike) -> bool:
    """Check the output directory of a sweep before anything is written; True when it holds a sweep
    to resume (whose configuration the caller then compares).

    A sweep writes into a directory that does not exist, is empty, or holds a sweep (``sweep.json``) and
    nothing a sweep does not write (:data:`SWEEP_ENTRIES`, ``*.tmp``).

    Raises:
        OutputError: the directory holds other files, is a file, or is not writable.
    """
    directory = Path(directory)
    what = "sweep output directory"
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{what} {directory} is a file; choose a directory")
    _check_writable(directory, what)
    entries = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if not entries:
        return False
    if "sweep.json" not in entries:
        raise OutputError(
            f"{what} {directory} is not empty and holds no sweep (no sweep.json: "
            f"{', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}); a sweep resumes only its "
            "own directory: choose a new one"
        )
    foreign = [e for e in entries if e not in SWEEP_ENTRIES and not e.endswith(".tmp")]
    if foreign:
        raise OutputError(
            f"{what} {directory} holds files a sweep does not write ({', '.join(foreign[:4])}); refusing "
            "to resume into it: move them, or choose a new directory"
        )
    return True
