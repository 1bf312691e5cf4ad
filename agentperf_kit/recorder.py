"""Incremental, crash-safe storage of raw request rows.

Rows are appended to ``DIR/requests.arrow`` as an Arrow IPC *stream* (record batches one after another,
LZ4-compressed), flushed every ``flush_rows`` rows or ``flush_s`` seconds. A stream can be read back up
to its last complete batch even after the writer was killed (SIGKILL included), which Parquet cannot
offer; at the end of a run :func:`agentperf_kit.results.finalize_run` (or the sweep) writes the tidy
``requests.parquet``.

Cost per row is one tuple append; conversion happens per batch.

**The writer never raises for a value.** A batch that Arrow refuses (an int beyond int64, an object where
a string belongs...) is converted again value by value (:func:`sanitize_row`): a value that does not fit
its column is recorded as invalid (None/NaN; -1 or False in the few non-nullable columns) and the row's
``note`` column says which column held what. **Disk full or an unwritable file** (``OSError``) stops
the writer: :attr:`RunWriter.error` holds a one-line :class:`~agentperf_kit.errors.OutputError`, later
rows are counted in ``rows_lost`` and not written, and :meth:`RunWriter.close` raises that error. The
rows of every batch written before stay readable (:func:`read_raw_rows` stops at a batch cut short).

Opt-in per-chunk times (``run_live(record_chunks=True)``) go the same way to ``DIR/chunks.arrow``
(:class:`ChunkWriter`); :func:`agentperf_kit.results.finalize_chunks` turns them into ``chunks.parquet``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from .errors import OutputError
from .schema import RAW_COLUMNS, REQUEST_COLUMNS

__all__ = [
    "CHUNKS_ARROW_SCHEMA",
    "CHUNKS_PARTS_NAME",
    "RAW_ARROW_SCHEMA",
    "RAW_PARTS_NAME",
    "ChunkWriter",
    "RunWriter",
    "iter_raw_batches",
    "raw_frame",
    "read_chunk_rows",
    "read_raw_rows",
    "sanitize_row",
]

RAW_PARTS_NAME = "requests.arrow"
CHUNKS_PARTS_NAME = "chunks.arrow"

_ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "Int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}
RAW_ARROW_SCHEMA = pa.schema(
    [pa.field(name, _ARROW_TYPES[REQUEST_COLUMNS[name].dtype]) for name in RAW_COLUMNS]
)


_I64 = (-(2**63), 2**63)
_KINDS = tuple(REQUEST_COLUMNS[name].dtype for name in RAW_COLUMNS)
_NOTE = RAW_COLUMNS.index("note")


def _fix(value: Any, kind: str) -> tuple[Any, bool]:
    """``value`` as column type ``kind`` can hold it, and whether it had to be changed."""
    if value is None:
        return value, False
    if kind in ("int64", "Int64"):
        if isinstance(value, int) and not isinstance(value, bool) and _I64[0] <= value < _I64[1]:
            return value, False
        return (None if kind == "Int64" else -1), True
    if kind == "float64":
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value), False
            except OverflowError:
                return math.nan, True
        return math.nan, True
    if kind == "bool":
        return (value, False) if isinstance(value, bool) else (False, True)
    if isinstance(value, str):  # string: also text that Arrow cannot encode (lone surrogates)
        try:
            value.encode("utf-8")
            return value, False
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8"), True
    return None, True


def _describe(value: Any) -> str:
    text = repr(value) if isinstance(value, int | float | bool) else type(value).__name__
    return text if len(text) <= 24 else text[:21] + "..."


def sanitize_row(row: tuple) -> tuple:
    """A raw row whose every value fits its column (see the module docstring); a changed value is named
    in the row's ``note`` (``"invalid: output_tokens=1180591620717411303424"``)."""
    fixed = list(row)
    bad = []
    for i, (value, kind) in enumerate(zip(row, _KINDS)):
        fixed[i], changed = _fix(value, kind)
        if changed:
            bad.append(f"{RAW_COLUMNS[i]}={_describe(value)}")
    if bad:
        note = fixed[_NOTE] or ""
        fixed[_NOTE] = (note + "; " if note else "") + "invalid: " + ", ".join(bad)
    return tuple(fixed)


# record batches are LZ4-compressed: a big simulated level's raw stream is ~3x smaller on disk (81 against
# 235 bytes a row on a GB300 level) for no more CPU (less to write; readers decompress transparently)
_IPC_OPTIONS = ipc.IpcWriteOptions(compression="lz4" if pa.Codec.is_available("lz4") else None)


