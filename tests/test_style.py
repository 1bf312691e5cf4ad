"""The package is ruff-clean and its public API is the tested short list."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import agentperf_kit


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(__import__("pathlib").Path(sys.executable).with_name("ruff"))
    if not __import__("pathlib").Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    out = subprocess.run([ruff, "check", "agentperf_kit", "tests"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_public_api():
    for name in agentperf_kit.__all__:
        assert hasattr(agentperf_kit, name), name
    assert {"run_sweep", "SweepConfig", "run_sim_level", "load_trajectories", "Tier"} <= set(
        agentperf_kit.__all__
    )
