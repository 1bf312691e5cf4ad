"""The outside benchmark's request matching (benchmarks/client_outside.py) finds the markers a run really
used: replaying the fleet's draws gives every phase_id's marker, for the first N phases (drawn in
``start`` between the start turns) and for the later ones (one draw each, in phase_id order)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from agentperf_kit.agents import AgentFleet, RequestOutcome, RunRules
from agentperf_kit.trajectories.model import Trajectory, Turn

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("client_outside", BENCH / "client_outside.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_phase_markers_replay_the_fleet():
    trajs = [
        Trajectory(
            f"t{i}", [Turn(k // 2, 0 if k % 2 == 0 else 50, 50, 5, tool_delay_s=0.1) for k in range(6)]
        )
        for i in range(7)
    ]
    rules = RunRules(warmup_s=0, duration_s=5, min_trajectories=0, min_trajectories_per_agent=0)
    nonce = 0x1234567890ABCDEF1234567
    fleet = AgentFleet(trajs, 5, rules, seed=3, sink=lambda row: None, marker_nonce=nonce)
    seen = {}
    pending = fleet.start(0.0)
    t = 0.0
    while pending and len(seen) < 60:
        plan = pending.pop(0)
        seen[plan.phase_id] = plan.marker
        fleet.on_send(plan, t)
        t += 0.01
        nxt = fleet.complete(plan, RequestOutcome(t_send_s=t, t_end_s=t + 0.5))
        if nxt is not None:
            pending.append(nxt)
    replay = _module().phase_markers(trajs, 5, 3, nonce, max(seen) + 1, rules)
    assert len(seen) >= 30
    assert {pid: replay[pid] for pid in seen} == seen
