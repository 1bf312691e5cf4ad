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
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from ._compiled import core_status
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
    "read_parquet_rows",
    "read_requests_file",
    "run_manifest",
    "toolkit_provenance",
    "window_manifest",
    "with_worker_column",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
REQUESTS_NAME = "requests.parquet"
CHUNKS_NAME = "chunks.parquet"


class RunResult:
    """What a run (live or simulated) returns: the tidy per-request table and its manifest.

    Attributes:
        requests: one row per request, columns of :data:`agentperf_kit.schema.REQUEST_COLUMNS`. A saved
            run may hold it on disk only (a big simulated level, :func:`load_run`): it is then read from
            ``directory/requests.parquet`` on first use; :meth:`read_requests` reads only some columns.
        manifest: configuration, provenance, window and validity (JSON-safe dict).
        directory: where it was saved, or None for an in-memory run.
        extra: what a loader adds (``interrupted``: True for the rows an interrupted run left).
    """

    def __init__(
        self,
        requests: pd.DataFrame | None,
        manifest: dict[str, Any],
        directory: str | os.PathLike | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if requests is None and directory is None:
            raise ValueError("RunResult: requests=None needs the directory whose requests.parquet holds them")
        self._requests = requests
        self.manifest = manifest
        self.directory = Path(directory) if directory is not None else None
        self.extra = {} if extra is None else extra

    @property
    def requests(self) -> pd.DataFrame:
        if self._requests is None:
            assert self.directory is not None
            self._requests = read_requests_file(self.directory / REQUESTS_NAME)
        return self._requests

    @requests.setter
    def requests(self, df: pd.DataFrame) -> None:
        self._requests = df

    def read_requests(
        self, columns: Collection[str] | None = None, *, in_window_only: bool = False
    ) -> pd.DataFrame:
        """The table, or only the ``columns`` it has (in the table's order), and with ``in_window_only``
        only the rows of the steady window (``in_window``; what a level is judged on). From memory when
        the table is loaded, else read from ``requests.parquet`` a row group at a time, without loading
        (nor keeping) the rest: e.g. the columns a sweep judges, a small part of a level of millions of
        requests. The index is a fresh range when rows are left out."""
        if self._requests is not None or (columns is None and not in_window_only):
            df = self.requests
            if columns is not None:
                df = df[[c for c in df.columns if c in set(columns)]]
            if in_window_only and "in_window" in df:
                df = df[df["in_window"].astype(bool).to_numpy()].reset_index(drop=True)
            return df
        assert self.directory is not None
        return read_parquet_rows(
            self.directory / REQUESTS_NAME, columns, where="in_window" if in_window_only else None
        )

    @property
    def window(self) -> dict[str, Any]:
        """The manifest's ``window`` section (bounds, counts, ``meets_aa_rules`` and reasons)."""
        return self.manifest.get("window", {})

    def __repr__(self) -> str:
        rows = "on disk" if self._requests is None else f"{len(self._requests):,} requests"
        return (
            f"<RunResult {self.manifest.get('run_id')!r} level {self.manifest.get('level')}: {rows}; "
            f"{self.directory}>"
        )


def toolkit_provenance() -> dict[str, Any]:
    """Toolkit version, when run from a git checkout its commit, and whether the simulator's core ran
    compiled (``simulator_core``: :func:`agentperf_kit._compiled.core_status`; the results are the same)."""
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
    return {"toolkit_version": __version__, "toolkit_commit": commit, "simulator_core": core_status()}


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
    load: bool = True,
    simulated: bool = False,
) -> RunResult:
    """Finish a run directory: tidy ``requests.parquet`` + final ``manifest.json``.

    ``manifest["window"]`` must hold ``window_start_s`` and ``window_end_s`` (as
    :meth:`AgentFleet.window_summary` returns them). ``raw`` defaults to the rows in the directory.
    ``load=False`` (rows from the directory only): the table is written a chunk at a time and never held
    whole (memory: ~24 bytes per row and one chunk; what a simulated level of millions of requests uses),
    and the result reads it from disk on first use (:class:`RunResult`); the file is the same.
    ``simulated``: a virtual-time level (:func:`~agentperf_kit.sim.virtual.run_sim_level`); its file does
    not store the :data:`ALIAS_CANDIDATES` that equal their column in every row (a live run's file stores
    every base column, so files of live runs always have the same columns; docs/schema.md).
    """
    directory = Path(directory)
    window = manifest.get("window", {})
    start = window.get("window_start_s", float("nan"))
    end = window.get("window_end_s", float("nan"))
    final = json.loads(strict_json_dumps(manifest))
    if raw is None and not load:
        write_manifest(directory, manifest)
        tmp = directory / (REQUESTS_NAME + ".tmp")
        if _finalize_stream(directory, start, end, tmp, alias=simulated):
            os.replace(tmp, directory / REQUESTS_NAME)  # atomic: a parquet that exists is complete
            return RunResult(None, final, directory)
        # not one run's rows (never a driver's own level): the whole-frame path
    if raw is None:
        raw = read_raw_rows(directory, names=(RAW_PARTS_NAME,))  # this run's rows only
    df = finalize_frame(raw, start, end)
    write_manifest(directory, manifest)
    tmp = directory / (REQUESTS_NAME + ".tmp")
    write_parquet_chunked(df, tmp, derive_on_read=True, alias=simulated)
    os.replace(tmp, directory / REQUESTS_NAME)  # atomic: a parquet that exists is complete
    return RunResult(df, final, directory)


