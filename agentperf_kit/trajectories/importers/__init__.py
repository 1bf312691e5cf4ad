"""Importers of real trajectory formats into :class:`~agentperf_kit.trajectories.Trajectory` lists.

``IMPORTERS`` maps the name used by ``agentperf trajectories import --from NAME`` to the function;
``import_trajectories(name, src, **options)`` dispatches. Each module's docstring says what it maps and
what it loses; ``docs/trajectories.md`` collects them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model import Trajectory
from .aa_local import import_aa_local
from .mini_swe_agent import TOOL_DELAY_MODES, import_mini_swe_agent
from .mooncake import THINK_TIME_MODES, import_mooncake

__all__ = [
    "IMPORTERS",
    "THINK_TIME_MODES",
    "TOOL_DELAY_MODES",
    "import_aa_local",
    "import_mini_swe_agent",
    "import_mooncake",
    "import_trajectories",
]

IMPORTERS: dict[str, Callable[..., list[Trajectory]]] = {
    "aa-local": import_aa_local,
    "mooncake": import_mooncake,
    "mini-swe-agent": import_mini_swe_agent,
}


def import_trajectories(fmt: str, src: str | Path, **options: Any) -> list[Trajectory]:
    """Import ``src`` written in format ``fmt`` (a key of :data:`IMPORTERS`)."""
    try:
        importer = IMPORTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}") from None
    return importer(src, **options)
