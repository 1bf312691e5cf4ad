"""The digital twin: the step-time fit, twin presets in the engine and the sweep, and ``agentperf profile``
against our own serve-sim (a real loopback server)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request

import numpy as np
import pandas as pd
import pytest

from agentperf_kit.errors import ConfigError, MeasurementError
from agentperf_kit.sim.engine import SimRequest
from agentperf_kit.sim.presets import efficiency, get_deployment
from agentperf_kit.sim.twin import StepModel, TwinEngine, dump_toml, load_twin
from agentperf_kit.twin.fit import Observation, fit_step_time

TRUE = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "context_token_s": 1e-6}


def _obs() -> list[Observation]:
    # durations computed by hand from TRUE (seconds)
    rows = [
        ("decode", {"step_s": 1, "decode_seq_s": 1, "context_token_s": 1000}, 0.01 + 0.002 + 0.001),
        ("decode", {"step_s": 1, "decode_seq_s": 4, "context_token_s": 4000}, 0.01 + 0.008 + 0.004),
        ("decode", {"step_s": 1, "decode_seq_s": 8, "context_token_s": 2000}, 0.01 + 0.016 + 0.002),
        ("prefill", {"step_s": 1, "prefill_token_s": 1000, "context_token_s": 1000}, 0.01 + 0.1 + 0.001),
        ("prefill", {"step_s": 2, "prefill_token_s": 3000, "context_token_s": 5000}, 0.02 + 0.3 + 0.005),
        ("prefill", {"step_s": 1, "prefill_token_s": 200, "context_token_s": 8200}, 0.01 + 0.02 + 0.0082),
    ]
    return [Observation(k, x, y) for k, x, y in rows]


def test_fit_recovers_hand_computed_coefficients():
    fit = fit_step_time(_obs())
    for term, value in TRUE.items():
        assert fit.coef[term] == pytest.approx(value, rel=1e-6), term
        assert fit.se[term] < 1e-6 * max(value, 1e-3)
    # terms no row exercises are not identified: 0 +- 0
    assert set(fit.identified) == set(TRUE)
    assert fit.coef["prefill_pair_s"] == 0 and fit.se["request_s"] == 0
    assert fit.rms_rel < 1e-6


def test_fit_standard_errors_cover_the_truth_under_noise():
    # +-3 % alternating error on every row: the estimates move, and the 95 % intervals still hold the truth
    noisy = [Observation(o.kind, o.x, o.seconds * (1.03 if i % 2 else 0.97)) for i, o in enumerate(_obs())]
    noisy += [Observation(o.kind, o.x, o.seconds * (0.98 if i % 2 else 1.02)) for i, o in enumerate(_obs())]
    fit = fit_step_time(noisy)
    assert 0.01 < fit.rms_rel < 0.05
    for term, value in TRUE.items():
        assert fit.se[term] > 0
        assert abs(fit.coef[term] - value) <= 1.96 * fit.se[term] + 1e-12, term


def test_additive_data_keep_the_additive_form():
    # rows made by the additive form: the overlap form's 2 extra terms cannot improve on them
    fit = fit_step_time(_obs())
    assert fit.form == "additive"
    assert fit.coef["mem_s"] == 0 and fit.coef["overlap"] == 0 and "overlap" not in fit.identified


# a step model whose mixed steps overlap (a roofline-like engine: weights streamed while a prefill computes)
OVER = StepModel(step_s=0.002, prefill_token_s=4e-5, decode_seq_s=1e-4, context_token_s=2e-8,
                 prefill_pair_s=1e-10, mem_s=0.005, overlap=0.8)  # fmt: skip


def _over_obs(noise: float = 0.0) -> list[Observation]:
    """Rows the profiler makes (prefill requests with a fixed request cost, pure decode steps, mixed
    steps), timed by hand through :meth:`StepModel.time` (one step each; + 0.003 s per request)."""
    rows = []
    for i, p in enumerate((32, 128, 512, 2048, 4096, 8000)):
        x = {"step_s": 1, "prefill_token_s": p, "prefill_pair_s": p * p / 2, "context_token_s": p,
             "request_s": 1}  # fmt: skip
        rows.append(("prefill", x, 0.003 + OVER.time(p, 0, p, p * p / 2), i))
    for i, (b, c) in enumerate(((1, 100), (4, 800), (16, 5000), (32, 40000), (64, 200000))):
        rows.append(
            ("decode", {"step_s": 1, "decode_seq_s": b, "context_token_s": c}, OVER.time(0, b, c, 0), i)
        )
    for i, (b, p) in enumerate(((4, 128), (4, 512), (32, 128), (32, 512), (32, 2048), (4, 2048))):
        c = b * 100
        x = {"step_s": 1, "decode_seq_s": b, "prefill_token_s": p, "prefill_pair_s": p * p / 2,
             "context_token_s": c + p}  # fmt: skip
        rows.append(("mixed", x, OVER.time(p, b, c + p, p * p / 2), i))
    return [Observation(k, x, y * (1 + noise * (-1) ** i)) for k, x, y, i in rows]


def test_fit_recovers_the_overlap_of_mixed_steps():
    fit = fit_step_time(_over_obs())
    assert fit.form == "overlap" and fit.overlap_p_value < 0.05
    for term in ("step_s", "mem_s", "prefill_token_s", "decode_seq_s", "overlap"):
        assert fit.coef[term] == pytest.approx(getattr(OVER, term), rel=1e-3), term
    assert fit.coef["request_s"] == pytest.approx(0.003, rel=1e-3)
    assert fit.rms_rel < 1e-4
    # the additive form cannot: a mixed step of 32 decoders and a 2,048-token prefill is not the sum
    add = fit_step_time([o for o in _over_obs() if o.kind != "mixed"])
    mixed = OVER.time(2048, 32, 3200 + 2048, 2048**2 / 2)
    assert abs(fit.model.time(2048, 32, 3200 + 2048, 2048**2 / 2) / mixed - 1) < 1e-3
    assert add.form == "overlap" or abs(add.model.time(2048, 32, 5248, 2048**2 / 2) / mixed - 1) > 0.01


def test_overlap_fit_intervals_hold_the_truth_under_noise():
    fit = fit_step_time(_over_obs(0.02) + _over_obs(-0.01))
    assert fit.form == "overlap"
    for term in ("overlap", "prefill_token_s", "decode_seq_s"):
        assert abs(fit.coef[term] - getattr(OVER, term)) <= 1.96 * fit.se[term] + 1e-12, term


def test_fit_needs_more_rows_than_terms():
    with pytest.raises(MeasurementError, match="more observations than terms"):
        fit_step_time(_obs()[:3])


def _write_twin(path, step, se=None, **engine) -> str:
    data = {
        "kind": "agentperf-twin",
        "version": 1,
        "model": "m",
        "engine": {
            "max_num_seqs": 8,
            "max_num_batched_tokens": 512,
            "kv_capacity_tokens": 100_000,
            "max_context_tokens": 8192,
            **engine,
        },
        "step": step,
        "step_se": se or {},
        "band": {"z": 2.0},
    }
    path.write_text(dump_toml(data))
    return str(path)


def test_twin_engine_step_time_is_the_fitted_model(tmp_path):
    step = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "context_token_s": 1e-6,
            "prefill_pair_s": 1e-8}  # fmt: skip
    dep = get_deployment(_write_twin(tmp_path / "t.toml", step))
    done = []
    eng = TwinEngine(dep, efficiency("mid"), lambda r, t: done.append(t), lambda *a: None)
    eng.submit(SimRequest("k", 1, 100, 0, 3, 0.0))
    while eng.has_work:
        eng.advance(math.inf)
    # one prefill step (100 tokens on nothing cached: 5,000 pairs, 100 KV tokens read), then two decode
    # steps of one sequence at contexts 101 and 102
    t1 = 0.01 + 1e-4 * 100 + 1e-6 * 100 + 1e-8 * 5000
    t2 = 0.01 + 2e-3 + 1e-6 * 101
    t3 = 0.01 + 2e-3 + 1e-6 * 102
    assert done == [pytest.approx(t1 + t2 + t3, rel=1e-12)]


def test_twin_engine_mixed_step_hides_the_overlap(tmp_path):
    # one step: 10 decoders (context 1,000) and a 1,000-token prefill on nothing cached
    step = {"step_s": 0.001, "prefill_token_s": 2e-5, "decode_seq_s": 1e-4, "context_token_s": 1e-6,
            "mem_s": 0.004, "overlap": 0.75}  # fmt: skip
    dep = get_deployment(_write_twin(tmp_path / "t.toml", step))
    eng = TwinEngine(dep, efficiency("mid"), lambda *a: None, lambda *a: None)
    m = 0.004 + 1e-4 * 10 + 1e-6 * (1000 + 1000)  # memory side: weights, decoders, KV read
    x = 2e-5 * 1000  # prefill compute (the larger part): a quarter of m shows
    t, slope = eng._step(1010, 10, 1.0, 1000, 1000 * 1000 / 2, 1000)
    assert t == pytest.approx(0.001 + x + 0.25 * m, rel=1e-12)
    assert slope == pytest.approx(0.25 * 1e-6)
    # pure decode: the memory side in full
    assert eng.decode_step_time(10, 1000) == pytest.approx(0.001 + 0.004 + 1e-3 + 1e-3, rel=1e-12)


def test_request_cost_is_part_of_the_simulated_ttft(tmp_path):
    from agentperf_kit.agents import RunRules
    from agentperf_kit.sim.virtual import run_sim_level
    from agentperf_kit.trajectories import default_trajectories

    step = {"step_s": 0.01, "prefill_token_s": 1e-5, "decode_seq_s": 2e-3}
    ttft = {}
    for cost in (0.0, 0.25):
        path = _write_twin(tmp_path / f"t{cost}.toml", step, max_context_tokens=100_000)
        with open(path, "a") as f:
            f.write(f"\n[fit]\nrequest_s = {cost}\n")
        assert load_twin(path).request_s == cost
        rules = RunRules(warmup_s=0, duration_s=30, min_trajectories=1, min_trajectories_per_agent=0)
        res = run_sim_level(default_trajectories()[:3], 1, rules, deployment=path, seed=1)
        ttft[cost] = res.requests["ttft_s"].to_numpy()[:5]
    # one agent: every request waits the request cost more before the engine sees it, nothing else changes
    assert ttft[0.25] - ttft[0.0] == pytest.approx([0.25] * 5, abs=1e-9)


def test_twin_band_brackets_the_estimate(tmp_path):
    step = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "context_token_s": 0.0}
    se = {"step_s": 0.001, "prefill_token_s": 1e-5, "decode_seq_s": 0.002, "context_token_s": 1e-7}
    dep = load_twin(_write_twin(tmp_path / "t.toml", step, se))
    # slow end: the upper bound 0.01 + 2 x 0.001; fast end: 0.01 / (1 + 2 x 0.001 / 0.01)
    assert dep.step_low.step_s == pytest.approx(0.012)
    assert dep.step_high.step_s == pytest.approx(0.01 / 1.2)
    # an SE as large as the estimate: the fast end stays positive (a step is never free)
    assert dep.step_high.decode_seq_s == pytest.approx(2e-3 / 3.0)
    # estimated at 0: 0 .. z x SE
    assert dep.step_low.context_token_s == pytest.approx(2e-7) and dep.step_high.context_token_s == 0.0
    for lo, mid, hi in zip(
        dep.step_low.as_dict().values(),
        dep.step_mid.as_dict().values(),
        dep.step_high.as_dict().values(),
        strict=True,
    ):
        assert lo >= mid >= hi >= 0


def test_a_poorly_determined_twin_still_sweeps(tmp_path):
    # SEs 40-100 times the estimates (a profile on a loaded machine): both ends of the band stay finite
    # and a level under each ends (an exponential interval put step_s at 1e8 s and the run never ended)
    from agentperf_kit.agents import RunRules
    from agentperf_kit.sim.virtual import run_sim_level
    from agentperf_kit.trajectories import default_trajectories

    step = {"step_s": 1e-3, "prefill_token_s": 1e-4, "decode_seq_s": 7e-4}
    se = {"step_s": 0.04, "prefill_token_s": 6e-3, "decode_seq_s": 0.016}
    path = _write_twin(tmp_path / "t.toml", step, se, max_context_tokens=100_000)
    dep = load_twin(path)
    assert dep.step_low.step_s == pytest.approx(1e-3 + 2 * 0.04)
    assert 0 < dep.step_high.step_s < 1e-3
    rules = RunRules(warmup_s=0, duration_s=60, min_trajectories=1, min_trajectories_per_agent=0)
    for eff in ("low", "high"):
        res = run_sim_level(default_trajectories()[:3], 2, rules, deployment=path, efficiency=eff, seed=1)
        assert len(res.requests) > 0


def _twin_validate():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "twin_validate.py"
    spec = importlib.util.spec_from_file_location("twin_validate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_validation_workload_floors_outputs_and_tiers_scale_with_the_twin(tmp_path):
    # the validation's trajectory set keeps every output >= the floor (measurable speeds on a fast
    # server), and --tiers single-stream scales with the twin: a twin twice as slow gets half the speeds
    import argparse

    from agentperf_kit.trajectories import load_trajectories

    tv = _twin_validate()
    args = argparse.Namespace(
        max_context=2048, min_output_tokens=32, tiers="single-stream", level_duration=20, warmup=2,
        max_agents=8, resolution=1, seed=0, min_trajectories=0, min_trajectories_per_agent=0,
        max_extensions=0, drain_timeout=5,
    )  # fmt: skip
    w = tv._workload(args, tmp_path)
    args.trajectories_file = w["path"]
    trajs = load_trajectories(w["path"])
    assert min(t.output_tokens for tr in trajs for t in tr.turns) == 32
    assert max(t.input_tokens + t.output_tokens for tr in trajs for t in tr.turns) <= 2048 - 64
    tiers = {}
    for k in (1, 2):
        step = {"step_s": 5e-4 * k, "prefill_token_s": 2e-6 * k, "decode_seq_s": 5e-4 * k}
        twin = _write_twin(tmp_path / f"t{k}.toml", step, max_num_seqs=4, max_context_tokens=2048)
        spec = tv._single_stream_tiers(twin, args, tmp_path / f"v{k}")
        tiers[k] = {n: tuple(map(float, v.split("/"))) for n, v in (p.split("=") for p in spec.split(","))}
    assert list(tiers[1]) == ["fast", "mid", "slow"]
    one_stream = 1.0 / (5e-4 + 5e-4)  # tok/s: one sequence's decode step is step_s + decode_seq_s
    assert tiers[1]["fast"][0] == pytest.approx(one_stream / 2, rel=0.05)
    assert tiers[1]["mid"][0] == pytest.approx(tiers[1]["fast"][0] / 2, rel=0.05)
    assert tiers[1]["slow"][1] == pytest.approx(tiers[1]["fast"][1] * 20, rel=0.05)
    for name in ("fast", "mid", "slow"):
        assert tiers[2][name][0] == pytest.approx(tiers[1][name][0] / 2, rel=0.05)
        assert tiers[2][name][1] == pytest.approx(tiers[1][name][1] * 2, rel=0.05)


def test_twin_file_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="agentperf profile"):
        get_deployment(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "something-else"\n')
    with pytest.raises(ConfigError, match="not a twin preset"):
        get_deployment(str(bad))


def test_dump_toml_round_trips():
    data = {"a": 1, "b": 2.5, "s": 'q"uote', "l": [1, 2], "t": {"x": True, "sub": {"y": "z"}},
            "rows": [{"k": 1}, {"k": 2}], "nan": math.nan}  # fmt: skip
    back = tomllib.loads(dump_toml(data))
    assert back["t"]["sub"] == {"y": "z"} and back["rows"] == [{"k": 1}, {"k": 2}]
    assert back["s"] == 'q"uote' and math.isnan(back["nan"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_profile_serve_sim_writes_a_twin_that_a_sweep_runs(tmp_path):
    from agentperf_kit.sweep import SweepConfig, run_sweep

    preset = "h100x8-llama70b"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentperf_kit.cli", "serve-sim", "--preset", preset, "--port", str(port),
         "--time-scale", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    out = tmp_path / "twin.toml"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    model = json.loads(r.read())["data"][0]["id"]
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve-sim did not come up"
                time.sleep(0.2)
        cmd = [sys.executable, "-m", "agentperf_kit.cli", "profile", "--target", base, "--model", model,
               "--out", str(out), "--max-context", "4096", "--repeats", "2", "--batch-sizes", "1,4,16",
               "--decode-tokens", "24", "--budget", "60"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    data = tomllib.loads(out.read_text())
    truth = get_deployment(preset)
    assert data["kind"] == "agentperf-twin"
    assert data["engine"]["max_context_tokens"] == 4096
    assert data["provenance"]["time_scale"] == 10.0
    assert data["provenance"]["server"]["agentperf_sim"]["deployment"] == preset
    # the KV probe (tokens held / usage share) lands near the preset's capacity
    assert data["engine"]["kv_capacity_tokens"] == pytest.approx(truth.kv_capacity_tokens, rel=0.1)
    assert len(data["observation"]) >= 10 and data["fit"]["rms_rel_residual"] >= 0
    assert data["step"]["step_s"] > 0
    # short streams and arrivals measured; the prefix cache's 16-token blocks read from cached counts
    kinds = {o["kind"] for o in data["observation"]}
    assert {"stream", "arrival", "prefill_cached"} <= kinds, kinds
    assert "finish_s" in data["fit"]["identified"]
    assert data["engine"]["cache_block_tokens"] == 16
    assert "inferred" in data["provenance"]["limit_sources"]["cache_block_tokens"]
    # serve-sim's cache is bounded by the KV capacity, not one prompt per slot
    assert data["engine"].get("slot_prompt_cache") is False, data["provenance"]["notes"]

    answers, single_speed = {}, {}
    for eff in ("low", "mid", "high"):
        cfg = SweepConfig(
            target=f"sim:{out}",
            efficiency=eff,
            max_context=4096,
            level_duration_s=60,
            warmup_s=10,
            min_trajectories=3,
            min_trajectories_per_agent=1,
            max_agents=64,
            tiers="easy=20/10",
            band=False,  # the three efficiency sets are this test's band
            out=str(tmp_path / f"sweep-{eff}"),
        )
        res = run_sweep(cfg, progress=False)
        answers[eff] = res.summary["tiers"][0]["max_agents"]
        assert res.summary["target"] == f"sim:{out}"
        levels = pd.read_csv(tmp_path / f"sweep-{eff}" / "levels.csv").set_index("concurrency")
        single_speed[eff] = levels.loc[1, "p25_output_speed_tps"]
    assert answers["mid"] > 0
    assert answers["low"] <= answers["mid"] <= answers["high"]
    # the easy tier may not bind below the cap on this system, so the band's ends are checked where they
    # always differ: the fit's uncertainty makes the low end's one-agent speed slower than the high end's
    assert single_speed["low"] < single_speed["mid"] < single_speed["high"], single_speed


def test_robust_fit_resists_one_stalled_row():
    # one decode step measured 10x too long (another process held the CPU): the soft-L1 fit keeps the
    # other rows' answer within 5 %; plain least squares is pulled further
    # expected noise 2 % of each row, as the profiler sets it for decode rows
    rows = [Observation(o.kind, o.x, o.seconds, sigma=0.02 * o.seconds) for o in _obs() + _obs()]
    rows.append(
        Observation("decode", {"step_s": 1, "decode_seq_s": 2, "context_token_s": 500}, 0.145, sigma=0.0029)
    )
    robust = fit_step_time(rows)
    plain = fit_step_time(rows, robust=False)
    err = {t: abs(robust.coef[t] / v - 1) for t, v in TRUE.items()}
    assert max(err.values()) < 0.05, err
    assert abs(plain.coef["step_s"] / 0.01 - 1) > err["step_s"]


@pytest.mark.realserver
@pytest.mark.slow
def test_profile_real_llama_server(tmp_path):
    """``agentperf profile`` against llama.cpp's ``llama-server`` (built by ../shared/real-servers; skipped
    where it is not): engine limits from ``/props``, a twin a sweep loads. Accuracy is the benchmark's
    job (benchmarks/twin_validate.py), not a test's: the figures depend on the machine's load."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("AGENTPERF_REAL_SERVERS", Path.home() / ".cache/agentperf-real-servers"))
    binary, model = root / "llama-build/bin/llama-server", root / "model/tiny.gguf"
    if not (binary.exists() and model.exists()):
        pytest.skip(f"llama-server not set up under {root} (../shared/real-servers/setup_llama_server.sh)")
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--alias", "tiny",
         "--metrics", "-np", "4", "-c", "16384", "-t", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    out = tmp_path / "twin.toml"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "llama-server did not come up"
                time.sleep(0.2)
        cmd = [sys.executable, "-m", "agentperf_kit.cli", "profile", "--target", base, "--model", "tiny",
               "--out", str(out), "--max-context", "1024", "--repeats", "2", "--chunk-tokens", "2048",
               "--decode-tokens", "64"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    data = tomllib.loads(out.read_text())
    assert data["engine"]["max_num_seqs"] == 4  # /props total_slots
    assert data["engine"]["kv_capacity_tokens"] == 16384  # n_ctx per slot x slots
    assert data["provenance"]["server"]["props"]["total_slots"] == 4
    dep = load_twin(out)
    assert dep.step_low.step_s >= dep.step_mid.step_s >= dep.step_high.step_s


def _real_server_cmd(kind: str, port: int) -> list[str]:
    """The command that starts a real server of ``kind`` (``llama`` or ``vllm``, as
    ../shared/real-servers/start_*.sh do) on ``port``; skips the test where it is not set up."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("AGENTPERF_REAL_SERVERS", Path.home() / ".cache/agentperf-real-servers"))
    if kind == "llama":
        binary, model = root / "llama-build/bin/llama-server", root / "model/tiny.gguf"
        if not (binary.exists() and model.exists()):
            pytest.skip(
                f"llama-server not set up under {root} (../shared/real-servers/setup_llama_server.sh)"
            )
        return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--alias",
                "tiny", "--metrics", "-np", "4", "-c", "16384", "-t", "2"]  # fmt: skip
    python, model = root / "venv-vllm/bin/python", root / "model/hf"
    if not (python.exists() and model.exists()):
        pytest.skip(f"vLLM CPU not set up under {root} (../shared/real-servers/setup_vllm_cpu.sh)")
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--max-model-len", "4096", "--enable-prefix-caching",
            "--enable-prompt-tokens-details"]  # fmt: skip


@pytest.mark.realserver
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "vllm"])
def test_real_server_validation_runs_end_to_end(tmp_path, kind):
    """benchmarks/twin_validate.py live, short (profile, a measured sweep of 3 short levels, the twin's
    three sweeps) against a real server started here: every tier gets a measured and a predicted answer
    and the twin is a file a sweep reads. Accuracy is reported by the benchmark (its figures depend on
    the machine's load), not asserted here."""
    import os
    from pathlib import Path

    port = _free_port()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(_real_server_cmd(kind, port), stdout=quiet, stderr=quiet, env=env)
    out = tmp_path / "validate"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, f"{kind} server did not come up"
                time.sleep(0.5)
        bench = Path(__file__).resolve().parents[1] / "benchmarks" / "twin_validate.py"
        cmd = [sys.executable, str(bench), "live", "--target", f"http://127.0.0.1:{port}/v1", "--model",
               "tiny", "--max-context", "1024", "--chunk-tokens", "2048", "--decode-tokens", "48",
               "--repeats", "2", "--budget", "60", "--tiers", "single-stream", "--min-output-tokens", "16",
               "--level-duration", "15", "--warmup", "3", "--max-agents", "4", "--min-trajectories", "0",
               "--min-trajectories-per-agent", "0", "--max-extensions", "0", "--drain-timeout", "5",
               "--out", str(out)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = json.loads((out / "validation.json").read_text())
    for eff in ("measured", "twin_mid", "twin_low", "twin_high"):
        assert set(report[eff]["tiers"]) == {"fast", "mid", "slow"}, eff
        assert all(isinstance(n, int) and n >= 0 for n in report[eff]["tiers"].values()), eff
    assert report["measured"]["levels"], "the measured sweep ran no level"
    assert report["tiers"].startswith("fast=") and report["workload"]["output_tokens_p5_25_50_75_95"][0] >= 16
    assert all(c[0] is not None for c in report["measured"]["checks"].values())  # each level's self-check
    assert "max agents per tier" in done.stdout
    dep = load_twin(out / "twin.toml")
    assert dep.request_s >= 0 and 0.0 <= dep.step_mid.overlap <= 1.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    from agentperf_kit.cli import main

    assert main(["profile", "--target", "http://127.0.0.1:9/v1", "--model", "m", "--out", "t.txt"]) == 2
    assert "--out must end in .toml" in capsys.readouterr().err
    assert main(["sweep", "--target", f"sim:{tmp_path / 'none.toml'}", "--dry-run"]) == 2
    assert "agentperf profile" in capsys.readouterr().err


def test_admission_cost_is_paid_by_the_step_that_admits_and_by_its_decoders(tmp_path):
    """``admit_s``: the step that admits a request is longer by it per admission (so the request ends
    that much later), a stream decoding in that step waits for it too; pure decode steps do not pay it."""
    step = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "context_token_s": 1e-6}
    ends: dict[float, list[float]] = {}
    engines = {}
    for admit in (0.0, 0.005):
        dep = get_deployment(_write_twin(tmp_path / f"a{admit}.toml", {**step, "admit_s": admit}))
        got: list[float] = []
        eng = TwinEngine(dep, efficiency("mid"), lambda r, t, got=got: got.append(t), lambda *a: None)
        eng.submit(SimRequest("a", 1, 100, 0, 3, 0.0))
        while eng.has_work:
            eng.advance(math.inf)
        ends[admit], engines[admit] = got, eng
    assert ends[0.005][0] - ends[0.0][0] == pytest.approx(0.005, abs=1e-12)  # one admission
    eng = engines[0.005]
    assert eng.step_admits == 0
    base = eng._step(1010, 10, 1.0, 1000, 1000 * 1000 / 2, 1000)[0]
    eng.step_admits = 2  # a mixed step of 10 decoders that admits two requests
    assert eng._step(1010, 10, 1.0, 1000, 1000 * 1000 / 2, 1000)[0] == pytest.approx(base + 0.010, rel=1e-12)
    assert eng.decode_step_time(10, 1000) == pytest.approx(0.01 + 0.02 + 1e-3, rel=1e-12)


ADMIT_TRUE = {
    "step_s": 0.002,
    "prefill_token_s": 2e-5,
    "decode_seq_s": 1e-4,
    "admit_s": 0.003,
    "request_s": 0.001,
}


def _admission_rows() -> list[tuple[str, dict[str, float]]]:
    """Prefill rows (one request, one admission), decode rows (neither), mixed rows (one admission)."""
    return [
        *(
            ("prefill", {"step_s": 1, "prefill_token_s": n, "request_s": 1, "admit_s": 1})
            for n in (32, 128, 512)
        ),
        *(("decode", {"step_s": 1, "decode_seq_s": b}) for b in (1, 4, 16)),
        *(
            ("mixed", {"step_s": 1, "decode_seq_s": b, "prefill_token_s": n, "admit_s": 1})
            for b, n in ((4, 16), (8, 32))
        ),
    ]


def _seconds(x: dict[str, float]) -> float:
    return sum(ADMIT_TRUE.get(k, 0.0) * v for k, v in x.items())


def test_fit_separates_the_admission_cost_from_the_request_cost():
    """Prefill rows carry one request and one admission, mixed rows one admission and no request:
    the fit tells the two costs apart and recovers both."""
    fit = fit_step_time([Observation(kind, x, _seconds(x)) for kind, x in _admission_rows()])
    for term in ("admit_s", "request_s", "step_s"):
        assert fit.coef[term] == pytest.approx(ADMIT_TRUE[term], rel=1e-4), term
    assert fit.model.admit_s == pytest.approx(ADMIT_TRUE["admit_s"], rel=1e-4)


def test_refit_reads_an_earlier_profile_under_the_current_form(tmp_path):
    """A twin file written before ``admit_s`` (its rows without it) is fitted again: its prefill and
    mixed rows get their admission, the engine limits and provenance stay, and the new file loads."""
    from agentperf_kit.twin.profile import refit_twin

    rows = []
    for kind, x in _admission_rows():
        seconds = _seconds(x)
        old_x = {k: v for k, v in x.items() if k != "admit_s"}  # the file of an earlier form
        rows.append({"kind": kind, "note": "", "seconds": seconds, "sigma_s": seconds, **old_x})
    old = tmp_path / "old.toml"
    path = _write_twin(old, {"step_s": 0.004}, kv_policy="preempt")
    with open(path, "a") as f:
        f.write('\n[provenance]\ndate_utc = "2026-11-30T00:00:00Z"\n\n')
        f.write(dump_toml({"observation": rows}))
    out, fit = refit_twin(old, tmp_path / "new.toml")
    assert fit.coef["admit_s"] == pytest.approx(0.003, rel=1e-4)
    dep = load_twin(out)
    assert dep.step_model("mid").admit_s == pytest.approx(0.003, rel=1e-4)
    assert dep.request_s == pytest.approx(0.001, rel=1e-3)
    data = tomllib.loads(out.read_text())
    assert data["engine"]["max_num_seqs"] == 8 and data["provenance"]["refit_of"] == str(old)
    assert data["provenance"]["date_utc"] == "2026-11-30T00:00:00Z"


def _short_and_long_ends(tmp_path, term: str, values: tuple[float, ...]) -> dict[float, dict[int, float]]:
    """End times (by phase: 1 the 3-token request, 2 the 20-token one, both sent at 0) on twins whose
    step model has ``term`` at each of ``values``."""
    step = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "context_token_s": 1e-6}
    ends: dict[float, dict[int, float]] = {}
    for v in values:
        dep = get_deployment(_write_twin(tmp_path / f"{term}{v}.toml", {**step, term: v}))
        got: dict[int, float] = {}
        eng = TwinEngine(dep, efficiency("mid"), lambda r, t, got=got: got.setdefault(r.phase_id, t),
                         lambda *a: None)  # fmt: skip
        eng.submit(SimRequest("short", 1, 100, 0, 3, 0.0))
        eng.submit(SimRequest("long", 2, 100, 0, 20, 0.0))
        while eng.has_work:
            eng.advance(math.inf)
        ends[v] = got
    return ends


def test_finish_cost_delays_the_finishing_stream_and_the_next_step_of_the_others(tmp_path):
    """``finish_s``: a request ends that much later than its last step, and a stream decoding beside it
    waits for it once (the step after the finish starts later); no finish, no cost."""
    ends = _short_and_long_ends(tmp_path, "finish_s", (0.0, 0.007))
    assert ends[0.007][1] - ends[0.0][1] == pytest.approx(0.007, abs=1e-12)  # its own end
    assert ends[0.007][2] - ends[0.0][2] == pytest.approx(0.014, abs=1e-12)  # the short's and its own


def test_fit_recovers_the_finish_cost_from_short_streams_and_arrivals():
    """Short streams carry one finish, their own end and no request, arrivals one admission and one finish
    (the streams beside it do not wait for its end), prefill rows one request and one admission: the fit
    tells the four per-request costs apart."""
    true = {**ADMIT_TRUE, "finish_s": 0.004, "end_s": 0.0015, "context_token_s": 1e-7}
    rows = [
        *_admission_rows(),
        *(("stream", {"step_s": 31, "decode_seq_s": 31, "context_token_s": 31 * (n + 17), "finish_s": 1,
                      "end_s": 1})
          for n in (64, 512)),
        *(("arrival", {"step_s": 40, "decode_seq_s": b * 40 + 31, "context_token_s": b * 40 * 90,
                       "prefill_token_s": n, "admit_s": 1, "finish_s": 1})
          for b, n in ((1, 128), (4, 512))),
    ]  # fmt: skip
    obs = [Observation(k, x, sum(true.get(t, 0.0) * v for t, v in x.items())) for k, x in rows]
    fit = fit_step_time(obs)
    for term in ("finish_s", "end_s", "admit_s", "request_s", "step_s", "decode_seq_s"):
        assert fit.coef[term] == pytest.approx(true[term], rel=1e-3), term
    assert fit.model.finish_s == pytest.approx(0.004, rel=1e-3)


def test_cache_granularity_from_reported_cached_counts():
    from agentperf_kit.twin.profile import cache_granularity

    # llama.cpp: a slot reuses the common prefix token by token
    assert cache_granularity([(767, 767), (1279, 1279)]) == 1
    # vLLM CPU: 128-token blocks; serve-sim: 16-token blocks (the profile's bases are n + 255 tokens)
    assert cache_granularity([(767, 640), (1279, 1152), (2303, 2176)]) == 128
    assert cache_granularity([(767, 752), (1279, 1264)]) == 16
    # nothing cached, or counts no block explains: unknown
    assert cache_granularity([(767, 0)]) is None
    assert cache_granularity([(767, 300)]) is None


def test_twin_cache_block_sets_how_much_of_a_prefix_the_engine_reuses(tmp_path):
    """The twin's engine reuses a phase's cached prefix rounded down to the server's granularity: with
    128-token blocks a 300-token prefix reuses 256, token by token all 300."""
    step = {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3}
    hits = {}
    for block in (1, 128):
        dep = get_deployment(_write_twin(tmp_path / f"b{block}.toml", step, cache_block_tokens=block))
        assert dep.cache_block_tokens == block
        eng = TwinEngine(dep, efficiency("mid"), lambda *a: None, lambda *a: None)
        eng.submit(SimRequest("p", 1, 300, 0, 2, 0.0))
        while eng.has_work:
            eng.advance(math.inf)
        second = SimRequest("p", 1, 340, 300, 2, eng.now)
        eng.submit(second)
        while eng.has_work:
            eng.advance(math.inf)
        hits[block] = second.hit
    assert hits == {1: 300, 128: 256}
    # a server that caches no prefix (the profile found 0 cached tokens, or vLLM said so)
    dep = get_deployment(_write_twin(tmp_path / "none.toml", step, prefix_caching=False))
    eng = TwinEngine(dep, efficiency("mid"), lambda *a: None, lambda *a: None)
    for req in (SimRequest("p", 1, 300, 0, 2, 0.0), SimRequest("p", 1, 340, 300, 2, 0.0)):
        req.t_arrival = eng.now
        eng.submit(req)
        while eng.has_work:
            eng.advance(math.inf)
    assert req.hit == 0 and not dep.prefix_caching


def _noise_twin(tmp_path, name, factors, hold_s, step=None) -> str:
    step = step or {"step_s": 0.01, "prefill_token_s": 1e-4, "decode_seq_s": 2e-3, "finish_s": 0.003}
    path = _write_twin(tmp_path / name, step)
    if factors:
        with open(path, "a") as f:
            f.write("\n" + dump_toml({"noise": {"step_factors": list(factors), "hold_s": hold_s}}))
    return path


def test_server_noise_scales_every_step_by_the_factor_in_force(tmp_path):
    """One factor (2.0): every step and finish takes twice as long, so a request ends at twice its
    noise-free time; factors are read back from the file, bad ones named."""
    ends = {}
    for name, factors in (("quiet.toml", ()), ("slow.toml", (2.0,))):
        dep = get_deployment(_noise_twin(tmp_path, name, factors, 0.001))
        assert dep.noise_factors == tuple(factors)
        got: list[float] = []
        eng = TwinEngine(dep, efficiency("mid"), lambda r, t, got=got: got.append(t), lambda *a: None)
        eng.submit(SimRequest("k", 1, 100, 0, 40, 0.0))
        while eng.has_work:
            eng.advance(math.inf)
        ends[name] = got[0]
    assert ends["slow.toml"] == pytest.approx(2.0 * ends["quiet.toml"], rel=1e-12)
    with pytest.raises(ConfigError, match="step_factors"):
        load_twin(_noise_twin(tmp_path, "bad.toml", (1.0, -1.0), 0.1))


def test_server_noise_spreads_one_agents_speeds_reproducibly(tmp_path):
    """Without noise one agent's speeds are nearly equal (P25 = P50 within 2 %); with factors 0.7..1.6
    held longer than a request (5 s) they spread (P25 well below P50), and two sweeps of the noisy twin
    give the same table (a fixed seed)."""
    from agentperf_kit.agents import RunRules
    from agentperf_kit.sim.virtual import run_sim_level
    from agentperf_kit.trajectories import default_trajectories

    rules = RunRules(warmup_s=0, duration_s=900, min_trajectories=1, min_trajectories_per_agent=0)
    speeds = {}
    for name, factors in (("quiet.toml", ()), ("noisy.toml", (0.7, 0.85, 1.0, 1.2, 1.6))):
        path = _noise_twin(tmp_path, name, factors, 5.0)
        trajs = default_trajectories()[:4]
        runs = [run_sim_level(trajs, 1, rules, deployment=path, seed=3) for _ in range(2)]
        a, b = (r.requests["output_speed_tps"].dropna().to_numpy() for r in runs)
        assert len(a) > 20 and (a == b).all()
        speeds[name] = a
    q = speeds["quiet.toml"]
    assert np.percentile(q, 25) > 0.98 * np.percentile(q, 50)
    n = speeds["noisy.toml"]
    assert np.percentile(n, 25) < 0.9 * np.percentile(n, 50)


def test_noise_section_is_the_streams_spread_around_their_median():
    from agentperf_kit.twin.profile import NOISE_MIN_STREAMS, noise_section

    ratios = [0.8, 0.9, 1.0, 1.0, 1.1, 1.2, 1.5, 2.0, 1.0]
    rows = [("decode", {"step_s": 1, "decode_seq_s": b}) for b in (1, 2, 4, 8)]
    obs = [Observation(k, x, 0.002 + 1e-4 * x["decode_seq_s"]) for k, x in rows]
    for r in ratios:  # streams of 31 steps at batch 1, slowed by r
        x = {"step_s": 31, "decode_seq_s": 31}
        obs.append(Observation("stream", x, r * 31 * 0.0021))
    fit = fit_step_time(obs, robust=True)
    sec = noise_section(fit, obs)
    assert sec is not None and len(sec["step_factors"]) == len(ratios) >= NOISE_MIN_STREAMS
    f = sec["step_factors"]
    assert f == sorted(f) and f[len(f) // 2] == pytest.approx(1.0)
    # the spread is the streams' own: max / min as measured
    assert f[-1] / f[0] == pytest.approx(2.0 / 0.8, rel=1e-3)
    few = obs[: 4 + NOISE_MIN_STREAMS - 1]
    assert noise_section(fit_step_time(few), few) is None


def test_a_requests_own_end_delays_only_its_reported_end(tmp_path):
    """``end_s``: the finishing request's end is reported that much later; the engine's clock and the
    stream beside it are not delayed (the long request's end moves by its own end only)."""
    ends = _short_and_long_ends(tmp_path, "end_s", (0.0, 0.006))
    assert ends[0.006][1] - ends[0.0][1] == pytest.approx(0.006, abs=1e-12)
    assert ends[0.006][2] - ends[0.0][2] == pytest.approx(0.006, abs=1e-12)  # its own end only


def _serve(eng, req):
    """Submit ``req`` to the idle engine ``eng`` and run until it is done; returns it."""
    eng.submit(req)
    while eng.has_work:
        eng.advance(math.inf)
    return req


def test_a_host_prompt_cache_keeps_prefixes_the_kv_cache_evicted(tmp_path):
    """A twin with ``host_cache_tokens``: a phase's prompt that other phases pushed out of the KV cache
    is still a prefix hit (kept in host memory); without it, the same prompt is prefilled again."""
    step = {"step_s": 0.001, "prefill_token_s": 1e-5, "decode_seq_s": 1e-4}
    hits = {}
    for host in (0, 100_000):
        path = _write_twin(tmp_path / f"h{host}.toml", step, kv_capacity_tokens=4096,
                           host_cache_tokens=host)  # fmt: skip
        dep = get_deployment(path)
        assert dep.host_cache_tokens == host
        eng = TwinEngine(dep, efficiency("mid"), lambda *a: None, lambda *a: None)
        _serve(eng, SimRequest("a", 1, 1000, 0, 2, 0.0))
        for k in range(2, 8):  # six other phases of 1,000 tokens: 6,000 > the 4,096-token KV cache
            _serve(eng, SimRequest("o", k, 1000, 0, 2, eng.now))
        hits[host] = _serve(eng, SimRequest("a", 1, 1100, 1000, 2, eng.now)).hit
        eng.check_conservation()
    assert hits == {0: 0, 100_000: 992}  # 1,000 tokens in 16-token blocks


def test_a_slot_prompt_cache_keeps_one_prompt_per_slot(tmp_path):
    """A twin with ``slot_prompt_cache`` (llama.cpp without --cache-ram): with 2 slots, a phase's prompt
    survives one other phase but not two (each new prompt takes the least recently used idle slot's);
    a block-pool cache of the same size keeps it through both. The closed loop: 8 agents on 2 slots reuse
    far less than with a pool cache, 1 agent the same."""
    from agentperf_kit.agents import RunRules
    from agentperf_kit.sim.virtual import run_sim_level
    from agentperf_kit.trajectories import default_trajectories

    step = {"step_s": 0.001, "prefill_token_s": 1e-5, "decode_seq_s": 1e-4}
    hits = {}
    for slots in (False, True):
        path = _write_twin(tmp_path / f"s{slots}.toml", step, max_num_seqs=2, kv_capacity_tokens=2_000_000,
                           slot_prompt_cache=slots)  # fmt: skip
        dep = get_deployment(path)
        assert dep.slot_prompt_cache is slots
        for others in (1, 2):
            eng = TwinEngine(dep, efficiency("mid"), lambda *a: None, lambda *a: None)
            _serve(eng, SimRequest("a", 1, 1000, 0, 2, 0.0))
            for k in range(2, 2 + others):
                _serve(eng, SimRequest("o", k, 1000, 0, 2, eng.now))
            hits[slots, others] = _serve(eng, SimRequest("a", 1, 1100, 1000, 2, eng.now)).hit
            eng.check_conservation()
            assert len(eng.cache) <= (2 if slots else 3)
    assert hits == {(False, 1): 992, (False, 2): 992, (True, 1): 992, (True, 2): 0}
    rules = RunRules(warmup_s=2, duration_s=40, max_duration_s=40, min_trajectories=0,
                     min_trajectories_per_agent=0, drain_timeout_s=0.5)  # fmt: skip
    share = {}
    for slots in (False, True):
        path = str(tmp_path / f"s{slots}.toml")
        for n in (1, 8):
            df = run_sim_level(default_trajectories(), n, rules, deployment=path, seed=3).requests
            ok = df[df.ok]
            share[slots, n] = ok.cached_prompt_tokens.sum() / ok.prompt_tokens.sum()
    assert share[True, 1] == share[False, 1] > 0.5
    assert share[True, 8] < 0.5 * share[False, 8]


def _slot_probe(tmp_path, slots: bool, seqs: int, kv: int = 16384):
    """The profile's slot-cache probe (``seqs`` slots assumed, ``kv`` tokens of KV) against serve-sim serving
    a twin with 4 slots, a 16,384-token KV cache and ``slot_prompt_cache = slots``."""
    import asyncio

    from agentperf_kit.client.http import open_session
    from agentperf_kit.sim.server import SimServer
    from agentperf_kit.twin.profile import ProfileConfig, _Prober, _slot_cache

    step = {"step_s": 0.001, "prefill_token_s": 1e-6, "decode_seq_s": 1e-4}
    path = _write_twin(tmp_path / f"slot{slots}.toml", step, max_num_seqs=4, kv_capacity_tokens=16384,
                       cache_block_tokens=1, slot_prompt_cache=slots)  # fmt: skip

    async def go():
        server = await SimServer(path, time_scale=10).start()
        try:
            async with open_session(16) as session:
                p = _Prober(ProfileConfig(server.base_url, server.model), session, 10.0)
                return await _slot_cache(p, seqs, kv, 4096, 1, None)
        finally:
            await server.stop()

    return asyncio.run(go())


def test_the_profile_finds_one_prompt_per_slot(tmp_path):
    """``agentperf profile``'s probe: a server that keeps one prompt per slot (serve-sim serving a twin with
    ``slot_prompt_cache = true``) keeps a prompt through 3 other prompts and loses it to 4 (its 4 slots),
    though all of them fit the KV cache; one bounded by the KV capacity keeps it through both."""
    slot, why = _slot_probe(tmp_path, True, 4)
    assert slot is True, why
    assert why.startswith("probed:") and "0 tokens cached after k = 4" in why, why
    assert "256 tokens cached after k = 3" in why, why  # a 256-token base, token by token (block 1)
    pool, why = _slot_probe(tmp_path, False, 4)
    assert pool is False, why
    assert "256 tokens cached after k = 4" in why, why


def test_the_slot_probe_says_when_it_cannot_tell(tmp_path):
    # 8 slots assumed on a server that keeps 4 prompts: dropped before the assumed slots are full
    slot, why = _slot_probe(tmp_path, True, 8)
    assert slot is None and "fewer other prompts than the 8 slots" in why, why
    # the others would not fit in half the KV capacity: a KV-bounded cache could drop the prompt too
    slot, why = _slot_probe(tmp_path, False, 4, kv=400)
    assert slot is None and "half the KV capacity" in why, why


@pytest.mark.parametrize("slots", [True, False])
def test_a_profile_writes_the_slot_prompt_cache_it_found(tmp_path, slots):
    """A whole profile of serve-sim serving a twin with ``slot_prompt_cache = slots`` writes a twin with the
    same key, its source the probe, and the twin loads with it."""
    import asyncio

    from agentperf_kit.sim.server import SimServer
    from agentperf_kit.twin.profile import ProfileConfig, profile_server, write_twin

    step = {"step_s": 0.001, "prefill_token_s": 1e-6, "decode_seq_s": 1e-4}
    served = _write_twin(tmp_path / "served.toml", step, max_num_seqs=4, kv_capacity_tokens=16384,
                         cache_block_tokens=1, slot_prompt_cache=slots)  # fmt: skip

    async def go():
        server = await SimServer(served, time_scale=10).start()
        try:
            cfg = ProfileConfig(server.base_url, server.model, max_context=1024, repeats=1,
                                batch_sizes=(1, 4), decode_tokens=16, stream_tokens=8, chunk_tokens=512,
                                max_batch=4, kv_capacity=16384, budget_s=20)  # fmt: skip
            return await profile_server(cfg)
        finally:
            await server.stop()

    res = asyncio.run(go())
    assert res.limits["slot_prompt_cache"] is slots, res.limit_sources
    out = write_twin(res, tmp_path / "twin.toml")
    data = tomllib.loads(out.read_text())
    assert data["engine"]["slot_prompt_cache"] is slots
    assert data["provenance"]["limit_sources"]["slot_prompt_cache"].startswith("probed:")
    assert load_twin(out).slot_prompt_cache is slots


def test_validation_insitu_agent_counts_parse_and_name_a_bad_list():
    import argparse

    tv = _twin_validate()
    assert tv._agent_counts("32,96") == [32, 96] and tv._agent_counts("32") == [32]
    assert tv._agent_counts("0") == []  # off
    for bad in ("32;96", "-4"):
        with pytest.raises(argparse.ArgumentTypeError, match="agent counts"):
            tv._agent_counts(bad)
