"""Calibration scenarios and the efficiency fit (benchmarks/calibrate.py runs the full fit)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from agentperf_kit.sim.calibration import (
    CalibrationPoint,
    calibration_points,
    calibration_table,
    closed_loop,
    decode_at_speed_tps_per_gpu,
    error_by_regime,
    fit_efficiency,
    prefill_tps_per_gpu,
    simulate_point,
)
from agentperf_kit.sim.engine import Engine
from agentperf_kit.sim.presets import Efficiency, get_deployment


def test_points_are_the_published_figures_and_resolve():
    pts = calibration_points()
    # 14 DeepSeek-V3/R1 throughput points + 2 single-stream DeepSeek-V4-Pro latency points (issue 12)
    assert len(pts) == 16
    assert {p.regime for p in pts} == {
        "prefill",
        "decode-throughput",
        "long-context-decode",
        "interactive",
        "single-stream",
    }
    held = [p for p in pts if p.holdout]
    assert 0 < len(held) < len(pts) / 2
    assert len({p.id for p in pts}) == len(pts)
    for p in pts:
        get_deployment(p.deployment)
        assert p.published > 0 and p.depends_on
    by_id = {p.id: p for p in pts}
    assert by_id["deepseek-h800-decode"].published == pytest.approx(14_800 / 8)


def test_prefill_scenario_by_hand():
    dep = get_deployment("h100x24-dsv3")
    eff = Efficiency("t", 0.4, 0.7)
    eng = Engine(dep, eff, lambda *a: None, lambda *a: None)
    budget = dep.max_num_batched_tokens
    r = budget / 2000
    t = eng.step_time(budget, 0.0, r * 2000 * 2000 / 2, r * 2000)
    assert prefill_tps_per_gpu(dep, eff, 2000, 0.0) == pytest.approx(r * 2000 / t / dep.accelerator_count)
    # cache hits skip prefill work: more input tokens per second at the same budget
    assert prefill_tps_per_gpu(dep, eff, 2000, 0.5) > prefill_tps_per_gpu(dep, eff, 2000, 0.0)


def test_decode_at_speed_is_the_largest_batch_meeting_the_speed():
    dep = get_deployment("h800x144-dsv3")
    eff = Efficiency("t", 0.3, 0.7)
    eng = Engine(dep, eff, lambda *a: None, lambda *a: None)
    tps = decode_at_speed_tps_per_gpu(dep, eff, 5000, 21)
    batch = round(tps * dep.accelerator_count / 21)  # about tps * GPUs / speed
    assert 1.0 / eng.decode_step_time(batch, batch * 5000) >= 21 * 0.98  # MTP-aware (this pool uses MTP)
    assert 1.0 / eng.decode_step_time(int(batch * 1.05) + 2, (int(batch * 1.05) + 2) * 5000) < 21
    assert math.isnan(decode_at_speed_tps_per_gpu(dep, eff, 5000, 10_000))


def test_closed_loop_trades_user_speed_for_throughput():
    dep = get_deployment("b200x8-dsv3")
    eff = Efficiency("t", 0.3, 0.7)
    few = closed_loop(dep, eff, 4, 1024, 256)
    many = closed_loop(dep, eff, 128, 1024, 256)
    assert many[0] > 4 * few[0]  # throughput per GPU grows with concurrency
    assert many[1] < few[1]  # per-user speed falls


def test_fit_recovers_known_factors():
    """Points generated from known factors are fitted back exactly (the fit can fail)."""
    truth = Efficiency("truth", 0.35, 0.6, 1.5)
    prefill = tuple(p for p in calibration_points() if p.scenario == "prefill")[:2]
    # MLA decode is compute-bound in the model; a small-batch DeepSeek-V4-Pro decode is bandwidth-bound
    decode = tuple(
        CalibrationPoint(
            f"bw{b}",
            "test",
            "test",
            1.0,
            "h200x8-dsv4pro",
            "decode_batch",
            "none",
            {"context": 30000.0, "batch_per_gpu": float(b)},
        )
        for b in (1, 4)
    )
    assert simulate_point(decode[0], Efficiency("x", 0.35, 0.7)) > simulate_point(decode[0], truth)
    pts = prefill + decode
    fake = tuple(dataclasses.replace(p, published=simulate_point(p, truth)) for p in pts)
    grid_c = (0.25, 0.3, 0.35, 0.4, 0.45)
    grid_b = (0.5, 0.55, 0.6, 0.65, 0.7)
    grid_l = (0.75, 1.0, 1.5, 2.0)
    fit = fit_efficiency(fake, compute_grid=grid_c, bandwidth_grid=grid_b, latency_grid=grid_l)
    assert (fit["compute"], fit["bandwidth"], fit["latency"]) == (0.35, 0.6, 1.5)
    assert fit["rms_log_error"] == pytest.approx(0.0, abs=1e-9)
    assert fit["band"]["low"] == {"compute": 0.35, "bandwidth": 0.6, "latency": 1.5}
    table = calibration_table(truth, fake)
    assert table["error_pct"].abs().max() < 1e-6 and table["within_25pct"].all()


def test_fit_leaves_held_out_points_out_and_reports_errors_per_regime():
    pts = calibration_points()
    truth = Efficiency("truth", 0.3, 0.6, 1.0)
    pick = [p for p in pts if p.scenario in ("prefill", "decode_batch")][:5]
    fake = tuple(dataclasses.replace(p, published=simulate_point(p, truth), holdout=False) for p in pick)
    # a held-out point far off does not move the fit (it is not fitted to) ...
    off = dataclasses.replace(fake[0], id="off", published=fake[0].published * 10, holdout=True)
    fit = fit_efficiency(
        tuple(p for p in (*fake, off) if not p.holdout),
        compute_grid=(0.25, 0.3, 0.35),
        bandwidth_grid=(0.55, 0.6, 0.65),
        latency_grid=(1.0,),
    )
    assert (fit["compute"], fit["bandwidth"]) == (0.3, 0.6)
    # ... and shows up as held-out error
    table = calibration_table(truth, (*fake, off))
    by = error_by_regime(table).set_index("group")
    assert by.loc["held out", "typical_error_x"] == pytest.approx(10.0, rel=1e-6)
    assert by.loc["fit", "typical_error_x"] == pytest.approx(1.0, abs=1e-9)


def test_efficiency_sets_respect_the_cited_kernel_caps():
    from agentperf_kit.sim.presets import efficiency, physics

    caps = physics()["caps"]
    for name in ("low", "mid", "high"):
        e = efficiency(name)
        assert e.compute <= caps["compute"] and e.bandwidth <= caps["bandwidth"], name