#: rows converted to Arrow and written at a time by :func:`write_parquet_chunked` and the streaming
#: finalize (one row group each): what finalizing holds beside the ~24 bytes a row of its first pass
PARQUET_CHUNK_ROWS = 1 << 16

#: float columns written with Parquet's BYTE_STREAM_SPLIT encoding (no dictionary): times and derived
#: metrics whose values rarely repeat. The others keep dictionary encoding, which a simulated level's
#: end times (engine step boundaries), token counts and ids compress well with. Every column is zstd
#: compressed (level 1); values are unchanged (float64 kept: microseconds over hours need it).
SPLIT_FLOAT_COLUMNS = (
    "t_scheduled_s",
    "t_send_s",
    "t_first_answer_s",
    "ttft_s",
    "ttfo_s",
    "e2e_s",
    "output_speed_tps",
)


#: columns of the request table that are functions of the row's own other columns
#: (:func:`agentperf_kit.metrics.add_request_metrics`, default ``failed_speed``). A ``requests.parquet``
#: written by :func:`finalize_run` does not store them (~26 of a simulated level's ~70 bytes a request);
#: :func:`read_requests_file`, :func:`read_parquet_rows`, :func:`load_run` and :class:`RunResult` compute
#: them from the stored columns a row group at a time, so the frame is the one finalized, bit for bit.
#: ``in_window`` (bounds from the manifest) and ``tool_wait_s`` (across an agent's rows) stay stored.
DERIVED_ON_READ = ("ttft_s", "ttfo_s", "e2e_s", "output_speed_tps", "speed_unmeasurable", "speed_formula")

#: the stored columns :func:`agentperf_kit.metrics.add_request_metrics` reads (the first six it needs)
_METRIC_INPUTS = (
    "t_send_s",
    "t_first_s",
    "t_first_answer_s",
    "t_last_s",
    "t_end_s",
    "ok",
    "output_tokens",
    "first_chunk_tokens",
    "n_chunks",
    "usage_mismatch",
    "error",
)

#: columns that often equal another column in every row of a simulated level (it sends when it
#: schedules: ``t_scheduled_s`` = ``t_send_s``; without cancelled rows also the last token and the end,
#: and the counts): in a simulated level's file (``finalize_run(simulated=True)``), where they do, bit for
#: bit, the file stores the other column only and the reader copies it (with the column's own dtype); a
#: candidate that differs in one row is stored. A live run's file stores every one of them, always.
ALIAS_CANDIDATES = {
    "t_scheduled_s": "t_send_s",
    "t_last_s": "t_end_s",
    "prompt_tokens": "target_prompt_tokens",
    "output_tokens": "target_output_tokens",
    "n_chunks": "target_output_tokens",
}

#: key of the parquet schema metadata (JSON) of a file whose :data:`DERIVED_ON_READ` columns are not
#: stored: ``columns`` (the table's columns in order), ``derived`` (those computed on read) and
#: ``aliases`` (column -> [the stored column it equals, its dtype])
LAYOUT_KEY = b"agentperf.requests"


