"""The low-high band around a simulated sweep's answer, and AA's published figure beside it."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from agentperf_kit.sweep import SweepConfig, format_summary, load_sweep, run_sweep
from agentperf_kit.sweep_band import (
    BAND_RESOLUTION,
    GUIDED_PROBES,
    EndPlan,
    published_for,
    ramp_anchor,
    search_end,
)


def _probe(boundary: int, slope: float = 0.6):
    """A monotone level: passes up to ``boundary``; margin slope x log((boundary + 0.5) / n)."""
    seen: list[int] = []

    def probe(n: int) -> tuple[bool, float]:
        assert n >= 1 and n not in seen, (n, seen)  # a level is measured once
        seen.append(n)
        return n <= boundary, slope * math.log((boundary + 0.5) / n)

    return probe, seen


def _within(answer: int, boundary: int) -> bool:
    return answer <= boundary and boundary - answer <= max(1, math.floor(answer * BAND_RESOLUTION))


@pytest.mark.parametrize("boundary", [0, 1, 5, 37, 100, 250])
@pytest.mark.parametrize("guess_factor", [0.3, 0.9, 1.0, 1.4, 3.0])
def test_an_end_is_bracketed_to_the_resolution_whatever_the_first_guess(boundary, guess_factor):
    probe, seen = _probe(boundary)
    guess = max(1, round(max(boundary, 1) * guess_factor))
    ans, lb = search_end(probe, EndPlan("t", guess, 0.6, lo=0, hi=None, top=4096))
    assert not lb and _within(ans, boundary)
    assert ans == 0 or ans in seen  # the end is a measured pass
    assert len(seen) <= GUIDED_PROBES + 12


@pytest.mark.parametrize("boundary", [40, 72, 300])
def test_a_good_guess_and_margins_close_the_bracket_in_few_levels(boundary):
    probe, seen = _probe(boundary)
    ans, _ = search_end(probe, EndPlan("t", round(boundary * 1.1), 0.6, lo=0, hi=None, top=4096))
    assert _within(ans, boundary) and len(seen) <= 3, seen


def test_assumed_bounds_and_the_top():
    probe, seen = _probe(10**9)
    assert search_end(probe, EndPlan("t", 50, 0.6, lo=32, hi=None, top=256)) == (256, True)
    assert max(seen) == 256  # never above the top: a lower bound there
    probe, seen = _probe(30)
    ans, lb = search_end(probe, EndPlan("t", 10, 0.6, lo=0, hi=40, top=39))
    assert _within(ans, 30) and not lb and max(seen) < 40  # hi is assumed to fail, never measured
    probe, seen = _probe(0)
    assert search_end(probe, EndPlan("t", 0, 0.6, lo=0, hi=1, top=0)) == (0, False) and seen == []


def test_margins_that_predict_nothing_fall_back_to_doubling_and_bisection():
    seen: list[int] = []

    def probe(n: int) -> tuple[bool, float]:
        seen.append(n)
        return n <= 77, math.nan

    ans, lb = search_end(probe, EndPlan("t", 20, 0.6, lo=0, hi=None, top=4096))
    assert not lb and _within(ans, 77) and len(seen) <= 12


def test_ramp_anchor_interpolates_the_margin_in_log_n():
    def row(v: str, m: float) -> dict:
        return {"verdict_t": v, "t_margin_speed": m, "t_margin_ttft": 5.0}

    rows = {16: row("pass", 0.6), 32: row("pass", 0.2), 64: row("fail", -0.2)}
    anchor, slope, p, f = ramp_anchor(rows, "t")
    assert (
        (p, f) == (32, 64)
        and anchor == pytest.approx(32 * math.sqrt(2))
        and slope == pytest.approx(0.4 / math.log(2))
    )
    assert ramp_anchor({1: row("fail", -1.0)}, "t")[0] == 0
    assert ramp_anchor({1: row("pass", 1.0), 2: row("pass", 0.5)}, "t")[:3] == (2.0, 1.0, 2)


def test_published_figure_only_for_the_same_accelerator_model_and_aa_tiers():
    pub = published_for("GB300", "deepseek-v4-pro", "aa-dsv4pro", "slo1")
    assert pub["published_agents_per_accelerator"] == 57.5 and pub["published_agents_per_mw"] == 61354
    assert published_for("GB300", "deepseek-v4-pro", "aa-dsv4pro", "slo2") == {}
    assert published_for("GB300", "gpt-oss-120b", "aa-dsv4pro", "slo1") == {}
    assert published_for("GB300", "deepseek-v4-pro", "nvidia-blog-dsv4pro", "slo1") == {}
    assert published_for("H200", "deepseek-v4-pro", "aa-dsv4pro", "slo1")["published_agents_per_mw"] == 2594


def test_simulated_sweep_carries_its_band_and_prints_it(tmp_path, monkeypatch, small_sweep):
    # the session's small sweep has these settings and ran inline (tests/conftest.py sets
    # AGENTPERF_SWEEP_WORKERS=0 unless the caller set it)
    fast = dict(level_duration_s=60, warmup_s=10, min_trajectories=5, min_trajectories_per_agent=1)
    out = tmp_path / "s"
    monkeypatch.setenv("AGENTPERF_SWEEP_WORKERS", "2")  # the band beside the search, in worker processes
    res = run_sweep(SweepConfig(out=str(out), max_agents=32, **fast), progress=False)
    # inline (no workers): the same levels measured and the same band
    inline = load_sweep(small_sweep)
    if inline.summary["side_job_workers"]:  # the caller set AGENTPERF_SWEEP_WORKERS: run one inline here
        monkeypatch.setenv("AGENTPERF_SWEEP_WORKERS", "0")
        inline = run_sweep(SweepConfig(out=str(tmp_path / "i"), max_agents=32, **fast), progress=False)
    assert inline.summary["side_job_workers"] == 0 and res.summary["side_job_workers"] == 2
    assert inline.summary["config"] == res.summary["config"]
    band_cols = ["band_low_agents", "band_high_agents", "band_low_is_lower_bound", "band_high_is_lower_bound"]
    assert [{c: t[c] for c in band_cols} for t in inline.summary["tiers"]] == [
        {c: t[c] for c in band_cols} for t in res.summary["tiers"]
    ]
    for eff in ("low", "high"):
        ns = [
            pd.read_csv(d / "band" / eff / "levels.csv")["concurrency"].tolist()
            for d in (out, inline.directory)
        ]
        assert ns[0] == ns[1]
    assert pd.read_csv(out / "tasks.csv").equals(pd.read_csv(inline.directory / "tasks.csv"))
    for t in res.summary["tiers"]:
        lo, mid, hi = t["band_low_agents"], t["max_agents"], t["band_high_agents"]
        assert lo <= mid <= hi, t
        assert t["band_low_agents_per_accelerator"] == pytest.approx(lo / 8)
    slo1 = res.summary["tiers"][0]
    assert slo1["band_low_agents"] < slo1["band_high_agents"]  # the sets differ on the default system
    assert slo1["published_agents_per_accelerator"] == 1.4  # AA's H200 figure
    # band levels are full levels of their own, written apart, and reused on resume; they keep their
    # manifest and judged row (level.json), not their request rows (docs/sweep.md "Disk")
    assert (out / "band" / "low" / "levels.csv").exists() and (out / "band" / "high" / "levels.csv").exists()
    band_dirs = sorted((out / "band").glob("*/levels/n*_e*"))
    assert band_dirs and not list((out / "band").rglob("requests.*"))
    assert all((d / "manifest.json").exists() for d in band_dirs)
    rows_before = {eff: pd.read_csv(out / "band" / eff / "levels.csv") for eff in ("low", "high")}
    stamps = {p: p.stat().st_mtime_ns for p in (out / "band").rglob("level.json")}
    assert len(stamps) == sum(len(r) for r in rows_before.values())  # one per level row
    again = run_sweep(SweepConfig(out=str(out), max_agents=32, **fast), progress=False)
    assert again.summary["levels_measured_this_run"] == 0
    # nothing measured again under either set: every band level's row reused as written
    assert {p: p.stat().st_mtime_ns for p in (out / "band").rglob("level.json")} == stamps
    for eff in ("low", "high"):  # the reused rows are the rows measured (the file read back as written)
        pd.testing.assert_frame_equal(pd.read_csv(out / "band" / eff / "levels.csv"), rows_before[eff])
    assert [t["band_high_agents"] for t in again.summary["tiers"]] == [
        t["band_high_agents"] for t in res.summary["tiers"]
    ]
    text = format_summary(load_sweep(out).summary)
    assert "band low-high" in text and "AA /accel" in text and "1.40" in text
    # without the band: no band columns, and the configuration still resumes
    plain = run_sweep(SweepConfig(out=str(out), max_agents=32, band=False, **fast), progress=False)
    assert "band_low_agents" not in plain.summary["tiers"][0]
    assert json.loads((out / "summary.json").read_text())["tiers"][0]["published_agents_per_mw"] == 2594


def test_band_levels_stop_once_every_tier_is_decided_and_find_the_same_ends(tmp_path, monkeypatch):
    """The band's levels stop at the interim looks once every tier's verdict is decided (no band end needs
    an AA-valid window); ``early_stop=False`` runs them in full. On the default system (AA's rules) both
    find the same ends (within the band's resolution), the stopped way with fewer simulated requests, and
    the summary says how many stopped."""
    monkeypatch.setenv("AGENTPERF_SWEEP_WORKERS", "0")
    runs = {}
    for early in (True, False):
        res = run_sweep(SweepConfig(out=str(tmp_path / f"e{int(early)}"), early_stop=early), progress=False)
        bands = {}
        for eff in ("low", "high"):
            lv = pd.read_csv(res.directory / "band" / eff / "levels.csv")
            requests = 0
            for d in sorted((res.directory / "band" / eff / "levels").glob("n*_e*")):
                requests += json.loads((d / "manifest.json").read_text())["sim"]["requests"]
            bands[eff] = (lv["stopped_early"].notna().sum(), len(lv), requests)
        ends = [(t["band_low_agents"], t["band_high_agents"]) for t in res.summary["tiers"]]
        runs[early] = (bands, ends, res.summary["notes"])
    (stopped, full) = runs[True], runs[False]
    # the same ends within the band's resolution (the sweep's own ramp, whose margins place the band's first
    # probes, is also judged on cut windows with early stop: docs/sweep.md)
    for a, b in zip(sum(stopped[1], ()), sum(full[1], ())):
        assert abs(a - b) <= max(1, math.floor(min(a, b) * BAND_RESOLUTION)), (stopped[1], full[1])
    assert all(n == 0 for n, _, _ in full[0].values())  # --no-early-stop: every band level in full
    assert sum(n for n, _, _ in stopped[0].values()) > 0
    assert sum(r for _, _, r in stopped[0].values()) < sum(r for _, _, r in full[0].values())
    note = next(x for x in stopped[2] if x.startswith("band: "))
    n_low, levels_low, _ = stopped[0]["low"]
    assert f"{levels_low} levels under the low set ({n_low} stopped early)" in note
    assert "do not meet AA's rules" in note
