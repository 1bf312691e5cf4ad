"""Shared pytest configuration."""

import pytest


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """A small simulated sweep (short levels, N <= 32) shared by the task and frontier tests."""
    from agentperf_kit.sweep import SweepConfig, run_sweep

    out = tmp_path_factory.mktemp("beyond") / "sweep"
    cfg = SweepConfig(
        out=str(out),
        level_duration_s=60,
        warmup_s=10,
        min_trajectories=5,
        min_trajectories_per_agent=1,
        max_agents=32,
    )
    run_sweep(cfg, progress=False)
    return out
