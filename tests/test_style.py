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


PUBLIC_API = {
    "AgentFleet", "AgentperfError", "ConfigError", "InputFormatError", "MeasurementError", "OutputError",
    "RequestOutcome", "RequestPlan", "RunResult", "RunRules", "StudyConfig", "SweepConfig", "SweepResult",
    "SynthConfig", "Target", "TargetError", "Tier", "TierPreset", "Trajectory", "TrajectoryFormatError",
    "Turn", "default_trajectories", "derive_request_metrics", "evaluate_level", "get_tier_preset",
    "level_stats", "level_verdicts", "list_deployments", "load_run", "load_study", "load_sweep",
    "load_trajectories", "max_agents", "parse_target", "percentile", "percentile_ci", "run_live",
    "run_sim_level", "run_study", "run_sweep", "save_trajectories", "synthesize", "tier_preset_names",
    "trajectory_stats", "__version__",
}  # fmt: skip


def test_public_api_is_exactly_the_documented_list():
    assert set(agentperf_kit.__all__) == PUBLIC_API
    assert len(agentperf_kit.__all__) == len(PUBLIC_API)  # no duplicates
    for name in agentperf_kit.__all__:
        assert getattr(agentperf_kit, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = agentperf_kit.not_a_name


def test_every_library_error_derives_from_the_root():
    from agentperf_kit.errors import AgentperfError

    for name in agentperf_kit.__all__:
        obj = getattr(agentperf_kit, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, AgentperfError), name


def test_importing_the_package_loads_no_heavy_dependency():
    code = (
        "import sys, agentperf_kit\n"
        "heavy = [m for m in ('pandas', 'scipy', 'aiohttp', 'matplotlib', 'pyarrow') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import agentperf_kit loaded {out.stdout.strip()}"
