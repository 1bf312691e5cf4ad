"""``agentperf report`` and ``agentperf compare`` on real sweep directories."""

from __future__ import annotations

import pandas as pd
import pytest

from agentperf_kit.cli import main
from agentperf_kit.report import compare_runs
from agentperf_kit.sweep import SweepConfig, load_sweep, run_sweep

# the band (tests/test_sweep_band.py) is left out: report and compare do not read it
FAST = dict(
    level_duration_s=30,
    warmup_s=5,
    min_trajectories=2,
    min_trajectories_per_agent=1,
    max_agents=64,
    band=False,
)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory, small_sweep):
    """The session's sweep of the 8x H200 system (aa-dsv4pro tiers) and a sweep of another model."""
    base = tmp_path_factory.mktemp("sweeps")
    a = load_sweep(small_sweep)
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


def test_compare_prints_the_lower_bound_marker_as_report_does(small_sweep, capsys):
    """A tier still passing at the top level is a lower bound: ``compare`` prints ``>=N`` like ``report``."""
    from agentperf_kit.sweep import load_sweep

    tiers = load_sweep(small_sweep).summary["tiers"]
    bounded = [t for t in tiers if t["max_agents_is_lower_bound"]]
    assert bounded, "the small sweep is expected to have a tier still passing at its top level"
    assert main(["compare", str(small_sweep)]) == 0
    out = capsys.readouterr().out
    assert main(["report", str(small_sweep)]) == 0
    report_out = capsys.readouterr().out
    for t in bounded:
        assert f">={t['max_agents']}" in out
        assert f">={t['max_agents']}" in report_out
    assert "sim:h200x8-dsv4pro" in out  # the deployment named, not a bare "sim"


def test_report_html_is_readable_width_with_formatted_numbers(small_sweep):
    import re

    from agentperf_kit.report import format_number, write_html_report

    page = write_html_report(small_sweep).read_text()
    assert re.search(r"max-width:\s*\d+em", page)
    assert not re.search(r"\d\.\d*000\b", page.split("data:image")[0])  # no 25000.000000
    assert [format_number(v) for v in (25000.0, 1443.2, 12.345, 0.48234, float("inf"), None)] == [
        "25,000",
        "1,443",
        "12.3",
        "0.482",
        "inf",
        "-",
    ]
