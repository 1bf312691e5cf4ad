"""fit_context: scale and cap keep the structure and make every request fit; the fit CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentperf_kit.cli import main
from agentperf_kit.trajectories import (
    SynthConfig,
    default_trajectories,
    fit_context,
    load_trajectories,
    save_trajectories,
    synthesize,
    trajectory_stats,
)
from agentperf_kit.trajectories.importers import import_aa_local
from agentperf_kit.trajectories.model import Trajectory, Turn

AA = Path(__file__).parent / "fixtures" / "trajectories" / "aa_local"


def _assert_valid(trajs, tmp_path, budget):
    """Every request fits and the set passes the loader's validation (prefix rules) after a round trip."""
    back = load_trajectories(save_trajectories(trajs, tmp_path / "fit.jsonl"))
    assert [t.turns for t in back] == [t.turns for t in trajs]
    assert max(t.input_tokens + t.output_tokens for tr in trajs for t in tr.turns) <= budget


def test_scale_keeps_structure_delays_and_shape(tmp_path):
    src = default_trajectories()[:40]
    fitted = fit_context(src, 4096)
    _assert_valid(fitted, tmp_path, 4096 - 64)
    f = fitted[0].meta["context_scale"]
    assert 0 < f < 1 and all(tr.meta["context_scale"] == f for tr in fitted)
    before, after = trajectory_stats(src), trajectory_stats(fitted)
    assert after["turns"] == before["turns"] and after["phases"] == before["phases"]
    assert after["tool_delay_s"] == before["tool_delay_s"]
    assert after["cached_fraction"] == pytest.approx(before["cached_fraction"], abs=0.01)
    assert after["input_tokens"]["mean"] == pytest.approx(before["input_tokens"]["mean"] * f, rel=0.01)
    for b in fitted:
        for prev, t in zip(b.turns, b.turns[1:]):
            if t.phase == prev.phase:
                assert t.prefix_tokens == prev.input_tokens


def test_scale_is_a_no_op_when_everything_fits():
    src = synthesize(count=3, seed=4)
    assert [t.turns for t in fit_context(src, 200_000)] == [t.turns for t in src]


def test_scale_with_an_output_cap_chooses_a_larger_factor():
    # one turn with a huge output: without a cap it forces a tiny factor; with a cap the input decides
    traj = Trajectory("t", [Turn(0, 0, 1000, 9000), Turn(0, 1000, 100, 50)])
    plain = fit_context([traj], 2064)[0]
    capped = fit_context([traj], 2064, max_output_tokens=200)[0]
    assert plain.meta["context_scale"] < 0.21
    assert capped.meta["context_scale"] > 0.9
    assert max(t.output_tokens for t in capped.turns) <= 200
    assert all(t.input_tokens + t.output_tokens <= 2000 for t in capped.turns)


def test_scale_with_an_output_floor_keeps_outputs_measurable(tmp_path):
    # scaled into 2,048 tokens the built-in set's outputs shrink to 1-9 tokens, too short for a fast
    # server's speed to be measured; the floor keeps every output >= 32 tokens and the structure
    src = default_trajectories()[:40]
    plain = fit_context(src, 2048)
    floored = fit_context(src, 2048, min_output_tokens=32)
    _assert_valid(floored, tmp_path, 2048 - 64)
    assert min(t.output_tokens for tr in plain for t in tr.turns) == 1
    assert min(t.output_tokens for tr in floored for t in tr.turns) == 32
    f0, f1 = plain[0].meta["context_scale"], floored[0].meta["context_scale"]
    assert f1 <= f0 and f1 == pytest.approx(f0, rel=0.05)  # the floor costs the prompts little
    for a, b in zip(src, floored):
        for x, y in zip(a.turns, b.turns):
            assert y.output_tokens == max(32, round(x.output_tokens * f1))  # scaled, then floored
            assert (y.reasoning_tokens or 0) <= y.output_tokens
    assert trajectory_stats(floored)["cached_fraction"] == pytest.approx(
        trajectory_stats(src)["cached_fraction"], abs=0.01
    )


def test_output_floor_binds_the_factor_and_applies_in_cap_mode():
    # a long prompt with a 1-token output: the factor leaves room for the floor's 100 tokens
    traj = Trajectory("t", [Turn(0, 0, 4000, 1), Turn(0, 4000, 100, 10)])
    out = fit_context([traj], 2064, min_output_tokens=100)[0]
    assert [t.output_tokens for t in out.turns] == [100, 100]
    assert out.turns[0].input_tokens + 100 <= 2000
    assert out.turns[1].input_tokens + 100 <= 2000
    capped = fit_context([traj], 2064, mode="cap", min_output_tokens=100)[0]
    assert [t.output_tokens for t in capped.turns] == [100, 100]
    assert max(t.input_tokens + t.output_tokens for t in capped.turns) <= 2000


