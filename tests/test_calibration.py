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
    fit_efficiency,
    prefill_tps_per_gpu,
    simulate_point,
)
from agentperf_kit.sim.engine import Engine
from agentperf_kit.sim.presets import Efficiency, get_deployment


def test_points_are_the_published_v3_r1_figures_and_resolve():
    pts = calibration_points()
    assert len(pts) == 14
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
    assert 1.0 / eng.step_time(batch, batch * 5000, 0, 0) >= 21 * 0.98
    assert 1.0 / eng.step_time(int(batch * 1.05) + 2, (int(batch * 1.05) + 2) * 5000, 0, 0) < 21
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
    truth = Efficiency("truth", 0.35, 0.6)
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
    fit = fit_efficiency(fake, compute_grid=grid_c, bandwidth_grid=grid_b)
    assert (fit["compute"], fit["bandwidth"]) == (0.35, 0.6)
    assert fit["rms_log_error"] == pytest.approx(0.0, abs=1e-9)
    assert fit["band"]["low"] == {"compute": 0.35, "bandwidth": 0.6}
    table = calibration_table(truth, fake)
    assert table["error_pct"].abs().max() < 1e-6 and table["within_25pct"].all()
