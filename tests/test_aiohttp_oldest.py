"""The client against the oldest aiohttp that pyproject.toml allows.

The client relies on aiohttp internals (``client/http.py``: the ``ResponseHandler`` subclass and the
connector's factory; ``client/eager.py``), so the suite runs its client-facing tests a second time with the
floor version: a virtual environment ``.venv-aiohttp-oldest`` (git-ignored, reused) holds only
``aiohttp==FLOOR`` and its missing dependencies and sees this environment's other packages after its own
(a ``.pth`` file). Needs the package index once (pip's cache makes later builds quick)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-aiohttp-oldest"
# The tests that exercise aiohttp: the session and its protocol reader (``wire=False``), the SSE fast path on
# aiohttp's readers, the sink's flow control. Live runs (tests/test_live_faults.py) stream through the lean
# client of ``client/wire.py``, which does not use aiohttp, so they are not run twice.
CLIENT_TESTS = [
    "tests/test_client_session.py",
    "tests/test_sse_fastpath.py",
    "tests/test_sink_flow.py",
]


def aiohttp_floor() -> str:
    m = re.search(r'"aiohttp>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert m, "pyproject.toml names no aiohttp floor"
    return m.group(1)


def _venv_python(floor: str) -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "zz_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    have = subprocess.run(
        [str(py), "-c", "import aiohttp; print(aiohttp.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    if have != floor:
        out = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"aiohttp=={floor}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    return py


@pytest.mark.slow  # about 40 s: the aiohttp-facing client tests once more
def test_client_tests_pass_on_the_oldest_supported_aiohttp():
    floor = aiohttp_floor()
    py = _venv_python(floor)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    got = subprocess.run(
        [str(py), "-c", "import aiohttp; print(aiohttp.__version__)"], capture_output=True, text=True, env=env
    ).stdout.strip()
    assert got == floor, f"the oldest-aiohttp environment imports aiohttp {got}, not {floor}"
    out = subprocess.run(
        [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *CLIENT_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, f"client tests on aiohttp {floor}:\n{tail}"
