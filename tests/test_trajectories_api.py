"""The public names of agentperf_kit.trajectories, the default set's package data, io edge cases."""

from __future__ import annotations

import json

import pytest

import agentperf_kit.trajectories as trajectories
from agentperf_kit.trajectories import (
    DEFAULT_TRAJECTORIES_PATH,
    TrajectoryFormatError,
    Turn,
    default_trajectories,
    load_trajectories,
    save_trajectories,
    synthesize,
)


def test_public_names_exist_and_contracts_are_kept():
    for name in trajectories.__all__:
        assert hasattr(trajectories, name), name
    assert {
        "Turn",
        "Trajectory",
        "TrajectoryFormatError",
        "load_trajectories",
        "save_trajectories",
        "default_trajectories",
        "DEFAULT_TRAJECTORIES_PATH",
        "synthesize",
        "SynthConfig",
        "trajectory_stats",
        "fit_context",
        "import_trajectories",
    } <= set(trajectories.__all__)


def test_default_set_is_package_data_and_cached():
    assert DEFAULT_TRAJECTORIES_PATH.is_file()
    assert DEFAULT_TRAJECTORIES_PATH.parent.name == "data"
    assert DEFAULT_TRAJECTORIES_PATH.stat().st_size < 3_000_000
    a, b = default_trajectories(), default_trajectories()
    assert a == b and a is not b  # a fresh list each call; the parsed set is cached
    assert a[0] is b[0]
    assert 200 <= len(a) <= 1000 and all(t.source == "synthetic" for t in a)


def test_parquet_keeps_header_meta_and_messages(tmp_path):
    trajs = synthesize(count=2, seed=3)
    trajs[0].turns[:] = [
        Turn(
            phase=0,
            prefix_tokens=0,
            new_tokens=10,
            output_tokens=2,
            messages=[{"role": "user", "content": "hi"}],
        )
    ]
    path = save_trajectories(trajs, tmp_path / "s.parquet", meta={"note": "x"})
    back = load_trajectories(path)
    assert back[0].turns[0].messages == [{"role": "user", "content": "hi"}]
    assert back[1].turns[0].messages is None
    assert [t.turns for t in back] == [t.turns for t in trajs]


def test_unknown_schema_version_says_so(tmp_path):
    path = tmp_path / "v9.jsonl"
    path.write_text(json.dumps({"kind": "agentperf-trajectories", "schema_version": 9}) + "\n")
    with pytest.raises(TrajectoryFormatError, match="'schema_version' 9 is not supported") as err:
        load_trajectories(path)
    assert err.value.line == 1 and err.value.field == "schema_version"
    with pytest.raises(FileNotFoundError):
        load_trajectories(tmp_path / "absent.jsonl")


def test_default_set_regenerates_byte_for_byte(tmp_path):
    """`agentperf trajectories synth` with no options rewrites the shipped default set exactly."""
    from pathlib import Path

    from agentperf_kit.cli import main

    out = tmp_path / "default.jsonl.gz"
    assert main(["trajectories", "synth", "--out", str(out)]) == 0
    shipped = DEFAULT_TRAJECTORIES_PATH.read_bytes()
    assert out.read_bytes() == shipped
    sample = Path(__file__).resolve().parent.parent / "sample_data" / "default_trajectories.jsonl.gz"
    assert sample.read_bytes() == shipped
