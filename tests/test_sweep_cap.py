"""The sweep's starting cap on the simulator: estimated from the step-time model, above the answer."""

from __future__ import annotations

import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.metrics import level_stats
from agentperf_kit.sim.capacity import decode_capacity, estimate_max_agents
from agentperf_kit.sim.presets import get_deployment
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.sweep import DEFAULT_MAX_AGENTS, SweepConfig, resolve_max_agents
from agentperf_kit.trajectories import default_trajectories


def test_the_cap_is_what_was_set_else_the_default_live_else_the_estimate():
    assert resolve_max_agents(SweepConfig(max_agents=100)) == (100, "set")
    live = SweepConfig(target="http://127.0.0.1:1/v1", model="m", accelerators=1)
    assert resolve_max_agents(live) == (DEFAULT_MAX_AGENTS, "default")
    cap, source = resolve_max_agents(SweepConfig())
    assert source == "estimated" and cap % 64 == 0 and cap >= 64


def test_decode_capacity_is_the_last_batch_that_meets_the_floor():
    from agentperf_kit.sim.engine import Engine
    from agentperf_kit.sim.presets import efficiency

    dep = get_deployment("h200x8-dsv4pro")
    eng = Engine(dep, efficiency("mid"), lambda *a: None, lambda *a: None)
    b = decode_capacity(dep, "mid", 20.0, 30_000)
    assert 1 <= b < dep.max_num_seqs
    assert 1 / eng.decode_step_time(b, b * 30_000) >= 20.0 > 1 / eng.decode_step_time(b + 1, (b + 1) * 30_000)
    assert decode_capacity(dep, "mid", 1e6, 30_000) == 0  # nothing is that fast
    # a faster system and a looser floor both allow more agents
    trajs = default_trajectories()
    assert estimate_max_agents(dep, "high", trajs, 20.0) >= estimate_max_agents(dep, "low", trajs, 20.0)
    assert estimate_max_agents(dep, "mid", trajs, 10.0) >= estimate_max_agents(dep, "mid", trajs, 40.0)


@pytest.mark.parametrize("eff", ["low", "mid", "high"])
def test_the_estimated_cap_fails_the_loosest_tier_on_the_default_system(eff):
    """A level at the estimated cap misses the loosest speed floor (so the cap sits above the answer and
    the ramp finds a failure below it): P25 output speed under 20 tok/s on the default preset."""
    cfg = SweepConfig(efficiency=eff)
    cap, _ = resolve_max_agents(cfg)
    rules = RunRules(warmup_s=30, duration_s=120, min_trajectories=5, min_trajectories_per_agent=0)
    res = run_sim_level(default_trajectories(), cap, rules, efficiency=eff, seed=3)
    st = level_stats(res.requests)
    assert st["p25_output_speed_tps"] < 20.0 or st["p95_ttft_s"] > 10.0, (cap, st["p25_output_speed_tps"])