def write_parquet_chunked(
    df: pd.DataFrame, path: str | os.PathLike, *, derive_on_read: bool = False, alias: bool = False
) -> None:
    """``df.to_parquet(path, index=False)`` a row group of :data:`PARQUET_CHUNK_ROWS` at a time, so only
    one chunk is ever held in Arrow form beside the frame (a whole-frame conversion doubles the memory
    of a level of millions of requests). Same columns, types and pandas metadata; more row groups; the
    encoding of :data:`SPLIT_FLOAT_COLUMNS` (zstd, byte-stream split floats). ``derive_on_read``: a
    request table whose :data:`DERIVED_ON_READ` columns are those :func:`finalize_frame` computed; they
    are not stored (:func:`read_requests_file` computes them). ``alias`` (with ``derive_on_read``, a
    simulated level's table): the :data:`ALIAS_CANDIDATES` equal to their column in every row are not
    stored either (the reader copies them)."""
    aliases = _Aliases()
    if derive_on_read and alias:
        aliases.check(df)
    with _ChunkedParquet(path, derive_on_read=derive_on_read, aliases=aliases.found()) as out:
        for start in range(0, max(len(df), 1), PARQUET_CHUNK_ROWS):
            out.write(df.iloc[start : start + PARQUET_CHUNK_ROWS])


class _Aliases:
    """Which :data:`ALIAS_CANDIDATES` equal their other column, bit for bit, in every row seen (frames
    or Arrow record batches, fed by :meth:`check`); an integer column with a missing value never does."""

    def __init__(self) -> None:
        self._same: dict[str, bool] = {}

    def check(self, rows: Any) -> None:
        import numpy as np

        names = list(rows.column_names if hasattr(rows, "column_names") else rows.columns)
        for col, ref in ALIAS_CANDIDATES.items():
            if self._same.get(col, True) and col in names and ref in names:
                a, b = _bits(rows[col]), _bits(rows[ref])
                self._same[col] = a is not None and b is not None and a.dtype == b.dtype
                self._same[col] = self._same[col] and bool(np.array_equal(a, b))
            else:
                self._same[col] = False

    def found(self) -> dict[str, str]:
        return {c: ALIAS_CANDIDATES[c] for c, same in self._same.items() if same}


def _bits(col: Any) -> Any:
    """A column's values as int64 bits (floats by their bit pattern, NaN for a missing float), or None
    when they cannot stand for the column (a missing integer, another type)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_floating(col.type):
            return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False).view(np.int64)
        if pa.types.is_integer(col.type) and not col.null_count:
            return col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return None
    if isinstance(col.dtype, np.dtype) and col.dtype.kind == "f":
        return col.to_numpy().astype(np.float64, copy=False).view(np.int64)
    if pd.api.types.is_integer_dtype(col.dtype) and not col.hasnans:
        return col.to_numpy(dtype=np.int64)
    return None


def _table_columns(columns: Collection[str]) -> list[str]:
    """The finalized table's column order for a frame with ``columns`` and the derived metrics:
    :data:`REQUEST_COLUMNS` order, then the others in their order (what :func:`finalize_frame` makes)."""
    have = set(columns) | set(DERIVED_ON_READ)
    return [c for c in REQUEST_COLUMNS if c in have] + [c for c in columns if c not in REQUEST_COLUMNS]


class _ChunkedParquet:
    """A parquet file written one frame chunk (one row group) at a time, with the first chunk's schema
    and pandas metadata. ``derive_on_read``: request rows (with or without their
    :data:`DERIVED_ON_READ` columns) stored without those, the table's column order in the schema
    metadata (:data:`LAYOUT_KEY`)."""

    def __init__(
        self, path: str | os.PathLike, *, derive_on_read: bool = False, aliases: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self._writer: Any = None
        self._stored: list[str] | None = None
        self._derive = derive_on_read
        self._aliases = aliases or {}

    def write(self, chunk: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._stored is not None:
            chunk = chunk[self._stored]
        if self._writer is None:
            layout = None
            if self._derive and set(_METRIC_INPUTS[:6]) <= set(chunk.columns):
                full = _table_columns(chunk.columns)
                aliases = {c: [r, str(chunk[c].dtype)] for c, r in self._aliases.items() if c in chunk}
                self._stored = [c for c in full if c not in DERIVED_ON_READ and c not in aliases]
                chunk = chunk[self._stored]
                derived = [c for c in full if c in DERIVED_ON_READ]
                layout = json.dumps({"columns": full, "derived": derived, "aliases": aliases}).encode()
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if layout is not None:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), LAYOUT_KEY: layout})
            split = [
                f.name for f in table.schema if f.name in SPLIT_FLOAT_COLUMNS and pa.types.is_floating(f.type)
            ]
            self._writer = pq.ParquetWriter(
                self.path,
                table.schema,
                compression="zstd",
                compression_level=1,
                use_dictionary=[n for n in table.schema.names if n not in split],
                use_byte_stream_split=split or False,
            )
        else:
            table = pa.Table.from_pandas(chunk, preserve_index=False, schema=self._writer.schema)
        self._writer.write_table(table)

    def __enter__(self) -> _ChunkedParquet:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()


def _finalize_stream(
    directory: Path, window_start_s: float, window_end_s: float, path: Path, *, alias: bool = False
) -> bool:
    """``requests.parquet`` (at ``path``) from the run's ``requests.arrow`` without holding the table:
    a first pass keeps each row's agent, send and end times (the tool waits join an agent's rows), a
    second adds ``in_window`` and ``tool_wait_s`` and writes :data:`PARQUET_CHUNK_ROWS` rows at a time
    (the :data:`DERIVED_ON_READ` metrics are computed when read). Read back, the same frame as
    :func:`finalize_frame` of all the rows (``tests/test_finalize_memory.py``). False (nothing written)
    when the rows are not one run's (one ``run_id`` and ``level``, every agent known) or there are none.
    ``alias``: a simulated level's rows (:data:`ALIAS_CANDIDATES` equal to their column not stored)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from .agents import in_window_mask, one_run_tool_wait
    from .recorder import RAW_ARROW_SCHEMA, iter_raw_batches, raw_frame

    names = (RAW_PARTS_NAME,)
    agent, send, end = [], [], []
    runs, levels = set(), set()
    aliases = _Aliases()
    for b in iter_raw_batches(directory, names):
        if b.column("agent").null_count:
            return False
        if alias:
            aliases.check(b)
        agent.append(b.column("agent").to_numpy().copy())
        send.append(b.column("t_send_s").to_numpy(zero_copy_only=False).copy())
        end.append(b.column("t_end_s").to_numpy(zero_copy_only=False).copy())
        runs.update(pc.unique(b.column("run_id")).to_pylist())
        levels.update(pc.unique(b.column("level")).to_pylist())
    if not agent or len(runs) != 1 or len(levels) != 1:
        return False
    t_send, t_end = np.concatenate(send), np.concatenate(end)
    del send, end
    wait = one_run_tool_wait(np.concatenate(agent), t_send, t_end)
    del agent
    in_window = in_window_mask(t_send, t_end, window_start_s, window_end_s)
    del t_send, t_end
    done = 0

    def write(batches: list[pa.RecordBatch]) -> None:
        nonlocal done
        df = raw_frame(pa.Table.from_batches(batches, schema=RAW_ARROW_SCHEMA))
        batches.clear()
        n = len(df)
        df["in_window"] = in_window[done : done + n]
        df["tool_wait_s"] = wait[done : done + n]
        out.write(df)  # the derived metrics are computed on read (DERIVED_ON_READ)
        done += n

    pending: list[pa.RecordBatch] = []
    rows = 0
    with _ChunkedParquet(path, derive_on_read=True, aliases=aliases.found()) as out:
        for b in iter_raw_batches(directory, names):
            pending.append(b)
            rows += b.num_rows
            if rows >= PARQUET_CHUNK_ROWS:
                write(pending)
                rows = 0
        if pending:
            write(pending)
    return True


