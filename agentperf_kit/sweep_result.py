"""The result of a sweep as an object a notebook can hold: :class:`SweepResult`.

Built by :func:`agentperf_kit.sweep.run_sweep` and :func:`agentperf_kit.sweep.load_sweep`; re-exported from
:mod:`agentperf_kit.sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["SweepResult"]


@dataclass
class SweepResult:
    """A finished (or loaded) sweep: ``levels`` (levels.csv), ``summary`` (summary.json), ``tiers``,
    and ``requests``, all requests of all levels: read from ``directory/requests.parquet`` on first use
    (a large sweep's table can be many GB; nothing else needs it in memory)."""

    levels: pd.DataFrame
    summary: dict[str, Any]
    _requests: pd.DataFrame | None = None
    directory: Path | None = None
    tiers: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def requests(self) -> pd.DataFrame:
        if self._requests is None:
            if self.directory is None:
                raise ValueError("this sweep result has no directory to read its requests from")
            self._requests = pd.read_parquet(Path(self.directory) / "requests.parquet")
        return self._requests
