"""``agentperf report`` and ``agentperf compare`` on real sweep directories."""

from __future__ import annotations

import pandas as pd
import pytest

from agentperf_kit.cli import main
from agentperf_kit.report import compare_runs
from agentperf_kit.sweep import SweepConfig, run_sweep

FAST = dict(level_duration_s=30, warmup_s=5, min_trajectories=2, min_trajectories_per_agent=1, max_agents=64)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweeps")
    a = run_sweep(SweepConfig(out=str(base / "h200"), **FAST), progress=False)
    b = run_sweep(
        SweepConfig(
            out=str(base / "gptoss"), target="sim:h200x8-gptoss120b", tiers="aa-gpt-oss-120b", **FAST
        ),
        progress=False,
    )
    return a, b


def test_compare_is_one_row_per_sweep_and_tier(two_sweeps, capsys, tmp_path):
    a, b = two_sweeps
    table = compare_runs([a.directory, b.directory])
    assert len(table) == 3 + 4
    got = table.set_index(["run", "tier"]).max_agents
    for res in (a, b):
        for t in res.summary["tiers"]:
            assert got[(str(res.directory), t["name"])] == t["max_agents"]
    assert main(["compare", str(a.directory), str(b.directory), "--csv", str(tmp_path / "c.csv")]) == 0
    assert "h200x8-gptoss120b" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "c.csv")) == 7


def test_report_prints_tables_and_writes_html(two_sweeps, capsys):
    a, _ = two_sweeps
    assert main(["report", str(a.directory)]) == 0
    out = capsys.readouterr().out
    assert "max agents" in out
    page = (a.directory / "report.html").read_text()
    assert "<table" in page and "data:image/png;base64," in page
    assert str(a.summary["tiers"][0]["max_agents"]) in page


def test_report_on_a_non_sweep_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err
