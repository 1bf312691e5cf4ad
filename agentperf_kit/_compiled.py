"""Whether the simulator's core runs compiled, and the switch back to its pure-Python sources.

``pip install`` compiles the modules in :data:`COMPILED_MODULES` with mypyc where it can (setup.py): the
same sources, the same results bit for bit, ~1.7x faster levels (docs/simulator.md "Compiled core").
Python imports a compiled module ahead of its ``.py`` file, so a compiled module that no longer matches
its source (an edited checkout that was not rebuilt) would run old code: at import the package compares
each source's SHA-256 with the build's manifest and, if any differs, or if ``AGENTPERF_PURE_PYTHON=1`` is
set, imports every one of them from source instead (all or none: the compiled modules call each other
directly). :func:`core_status` says which, and why; a sweep's manifest records it.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

__all__ = ["COMPILED_MODULES", "core_status"]

# the modules setup.py compiles (it reads this tuple)
COMPILED_MODULES = (
    "agentperf_kit.sim.engine",
    "agentperf_kit.sim.disagg",
    "agentperf_kit.sim.virtual",
    "agentperf_kit.agents",
)
_PACKAGE = Path(__file__).resolve().parent
_MANIFEST = _PACKAGE / "_compiled_manifest.json"
_status = "pure Python (not compiled at install)"


def _source(name: str) -> Path:
    return _PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")


def _compiled_present(name: str) -> bool:
    path = _source(name)
    return any(
        (path.parent / (path.stem + suffix)).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their ``.py`` sources."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def _stale() -> list[str]:
    """The compiled modules whose source differs from the one they were built from (all when the build
    left no manifest)."""
    try:
        built = json.loads(_MANIFEST.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return list(COMPILED_MODULES)
    out = []
    for name in COMPILED_MODULES:
        try:
            digest = hashlib.sha256(_source(name).read_bytes()).hexdigest()
        except OSError:
            continue  # an installed package without sources: nothing to compare
        if built.get(name) != digest:
            out.append(name)
    return out


def _choose() -> None:
    """Run once, before any compiled module is imported: install the source finder where needed."""
    global _status
    if not all(_compiled_present(n) for n in COMPILED_MODULES):
        return
    if os.environ.get("AGENTPERF_PURE_PYTHON", "") not in ("", "0"):
        reason = "AGENTPERF_PURE_PYTHON is set"
    else:
        stale = _stale()
        if not stale:
            _status = "compiled (mypyc)"
            return
        reason = f"the sources of {', '.join(stale)} changed since the build (reinstall to recompile)"
    sys.meta_path.insert(0, _SourceFinder())
    _status = f"pure Python ({reason})"


def core_status() -> str:
    """How the simulator's core runs in this process: ``"compiled (mypyc)"`` or ``"pure Python (why)"``."""
    return _status