def test_cap_truncates_into_new_phases_and_keeps_what_fits(tmp_path):
    src = synthesize(SynthConfig(turns_median=60), count=12, seed=8)
    fitted = fit_context(src, 16_384, mode="cap", max_output_tokens=1024)
    _assert_valid(fitted, tmp_path, 16_384 - 64)
    resets = sum(tr.meta["context_fit"]["resets"] for tr in fitted)
    assert resets > 0
    assert sum(tr.n_phases for tr in fitted) == sum(tr.n_phases for tr in src) + resets
    for a, b in zip(src, fitted):
        assert len(a.turns) == len(b.turns)
        assert [t.tool_delay_s for t in a.turns] == [t.tool_delay_s for t in b.turns]
        assert all(t.output_tokens == min(s.output_tokens, 1024) for s, t in zip(a.turns, b.turns))
    # a trajectory whose requests all fit comes back unchanged
    cfg = SynthConfig(
        system_prompt_median_tokens=3000,
        min_prompt_tokens=1000,
        compaction_at_tokens=10_000,
        max_output_tokens=2000,
    )
    small = synthesize(cfg, count=3, seed=1)
    assert trajectory_stats(small)["max_request_tokens"] <= 16_384 - 64
    same = fit_context(small, 16_384, mode="cap", max_output_tokens=4000)
    assert [t.turns for t in same] == [t.turns for t in small]


def test_cap_reset_prompt_is_the_kept_summary_plus_new_tokens():
    traj = Trajectory("t", [Turn(0, 0, 3000, 10), Turn(0, 3000, 600, 10), Turn(0, 3600, 500, 10)])
    out = fit_context([traj], 3064 + 600, mode="cap", max_output_tokens=10, keep_fraction=0.25)[0]
    budget = 3600
    assert [t.phase for t in out.turns] == [0, 1, 1]
    assert out.turns[1].prefix_tokens == 0 and out.turns[1].input_tokens == round(0.25 * budget) + 600
    assert out.turns[2].prefix_tokens == out.turns[1].input_tokens and out.turns[2].new_tokens == 500


def test_refusals():
    with pytest.raises(ValueError, match="recorded messages"):
        fit_context(import_aa_local(AA), 4096)
    with pytest.raises(ValueError, match="no room"):
        fit_context(synthesize(count=1, seed=1), 60)
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_context(synthesize(count=1, seed=1), 4096, mode="squeeze")
    with pytest.raises(ValueError, match="max_output_tokens"):
        fit_context(synthesize(count=1, seed=1), 4096, max_output_tokens=0)
    with pytest.raises(ValueError, match=r"min_output_tokens must be in 1\.\.100"):
        fit_context(synthesize(count=1, seed=1), 4096, max_output_tokens=100, min_output_tokens=101)
    with pytest.raises(ValueError, match="min_output_tokens"):
        fit_context(synthesize(count=1, seed=1), 4096, min_output_tokens=0)


def test_fit_cli(tmp_path, capsys):
    out = tmp_path / "small.jsonl.gz"
    assert main(["trajectories", "fit", "default", "--max-context", "4096", "--out", str(out)]) == 0
    assert "largest request" in capsys.readouterr().out
    s = trajectory_stats(load_trajectories(out))
    assert s["max_request_tokens"] <= 4096 - 64
    out2 = tmp_path / "capped.parquet"
    args = ["trajectories", "fit", str(out), "--max-context", "2048", "--mode", "cap", "--out", str(out2)]
    assert main(args) == 0
    assert trajectory_stats(load_trajectories(out2))["max_request_tokens"] <= 2048 - 64
    out3 = tmp_path / "floored.jsonl"
    args = ["trajectories", "fit", "default", "--max-context", "2048", "--min-output", "32"]
    assert main([*args, "--out", str(out3)]) == 0
    assert min(t.output_tokens for tr in load_trajectories(out3) for t in tr.turns) == 32
    assert (
        main(["trajectories", "fit", str(tmp_path / "nope.jsonl"), "--max-context", "10", "--out", str(out2)])
        == 2
    )