class _ArrowStreamWriter:
    """Shared life of the append-only Arrow IPC writers: opening (an ``OSError`` becomes a one-line
    :class:`~agentperf_kit.errors.OutputError`), a write failure kept in ``error`` (``_failed``) instead of
    raised mid-run, and ``close``, which flushes, closes (idempotent) and raises ``error`` if there was
    one; ``flush`` is the subclass's. Usable as a context manager."""

    _file: Any
    _writer: Any
    path: Path
    rows_written: int
    error: OutputError | None = None

    def _open(self, directory: Path, path: Path, schema: pa.Schema) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
            self._writer = ipc.new_stream(self._file, schema, options=_IPC_OPTIONS)
        except OSError as exc:
            raise OutputError(
                f"cannot write {path}: {exc.strerror or exc}; choose an out_dir that can be written"
            ) from None

    def _failed(self, exc: OSError) -> None:
        self.error = OutputError(
            f"cannot write {self.path}: {exc.strerror or exc} ({self.rows_written} rows written before are "
            "kept and readable); free space or choose another out_dir"
        )

    def flush(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Flush and close the stream (idempotent); raises :attr:`error` if writing failed."""
        if not self._file.closed:
            self.flush()
            try:
                self._writer.close()
                self._file.close()
            except OSError as exc:
                if self.error is None:
                    self._failed(exc)
                with contextlib.suppress(OSError):
                    self._file.close()
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunWriter(_ArrowStreamWriter):
    """Append raw rows (tuples in ``schema.RAW_COLUMNS`` order) to ``directory/requests.arrow``.

    Use as a context manager or call :meth:`close`. Calling the instance appends one row, so it can be
    passed directly as an :class:`~agentperf_kit.agents.AgentFleet` sink. With ``append=True`` an existing
    stream is kept and new rows are written to a new numbered stream file next to it
    (``requests.1.arrow``...), all of which :func:`read_raw_rows` reads.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        flush_rows: int = 4096,
        flush_s: float = 2.0,
        append: bool = False,
    ) -> None:
        self.directory = Path(directory)
        path = self.directory / RAW_PARTS_NAME
        if append:
            i = 1
            while path.exists():
                path = self.directory / f"requests.{i}.arrow"
                i += 1
        self.path = path
        self._open(self.directory, path, RAW_ARROW_SCHEMA)
        self._rows: list[tuple] = []
        self._flush_rows = flush_rows
        self._flush_s = flush_s
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self.rows_lost = 0
        self.error: OutputError | None = None

    def __call__(self, row: tuple) -> None:
        if self.error is not None:
            self.rows_lost += 1
            return
        rows = self._rows
        rows.append(row)
        if len(rows) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_s:
            self.flush()

    append = __call__

    def flush(self) -> None:
        """Write buffered rows as one record batch and push them to the OS. Never raises: a failure to
        write is kept in :attr:`error` (see the module docstring)."""
        if self.error is not None:
            return
        rows = self._rows
        try:
            if rows:
                batch = _batch(rows)
                self._writer.write_batch(batch)
                self.rows_written += len(rows)
                self._rows = []
            self._file.flush()
        except OSError as exc:
            self.rows_lost += len(rows)
            self._rows = []
            self._failed(exc)
        self._last_flush = time.monotonic()


def _batch(rows: list[tuple]) -> pa.RecordBatch:
    """One record batch of raw rows; rows that Arrow refuses are sanitized first (:func:`sanitize_row`)."""
    try:
        columns = list(zip(*rows))
        arrays = [pa.array(col, type=f.type) for col, f in zip(columns, RAW_ARROW_SCHEMA)]
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        columns = list(zip(*(sanitize_row(r) for r in rows)))
        arrays = [pa.array(col, type=f.type) for col, f in zip(columns, RAW_ARROW_SCHEMA)]
    return pa.RecordBatch.from_arrays(arrays, schema=RAW_ARROW_SCHEMA)


def _iter_stream(path: Path) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as f:
        try:
            reader = ipc.open_stream(f)
        except (pa.ArrowInvalid, OSError):
            return  # killed before the schema was written
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):
                break  # a batch cut short by a kill: keep what came before it
            yield batch


def _read_stream(path: Path) -> list[pa.RecordBatch]:
    return list(_iter_stream(path))


def _stream_paths(directory: Path, stem: str, names: tuple[str, ...] | None) -> list[Path]:
    if names is not None:
        return [directory / n for n in names if (directory / n).exists()]
    return sorted(directory.glob(f"{stem}*.arrow"), key=lambda p: (len(p.name), p.name))


