"""Build of agentperf-kit: pyproject.toml holds the metadata; this file compiles the simulator's core.

The modules in ``COMPILED`` (the event loop of a simulated level: engine, fleet, level driver) are
compiled to C with mypyc, from the same type-annotated Python sources, when the build can (a C compiler
and Python's headers); the results are bit-identical to the pure-Python modules, only faster
(docs/simulator.md "Compiled core"). ``AGENTPERF_PURE_PYTHON=1`` at install time skips it; a build that
cannot compile prints why and installs the pure-Python package. At import, the package uses the compiled
modules only while their sources are those they were built from (``agentperf_kit/_compiled.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _compiled_modules() -> list[str]:
    """The modules to compile, as paths: ``COMPILED_MODULES`` of agentperf_kit/_compiled.py (the one list),
    read without importing the package."""
    path = HERE / "agentperf_kit" / "_compiled.py"
    spec = importlib.util.spec_from_file_location("_agentperf_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name.replace(".", "/") + ".py" for name in module.COMPILED_MODULES]


COMPILED = _compiled_modules()
MANIFEST = "_compiled_manifest.json"  # next to agentperf_kit/_compiled.py: the sources' SHA-256


def _say(message: str) -> None:
    print(f"agentperf-kit: {message}", file=sys.stderr)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class BuildCore(build_ext):
    """build_ext that never fails the install: a compile error leaves the pure-Python package. On success
    it writes the manifest of the compiled sources next to the package's modules."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._remove_outputs()
            _say(f"compiling the simulator core failed ({exc}); installing pure Python")
            return
        manifest = {"modules": {p[:-3].replace("/", "."): _sha256(HERE / p) for p in COMPILED}}
        root = HERE if self.inplace else Path(self.build_lib)  # where the compiled modules went
        (root / "agentperf_kit" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    def _remove_outputs(self) -> None:
        for out in self.get_outputs():
            Path(out).unlink(missing_ok=True)


def _ext_modules() -> list:
    if os.environ.get("AGENTPERF_PURE_PYTHON", "") not in ("", "0"):
        _say("AGENTPERF_PURE_PYTHON set: the simulator core stays pure Python")
        return []
    try:
        from mypyc.build import mypycify

        # an isolated build has none of the runtime dependencies: their types are Any here
        flags = ["--ignore-missing-imports", "--no-warn-unused-ignores"]
        return mypycify([*flags, *COMPILED], opt_level="3", group_name="agentperf_kit._simcore")
    except BaseException as exc:
        _say(f"cannot compile the simulator core ({exc}); installing pure Python")
        return []


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildCore})
