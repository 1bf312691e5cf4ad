"""What-if knobs: parsing, the workload transforms, and a simulated sweep that records its knob."""

from __future__ import annotations

import json

import pytest

from agentperf_kit.cli import main
from agentperf_kit.errors import ConfigError
from agentperf_kit.sweep import SweepConfig, SweepConfigError
from agentperf_kit.trajectories.model import Trajectory, Turn
from agentperf_kit.whatif import apply_what_if, parse_what_if, what_if_string


def _traj():
    return Trajectory(
        "t",
        [
            Turn(0, 0, 100, 50, reasoning_tokens=20, tool_delay_s=2.0),
            Turn(0, 100, 60, 40, tool_delay_s=4.0),
            Turn(1, 0, 30, 10, tool_delay_s=1.0),
        ],
    )


def test_parse_is_canonical_and_repeatable():
    assert parse_what_if(["tool_delay=0.50", "output=2,prefix_cache=off"]) == {
        "output": 2.0,
        "prefix_cache": "off",
        "tool_delay": 0.5,
    }
    assert what_if_string(parse_what_if("tool_delay=0.50,output=2")) == "output=2,tool_delay=0.5"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("tool_delay=0", "positive factor"),
        ("tool_delay=fast", "positive factor"),
        ("speed=2", "one of tool_delay"),
        ("tool_delay", "KNOB=VALUE"),
        ("prefix_cache=maybe", "'on' or 'off'"),
        ("output=2,output=3", "given twice"),
    ],
)
def test_bad_knobs_name_the_knob_and_the_fix(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_what_if(spec)


def test_transforms():
    t = _traj()
    (fast,) = apply_what_if([t], parse_what_if("tool_delay=0.25"))
    assert [u.tool_delay_s for u in fast.turns] == [0.5, 1.0, 0.25]
    assert [u.input_tokens for u in fast.turns] == [u.input_tokens for u in t.turns]
    (long_out,) = apply_what_if([t], parse_what_if("output=2"))
    assert [u.output_tokens for u in long_out.turns] == [100, 80, 20]
    assert long_out.turns[0].reasoning_tokens == 40
    assert [u.input_tokens for u in long_out.turns] == [100, 160, 30]
    (ctx,) = apply_what_if([t], parse_what_if("context=0.5"))
    assert [u.input_tokens for u in ctx.turns] == [50, 80, 15]
    assert [u.prefix_tokens for u in ctx.turns] == [0, 50, 0]  # the prefix stays the previous prompt
    (nc,) = apply_what_if([t], parse_what_if("prefix_cache=off"))
    assert [u.prefix_tokens for u in nc.turns] == [0, 0, 0]
    assert [u.input_tokens for u in nc.turns] == [100, 160, 30]


def test_config_knobs_and_refusals(tmp_path):
    cfg = SweepConfig(what_if="deployment=gb300nvl72-dsv4pro,tool_delay=0.5")
    assert (
        cfg.target == "sim:gb300nvl72-dsv4pro"
        and cfg.what_if == "deployment=gb300nvl72-dsv4pro,tool_delay=0.5"
    )
    assert SweepConfig().config_hash() == SweepConfig(what_if="").config_hash()  # absent when unused
    assert SweepConfig().config_hash() != SweepConfig(what_if="tool_delay=0.5").config_hash()
    with pytest.raises(SweepConfigError, match="simulated targets only"):
        SweepConfig(target="http://127.0.0.1:1/v1", model="m", accelerators=1, what_if="tool_delay=2")
    with pytest.raises(SweepConfigError, match="unknown"):
        SweepConfig(what_if="deployment=nope")
    assert main(["sweep", "--what-if", "tool_delay=-1", "--out", str(tmp_path / "x")]) == 2


def test_sweep_states_its_knob(tmp_path, capsys):
    out = tmp_path / "s"
    args = [
        "sweep",
        "--what-if",
        "tool_delay=0.5",
        "--what-if",
        "output=0.5",
        "--level-duration",
        "30",
        "--max-agents",
        "4",
        "--tiers",
        "a=20/10",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "what-if: output=0.5,tool_delay=0.5" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["what_if"] == "output=0.5,tool_delay=0.5" == s["config"]["what_if"]

    from agentperf_kit.sweep import load_sweep

    req = load_sweep(out).requests  # read from the level files (one copy of the rows)
    from agentperf_kit.trajectories import default_trajectories

    base = {(t.trajectory_id, i): u for t in default_trajectories() for i, u in enumerate(t.turns)}
    for r in req.head(50).itertuples():
        u = base[(r.trajectory_id, r.turn)]
        assert r.tool_delay_s == pytest.approx(u.tool_delay_s * 0.5)
        assert r.target_output_tokens == max(1, round(u.output_tokens * 0.5))