def read_raw_rows(directory: str | os.PathLike, names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read every complete raw row under ``directory`` (all ``requests*.arrow`` streams, or only the files
    ``names`` when given: what one run wrote), with the dtypes of
    :data:`agentperf_kit.schema.REQUEST_COLUMNS`. Works on the files of a killed run."""
    batches = list(iter_raw_batches(directory, names))
    table = pa.Table.from_batches(batches, schema=RAW_ARROW_SCHEMA)
    del batches  # the table holds the buffers; converted column by column and freed as it goes
    return raw_frame(table)


def iter_raw_batches(
    directory: str | os.PathLike, names: tuple[str, ...] | None = None
) -> Iterator[pa.RecordBatch]:
    """The complete record batches of raw rows under ``directory`` (as :func:`read_raw_rows` reads them),
    one at a time: a level of millions of rows is never held whole (the streaming finalize of
    :func:`agentperf_kit.results.finalize_run` reads them twice)."""
    for path in _stream_paths(Path(directory), "requests", names):
        yield from _iter_stream(path)


def raw_frame(table: pa.Table) -> pd.DataFrame:
    """Raw rows as Arrow (:data:`RAW_ARROW_SCHEMA`) -> the frame :func:`read_raw_rows` gives, with the
    dtypes of :data:`agentperf_kit.schema.REQUEST_COLUMNS`; ``table`` is consumed (its buffers freed
    column by column as they are converted)."""
    df = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    cast = {name: REQUEST_COLUMNS[name].dtype for name in RAW_COLUMNS}
    cast = {k: v for k, v in cast.items() if str(df[k].dtype) != str(pd.api.types.pandas_dtype(v))}
    return df.astype(cast) if cast else df


# one row per visible chunk; (run_id, agent, phase_id, turn) joins requests.parquet
CHUNKS_ARROW_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("level", pa.int64()),
        pa.field("agent", pa.int64()),
        pa.field("phase_id", pa.int64()),
        pa.field("turn", pa.int64()),
        pa.field("chunk", pa.int64()),
        pa.field("t_s", pa.float64()),
        pa.field("tokens", pa.int64()),
    ]
)


class ChunkWriter(_ArrowStreamWriter):
    """Append every visible chunk of every request to ``directory/chunks.arrow`` (Arrow IPC stream).

    :meth:`add` takes one request's chunk log (``(t_ns, tokens)`` pairs on the ``perf_counter_ns`` clock,
    as :func:`agentperf_kit.client.http.send_request` fills it) and its keys; times are stored as seconds
    since ``origin_ns`` (the run's clock origin). Flushed like :class:`RunWriter`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        origin_ns: int,
        *,
        run_id: str,
        level: int = 0,
        flush_rows: int = 65536,
        flush_s: float = 2.0,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHUNKS_PARTS_NAME
        self._open(self.directory, self.path, CHUNKS_ARROW_SCHEMA)
        self.origin_ns = origin_ns
        self.run_id, self.level = run_id, level
        self._cols: tuple[list, ...] = ([], [], [], [], [], [])  # agent, phase_id, turn, chunk, t_ns, tokens
        self._flush_rows, self._flush_s = flush_rows, flush_s
        self._last_flush = time.monotonic()
        self.rows_written = 0

    def add(self, agent: int, phase_id: int, turn: int, log: list[tuple[int, int]]) -> None:
        if not log or self.error is not None:
            return
        n = len(log)
        a, p, t, c, ts, tok = self._cols
        a.extend([agent] * n)
        p.extend([phase_id] * n)
        t.extend([turn] * n)
        c.extend(range(n))
        for t_ns, k in log:
            ts.append(t_ns)
            tok.append(k)
        if len(a) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered chunk rows; a write failure is kept in :attr:`error`, like :class:`RunWriter`."""
        if self.error is not None:
            return
        try:
            self._write()
        except OSError as exc:
            self._cols = ([], [], [], [], [], [])
            self._failed(exc)
        self._last_flush = time.monotonic()

    def _write(self) -> None:
        a, p, t, c, ts, tok = self._cols
        if a:
            n = len(a)
            t_s = (pa.array(ts, pa.int64()).to_numpy() - self.origin_ns) / 1e9
            arrays = [
                pa.array([self.run_id] * n, pa.string()),
                pa.array([self.level] * n, pa.int64()),
                pa.array(a, pa.int64()),
                pa.array(p, pa.int64()),
                pa.array(t, pa.int64()),
                pa.array(c, pa.int64()),
                pa.array(t_s, pa.float64()),
                pa.array(tok, pa.int64()),
            ]
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=CHUNKS_ARROW_SCHEMA))
            self.rows_written += n
            self._cols = ([], [], [], [], [], [])
        self._file.flush()


def read_chunk_rows(directory: str | os.PathLike, names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every complete chunk row of ``directory/chunks*.arrow`` (or of the files ``names`` only); works on
    the files of a killed run."""
    directory = Path(directory)
    paths = _stream_paths(directory, "chunks", names)
    batches = [b for p in paths for b in _read_stream(p)]
    return pa.Table.from_batches(batches, schema=CHUNKS_ARROW_SCHEMA).to_pandas()
