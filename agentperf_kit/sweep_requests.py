"""A sweep's request rows, read from its level files (one copy on disk).

A sweep keeps each level's rows where the level wrote them (``levels/nNNNNN_eE/requests.parquet``, also
what a resume reuses); it no longer writes a second, merged ``requests.parquet``. The sweep's view of its
requests is the union of the rows of the level each ``levels.csv`` row names (concurrency ``N`` and its
last extension ``E``), with ``level`` set to the row's ``level`` (the index by N ascending, as in
``levels.csv``; each level file's own ``level`` is the order it was measured in).

Sweeps written before this change have a merged ``requests.parquet``; it is read when a level's own file
is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from .results import read_parquet_rows

__all__ = ["iter_sweep_requests", "level_dir", "read_sweep_requests"]


def level_dir(directory: str | os.PathLike, concurrency: int, extensions: int) -> Path:
    """The directory of the level of ``concurrency`` agents measured with ``extensions`` extensions."""
    return Path(directory) / "levels" / f"n{int(concurrency):05d}_e{int(extensions)}"


def iter_sweep_requests(
    directory: str | os.PathLike,
    *,
    columns: Sequence[str] | None = None,
    levels: pd.DataFrame | None = None,
    agents: tuple[int, int] | None = None,
) -> Iterator[tuple[pd.Series, pd.DataFrame]]:
    """Yield ``(levels.csv row, its requests)`` one level at a time (memory: one level).

    ``levels`` defaults to the sweep's ``levels.csv``; ``columns`` restricts the columns read (``level``
    is always set when it is among them or ``columns`` is None); ``agents`` = (lo, hi) to the rows of
    agents lo..hi-1 (a part of a big level)."""
    directory = Path(directory)
    if levels is None:
        levels = pd.read_csv(directory / "levels.csv")
    merged = directory / "requests.parquet"  # sweeps written before the level files were the one copy
    cols = list(columns) if columns is not None else None
    for _, lv in levels.iterrows():
        path = level_dir(directory, lv["concurrency"], lv.get("extensions", 0)) / "requests.parquet"
        if path.exists():  # a row group at a time: the level's frame, without its Arrow copy beside it
            df = read_parquet_rows(path, cols, agents=agents)
        elif merged.exists():
            where = [("level", "==", int(lv["level"]))]
            if agents is not None:
                where += [("agent", ">=", agents[0]), ("agent", "<", agents[1])]
            df = pd.read_parquet(merged, columns=cols, filters=where)
        else:
            raise FileNotFoundError(
                f"{directory}: no requests for the level of N={int(lv['concurrency'])} ({path} is missing); "
                "is this a finished sweep directory?"
            )
        if cols is None or "level" in cols:
            dtype = df["level"].dtype if "level" in df else "int64"
            df["level"] = pd.Series(int(lv["level"]), index=df.index, dtype=dtype)
        yield lv, df


def read_sweep_requests(
    directory: str | os.PathLike,
    *,
    columns: Sequence[str] | None = None,
    levels: pd.DataFrame | None = None,
    agents: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """All requests of a sweep's levels (the last extension of each N) in one frame, by level (``agents``:
    as :func:`iter_sweep_requests`)."""
    parts = [df for _, df in iter_sweep_requests(directory, columns=columns, levels=levels, agents=agents)]
    if not parts:
        return pd.DataFrame(columns=list(columns) if columns is not None else None)
    return pd.concat(parts, ignore_index=True)
