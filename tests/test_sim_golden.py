"""Golden tables: small simulated levels on several presets, KV policies and efficiency sets give exactly
the tables they gave when the hashes below were recorded (every column, dtype and value of every row).

What it guards: the simulator's speed work (the engine, the fleet, the row writer) and the results file
layout must not move a single value. A hash changes when any value, dtype, column or row order changes;
a deliberate change of the simulator's physics or of the table updates them (``python
tests/test_sim_golden.py`` prints the new ones), saying why in the commit."""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import numpy as np
import pandas as pd
import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.results import load_run
from agentperf_kit.sim.presets import get_deployment
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import SynthConfig, default_trajectories, synthesize

#: a short level with a short drain, so some rows are cancelled at the end
RULES = RunRules(
    warmup_s=10,
    duration_s=150,
    max_duration_s=150,
    min_trajectories=0,
    min_trajectories_per_agent=0,
    drain_timeout_s=0.5,
)


#: long outputs on a small KV cache: decoders outgrow it, so requests are preempted by recompute
LONG = RunRules(
    **{**{k: getattr(RULES, k) for k in RULES.__dataclass_fields__}, "duration_s": 900, "max_duration_s": 900}
)


def _long_outputs():
    cfg = SynthConfig(output_median_tokens=2000, output_p95_tokens=8000, max_output_tokens=12000)
    return synthesize(cfg, count=40, seed=3)


def _dep(name: str, **changes):
    dep = get_deployment(name)
    return dataclasses.replace(dep, **changes) if changes else dep


#: name -> (deployment, agents, efficiency set, trajectories, rules): the engine's paths (chunked prefill,
#: the closed-form decode segments, preemption by recompute, reserve admission, P/D pools, MTP) and three
#: efficiency sets
CASES = {
    "h200-preempt": (lambda: _dep("h200x8-dsv4pro"), 24, "mid", default_trajectories, RULES),
    "h200-preempt-tight-kv": (
        lambda: _dep("h200x8-dsv4pro", kv_capacity_tokens=200_000),
        24,
        "mid",
        _long_outputs,
        LONG,
    ),
    "h200-reserve-tight-kv": (
        lambda: _dep("h200x8-dsv4pro", kv_capacity_tokens=200_000, kv_policy="reserve"),
        24,
        "low",
        _long_outputs,
        LONG,
    ),
    "h200-mtp": (lambda: _dep("h200x8-dsv4pro-mtp"), 16, "high", default_trajectories, RULES),
    "h200-pd": (lambda: _dep("h200x16-dsv4pro-pd"), 24, "mid", default_trajectories, RULES),
    "gb300": (lambda: _dep("gb300nvl72-dsv4pro"), 96, "mid", default_trajectories, RULES),
}

#: sha256 of :func:`table_hash` per case, recorded on main at 50a4f44, before the speed and layout work
GOLDEN = {
    "gb300": "93fc37e1bc8337e80ec8c9475dcb5e206ce47044e178aa6490073d89694ecfec",
    "h200-mtp": "ac716202424c7e1d25f849816bf04a0d448297cc8c88f3833b63269b1378eba6",
    "h200-pd": "6562cdbf51fe868341dde5115ce34066cbf5a9a50ceae5f59fe64f636213e8f8",
    "h200-preempt": "a5c38d4d2e455edc992ee246013cf0248d8b6ec611298ddd76743c6f0ba6ad96",
    "h200-preempt-tight-kv": "c134f79adaeee6550e5bf57775430f682586984543edd0fd57505a357d675b66",
    "h200-reserve-tight-kv": "d3b833e104818541e61a235c8073713fa778468f20de807b4ff3c943055d7937",
}


def table_hash(df: pd.DataFrame) -> str:
    """sha256 over every column's name, dtype and values, in order (NaN, NA and inf included)."""
    h = hashlib.sha256(f"{len(df)} rows\n".encode())
    for c in df.columns:
        s = df[c]
        h.update(f"{c}:{s.dtype}\n".encode())
        if isinstance(s.dtype, np.dtype) and s.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(s.to_numpy()).tobytes())
        else:
            h.update(repr(s.tolist()).encode())
    return h.hexdigest()


def _tables(name: str, tmp_path) -> dict[str, pd.DataFrame]:
    dep, n, eff, trajs, rules = CASES[name]
    kw = dict(deployment=dep(), seed=5, run_id="golden", efficiency=eff)
    mem = run_sim_level(trajs(), n, rules, **kw)
    disk = run_sim_level(trajs(), n, rules, out_dir=tmp_path / name, **kw)
    return {"memory": mem.requests, "disk": load_run(tmp_path / name).requests, "returned": disk.requests}


@pytest.mark.parametrize("name", sorted(CASES))
def test_simulated_tables_are_unchanged(name, tmp_path):
    tables = _tables(name, tmp_path)
    mem = tables["memory"]
    assert len(mem) > 50 and (mem["error"] == "cancelled_at_end").any()
    for kind, df in tables.items():
        assert table_hash(df) == GOLDEN[name], (name, kind)


if __name__ == "__main__":  # print the hashes (after a deliberate change)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(CASES) if len(sys.argv) < 2 else sys.argv[1:]:
            t = _tables(name, Path(tmp))
            hashes = {k: table_hash(df) for k, df in t.items()}
            print(f"    {name!r}: {hashes['memory']!r},  # rows {len(t['memory'])}", hashes)
