"""``agentperf presets`` lists every deployment and tier preset the library knows; trajectory files are named
by their format."""

from __future__ import annotations

import json

import pytest

from agentperf_kit.cli import main
from agentperf_kit.errors import ConfigError
from agentperf_kit.sim.presets import list_deployments
from agentperf_kit.slo import tier_preset_names
from agentperf_kit.trajectories import save_trajectories, synthesize


def test_presets_lists_every_deployment_and_tier_preset(capsys):
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data["deployments"]] == list_deployments()
    assert sorted(t["name"] for t in data["tier_presets"]) == tier_preset_names()
    assert sum(d["default"] for d in data["deployments"]) == 1
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in list_deployments() + tier_preset_names())
    assert "slo1=20/10" in text  # aa-dsv4pro's first tier, in --tiers syntax


@pytest.mark.parametrize("name", ["set.csv", "set.json", "set"])
def test_a_trajectory_file_name_without_a_known_format_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=r"\.jsonl, \.jsonl\.gz or \.parquet"):
        save_trajectories(synthesize(count=2, seed=1), tmp_path / name)
    assert not (tmp_path / name).exists()
