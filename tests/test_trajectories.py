"""Trajectory format, validation, generator structure and statistics, stats CLI."""

from __future__ import annotations

import gzip
import json

import pytest

from agentperf_kit.cli import main
from agentperf_kit.trajectories import (
    DEFAULT_COUNT,
    DEFAULT_SEED,
    SynthConfig,
    TrajectoryFormatError,
    default_trajectories,
    load_trajectories,
    save_trajectories,
    synthesize,
    trajectory_stats,
)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_round_trip(tmp_path, suffix):
    trajs = synthesize(count=5, seed=3)
    path = save_trajectories(trajs, tmp_path / f"set{suffix}")
    back = load_trajectories(path)
    assert [t.trajectory_id for t in back] == [t.trajectory_id for t in trajs]
    assert [t.turns for t in back] == [t.turns for t in trajs]


def test_default_set_is_the_seeded_generator_output_and_equals_sample_data():
    regenerated = synthesize(count=DEFAULT_COUNT, seed=DEFAULT_SEED)
    assert [t.turns for t in default_trajectories()] == [t.turns for t in regenerated]
    with (
        gzip.open("sample_data/default_trajectories.jsonl.gz", "rt") as a,
        gzip.open("agentperf_kit/data/default_trajectories.jsonl.gz", "rt") as b,
    ):
        assert a.read() == b.read()


def test_generator_is_deterministic_and_seed_sensitive():
    assert [t.turns for t in synthesize(count=3, seed=1)] == [t.turns for t in synthesize(count=3, seed=1)]
    assert [t.turns for t in synthesize(count=3, seed=1)] != [t.turns for t in synthesize(count=3, seed=2)]


def test_generator_structure_context_grows_within_a_phase():
    for traj in synthesize(count=30, seed=5):
        prev = None
        for t in traj.turns:
            assert t.input_tokens + t.output_tokens <= 131_072
            if prev is None or t.phase != prev.phase:
                assert t.prefix_tokens == 0
            else:
                assert t.phase == prev.phase
                # the prefix is exactly the previous prompt; the previous output is part of the new tokens
                assert t.prefix_tokens == prev.input_tokens
                assert t.new_tokens > prev.output_tokens
            prev = t
        assert not traj.turns[-1].tool_calls


def test_default_set_matches_the_published_shape():
    s = trajectory_stats(default_trajectories())
    assert s["input_tokens"]["min"] >= 5_000 and s["input_tokens"]["max"] <= 131_072
    assert 22_000 <= s["input_tokens"]["mean"] <= 32_000
    assert 120 <= s["output_tokens"]["p50"] <= 180
    assert 1_600 <= s["output_tokens"]["p95"] <= 2_400
    assert s["tool_delay_s"]["min"] >= 0.1 and s["tool_delay_s"]["max"] <= 5.0
    assert 0.85 <= s["tool_delay_s"]["p50"] <= 1.15
    assert s["turns_per_trajectory"]["max"] <= 200 and s["turns_per_trajectory"]["p50"] >= 20
    assert s["cached_fraction"] >= 0.80


def test_teaching_knob_tool_delay():
    slow = trajectory_stats(
        synthesize(SynthConfig(tool_delay_median_s=4.0, tool_delay_range_s=(0.1, 10)), count=20)
    )
    assert slow["tool_delay_s"]["p50"] > 3.0


def _write(tmp_path, lines):
    path = tmp_path / "bad.jsonl"
    header = {"kind": "agentperf-trajectories", "schema_version": 1, "source": "test"}
    path.write_text(
        "\n".join(json.dumps(x) if not isinstance(x, str) else x for x in [header, *lines]) + "\n"
    )
    return path


GOOD = {
    "trajectory_id": "a",
    "turn": 0,
    "phase": 0,
    "prefix_tokens": 0,
    "new_tokens": 100,
    "output_tokens": 10,
    "reasoning_tokens": None,
    "tool_calls": True,
    "tool_delay_s": 1.0,
}


@pytest.mark.parametrize(
    ("change", "field", "line"),
    [
        ({"output_tokens": -3}, "output_tokens", 2),
        ({"new_tokens": "many"}, "new_tokens", 2),
        ({"tool_delay_s": -1}, "tool_delay_s", 2),
        ({"tool_calls": "yes"}, "tool_calls", 2),
        ({"trajectory_id": ""}, "trajectory_id", 2),
        ({"prefix_tokens": 5}, "prefix_tokens", 2),
        ({"reasoning_tokens": 99}, "reasoning_tokens", 2),
        ({"messages": "hi"}, "messages", 2),
        ({"turn": 4}, "turn", 2),
    ],
)
def test_bad_fields_name_file_line_field_and_value(tmp_path, change, field, line):
    path = _write(tmp_path, [{**GOOD, **change}])
    with pytest.raises(TrajectoryFormatError) as err:
        load_trajectories(path)
    msg = str(err.value)
    assert f"bad.jsonl line {line}" in msg and repr(field) in msg
    assert err.value.field == field


def test_prefix_longer_than_previous_prompt_is_refused(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "turn": 1, "prefix_tokens": 500}])
    with pytest.raises(TrajectoryFormatError, match=r"line 3: 'prefix_tokens'.*previous turn's prompt"):
        load_trajectories(path)


def test_not_json_and_missing_header(tmp_path):
    with pytest.raises(TrajectoryFormatError, match="line 2: not valid JSON"):
        load_trajectories(_write(tmp_path, ["{oops"]))
    path = tmp_path / "noheader.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"line 1.*header"):
        load_trajectories(path)


def test_stats_cli_json(capsys):
    assert main(["trajectories", "stats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trajectories"] == DEFAULT_COUNT and isinstance(out["turns"], int)
    for key in ("input_tokens", "output_tokens", "tool_delay_s", "turns_per_trajectory"):
        assert set(out[key]) >= {"mean", "min", "p5", "p25", "p50", "p75", "p95", "max", "total"}
    assert 0.8 <= out["cached_fraction"] <= 1


def test_synth_cli(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["trajectories", "synth", "--count", "4", "--seed", "9", "--out", str(out)]) == 0
    assert len(load_trajectories(out)) == 4


@pytest.mark.parametrize("case", ["truncated_gz", "corrupt_gz", "directory", "cut_parquet", "latin1"])
def test_unreadable_files_are_trajectory_format_errors_naming_the_file(case, tmp_path):
    """A library user gets the same one-line error as the CLI, not EOFError/IsADirectoryError/gzip's."""
    from agentperf_kit.errors import InputFormatError
    from agentperf_kit.trajectories import default_trajectories, load_trajectories, save_trajectories

    trajs = default_trajectories()[:3]
    if case == "directory":
        path = tmp_path / "set.jsonl"
        path.mkdir()
        want = "directory"
    elif case in ("truncated_gz", "corrupt_gz"):
        path = tmp_path / "set.jsonl.gz"
        save_trajectories(trajs, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if case == "truncated_gz" else data[:10] + b"\xff" * 40)
        want = "truncated or corrupt"
    elif case == "cut_parquet":
        path = tmp_path / "set.parquet"
        save_trajectories(trajs, path)
        path.write_bytes(path.read_bytes()[:-100])
        want = "Parquet"
    else:
        path = tmp_path / "set.jsonl"
        save_trajectories(trajs, path)
        path.write_bytes(path.read_bytes() + "\n\u00e9".encode("latin-1"))
        want = "UTF-8"
    with pytest.raises(TrajectoryFormatError) as info:
        load_trajectories(path)
    assert isinstance(info.value, InputFormatError)
    assert str(path) in str(info.value) and want in str(info.value)