def _layout(schema: Any) -> tuple[list[str], list[str], dict[str, list[str]]] | None:
    """(the table's columns, those computed on read, aliases: column -> [stored column, dtype]) of a
    ``requests.parquet`` whose :data:`DERIVED_ON_READ` columns are not stored; None for a file that
    stores every column (written before that layout, or not a request table)."""
    meta = (schema.metadata or {}).get(LAYOUT_KEY)
    if meta is None:
        return None
    layout = json.loads(meta)
    return list(layout["columns"]), list(layout["derived"]), dict(layout.get("aliases") or {})


def read_requests_file(path: str | os.PathLike, columns: Collection[str] | None = None) -> pd.DataFrame:
    """A run's ``requests.parquet`` as the table it was finalized as (or only the ``columns`` it has, in
    the table's order): the :data:`DERIVED_ON_READ` metrics computed from the stored columns where the
    file does not store them, a row group at a time. Files that store every column (written before) are
    read as they are. Use this (or :func:`load_run`) rather than ``pd.read_parquet`` on the file."""
    import pyarrow.parquet as pq

    if columns is None and _layout(pq.read_schema(path)) is None:
        return pd.read_parquet(path)
    return read_parquet_rows(path, columns)


def read_parquet_rows(
    path: str | os.PathLike,
    columns: Collection[str] | None = None,
    *,
    where: str | None = None,
    agents: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """``pd.read_parquet(path)``'s frame, of the ``columns`` it has only (in the file's order) and, with
    ``where`` (a bool column), of the rows where that column is true, with ``agents`` = (lo, hi) of the
    rows whose ``agent`` is in [lo, hi) (index 0..n-1), read and converted a row group at a time into
    arrays of the final length: the memory is the result's and one row group's, not the file's in Arrow
    beside it nor the parts beside their concatenation. A request table whose :data:`DERIVED_ON_READ`
    columns are not stored gets them (those asked for) computed from its stored columns, row group by
    row group, in the table's column order: the frame that was finalized."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    stored = pf.schema_arrow.names
    layout = _layout(pf.schema_arrow)
    names, derived, aliases = layout if layout is not None else (stored, [], {})
    if where in derived or where in aliases:
        raise ValueError(f"read_parquet_rows: where={where!r} must be a stored bool column of {path}")
    want = set(names if columns is None else columns)
    cols = [c for c in names if c in want or c == where]
    derive = any(c in derived for c in cols)
    needed = set(cols) | (set(_METRIC_INPUTS) if derive else set())
    copies = {c: aliases[c] for c in names if c in aliases and c in needed}  # in the table's order
    needed |= {ref for ref, _ in copies.values()}
    read = [c for c in stored if c in needed]
    groups = range(pf.num_row_groups)
    masks = None
    by = [c for c in (where, "agent" if agents is not None else None) if c in stored]
    if by:  # the rows kept, from those columns alone

        def keep(t: Any) -> Any:
            m = t.column(where) if where in stored else None
            if agents is not None and "agent" in stored:
                a = t.column("agent")
                m2 = pc.and_(pc.greater_equal(a, agents[0]), pc.less(a, agents[1]))
                m = m2 if m is None else pc.and_(m, m2)
            return m

        masks = [keep(pf.read_row_group(i, columns=by)) for i in groups]
        total = sum(int(pc.sum(m).as_py() or 0) for m in masks)
    else:
        total = pf.metadata.num_rows
    flat: dict[str, np.ndarray] = {}  # numpy-typed columns, filled in place
    parts: dict[str, list[pd.Series]] = {}  # extension-typed ones (Int64, string), joined at the end
    pos = 0
    for i in groups:
        t = pf.read_row_group(i, columns=read)
        if masks is not None:
            t = t.filter(masks[i])
            masks[i] = None
        part = t.to_pandas(split_blocks=True, self_destruct=True)
        del t
        _fill_in(part, copies, derive)
        k = len(part)
        for c in cols:
            col = part[c]
            if isinstance(col.dtype, np.dtype):
                if c not in flat:
                    flat[c] = np.empty(total, dtype=col.dtype)
                flat[c][pos : pos + k] = col.to_numpy()
            else:
                parts.setdefault(c, []).append(col)
        pos += k
        del part
    if not cols or not groups:
        part = pf.schema_arrow.empty_table().select(read).to_pandas()
        df = _fill_in(part, copies, derive)[cols]
    else:
        data = {c: flat[c] if c in flat else pd.concat(parts.pop(c), ignore_index=True).array for c in cols}
        df = pd.DataFrame(data, index=pd.RangeIndex(total), copy=False)
    if where is not None and where not in want and where in df:
        df = df.drop(columns=where)
    return df


def _fill_in(part: pd.DataFrame, copies: dict[str, list[str]], derive: bool) -> pd.DataFrame:
    """The columns a ``requests.parquet`` does not store, added to ``part`` (a row group's stored
    columns): aliases (column -> [the stored column it equals, its dtype]) then, with ``derive``, the
    :data:`DERIVED_ON_READ` metrics. Returns ``part``."""
    from .metrics import add_request_metrics

    for col, (ref, dtype) in copies.items():
        part[col] = part[ref].astype(dtype)
    return add_request_metrics(part) if derive else part


def with_worker_column(raw: pd.DataFrame, workers: int) -> pd.DataFrame:
    """``raw`` with the scale-out column ``worker``: the worker process that ran the row's agent
    (``agent % workers``, docs/scale-out.md)."""
    raw["worker"] = (raw["agent"] % workers).astype("int64")
    return raw


def load_run(directory: str | os.PathLike) -> RunResult:
    """Load a run directory. A finished run gives its ``requests.parquet`` (read on first use of
    ``requests``); an interrupted one (no parquet yet) gives the raw rows it left, finalized with the
    window recorded so far (if any)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.exists():
        raise FileNotFoundError(f"{directory}: no {MANIFEST_NAME}; is this an agentperf run directory?")
    manifest = json.loads(manifest_path.read_text())
    check_schema_version(manifest.get("schema_version"), what=str(manifest_path))
    parquet = directory / REQUESTS_NAME
    if parquet.exists():  # read on first use (RunResult.requests), or only some columns (read_requests)
        return RunResult(None, manifest, directory)
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
