"""In-situ fit of the twin's per-request engine work (``agentperf_kit.twin.insitu``, ``agentperf profile
--insitu``): on replays of twins whose admission and finish costs are known, run in virtual time."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
import pytest

from agentperf_kit.agents import RunRules
from agentperf_kit.cli import main
from agentperf_kit.errors import MeasurementError
from agentperf_kit.sim.twin import dump_toml
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import default_trajectories
from agentperf_kit.trajectories.transform import fit_context
from agentperf_kit.twin.insitu import fit_insitu, insitu_twin

ROOT = Path(__file__).resolve().parents[1]
# a llama.cpp-like server (4 slots, one 2,048-token prefill chunk; coefficients of the order the profile
# measured on the real one) and its agents' short answers
STEP = {"step_s": 1e-4, "prefill_token_s": 1.6e-5, "decode_seq_s": 1.2e-4, "context_token_s": 2e-7}
RULES = RunRules(warmup_s=0, duration_s=60, min_trajectories=1, min_trajectories_per_agent=0)


def _trajectories():
    return fit_context(default_trajectories()[:60], 2048, min_output_tokens=32)


def _twin(path: Path, admit_s: float, finish_s: float, end_s: float = 0.0, release_s: float = 0.0):
    step = {**STEP, "admit_s": admit_s, "finish_s": finish_s, "end_s": end_s, "release_s": release_s}
    data = {
        "kind": "agentperf-twin",
        "version": 1,
        "model": "m",
        "engine": {"max_num_seqs": 4, "max_num_batched_tokens": 2048, "kv_capacity_tokens": 10_000_000,
                   "max_context_tokens": 2048},
        "step": step,
        "step_se": {},
        "band": {"z": 2.0},
    }  # fmt: skip
    path.write_text(dump_toml(data))
    return str(path), step


@pytest.mark.parametrize(
    ("admit_s", "finish_s", "end_s", "release_s"),
    [(0.004, 0.002, 0.0, 0.0), (0.004, 0.0005, 0.0, 0.002), (0.006, 0.001, 0.002, 0.0)],
)
def test_fit_recovers_the_per_request_costs_of_a_replay(tmp_path, admit_s, finish_s, end_s, release_s):
    # 32 agents on 4 slots: the client's decode spans alone (first to last token, the others' first and
    # last tokens inside) give back what a request costs the others and what its end costs itself. On
    # full slots a request is admitted in the step where another finishes, so the split between the
    # two is looser than their sum (an admission is seen through the other request's first token)
    path, step = _twin(tmp_path / "t.toml", admit_s, finish_s, end_s, release_s)
    rows = run_sim_level(_trajectories(), 32, RULES, deployment=path, seed=2).requests
    f = fit_insitu(rows, step, 2048)
    assert f.spans > 1000 and f.arrivals_per_span > 0.3
    assert f.admit_s + f.other_finish_s == pytest.approx(admit_s + finish_s + release_s, rel=0.1)
    assert f.own_end_s == pytest.approx(finish_s + end_s, rel=0.15, abs=3e-4)
    assert f.admit_s == pytest.approx(admit_s, rel=0.15)
    # the twin's terms rebuild both costs exactly
    assert f.finish_s + f.release_s == pytest.approx(f.other_finish_s)
    assert f.finish_s + f.end_s == pytest.approx(f.own_end_s)
    assert min(f.end_s, f.release_s) == 0.0


def test_no_per_request_cost_fits_as_none(tmp_path):
    path, step = _twin(tmp_path / "t.toml", 0.0, 0.0)
    rows = run_sim_level(_trajectories(), 32, RULES, deployment=path, seed=2).requests
    f = fit_insitu(rows, step, 2048)
    assert f.admit_s < 5e-4 and f.other_finish_s < 5e-4 and f.own_end_s < 5e-4
    assert abs(f.leftover_per_step_s) < 0.05 * STEP["decode_seq_s"] * 4


def test_too_short_a_replay_says_what_to_run(tmp_path):
    path, step = _twin(tmp_path / "t.toml", 0.004, 0.0)
    rules = RunRules(warmup_s=0, duration_s=0.05, min_trajectories=0, min_trajectories_per_agent=0)
    rows = run_sim_level(_trajectories()[:2], 1, rules, deployment=path, seed=2).requests
    with pytest.raises(MeasurementError, match=r"fewer than 30: replay more agents or for longer"):
        fit_insitu(rows, step, 2048)


def test_profile_insitu_writes_a_twin_with_the_fitted_terms(tmp_path, capsys):
    # the committed profile of the real llama.cpp server, refitted; its in-situ terms from a replay of a
    # twin that charges 6 ms per arrival, 0.5 ms per finish and 2 ms per release
    src = ROOT / "benchmarks" / "results" / "twin" / "llama_t1_quiet_2026-12-01d.twin.toml"
    path, _ = _twin(tmp_path / "truth.toml", 0.006, 0.0005, release_s=0.002)
    run_sim_level(_trajectories(), 32, RULES, deployment=path, seed=5, out_dir=tmp_path / "replay")
    out = tmp_path / "insitu.toml"
    assert (
        main(["profile", "--refit", str(src), "--insitu", str(tmp_path / "replay"), "--out", str(out)]) == 0
    )
    assert "in situ (" in capsys.readouterr().out
    data = tomllib.loads(out.read_text())
    probe = tomllib.loads(src.read_text())["step"]
    assert data["insitu"]["probe_admit_s"] != data["step"]["admit_s"]
    assert data["step"]["admit_s"] == data["insitu"]["admit_s"] > 0.003  # the probe's was 0.9 ms
    assert data["step_se"]["admit_s"] == data["insitu"]["admit_s_se"]
    assert data["step"]["release_s"] == data["insitu"]["release_s"] > 0.001 and data["step"]["end_s"] == 0.0
    assert data["step"]["decode_seq_s"] == pytest.approx(probe["decode_seq_s"], rel=0.2)
    # a sweep runs it; a refit drops the in-situ fit (made on the old coefficients) and says so
    assert main(["sweep", "--target", f"sim:{out}", "--dry-run"]) == 0
    again = tmp_path / "again.toml"
    assert main(["profile", "--refit", str(out), "--out", str(again)]) == 0
    redone = tomllib.loads(again.read_text())
    assert "insitu" not in redone and "apply --insitu again" in redone["provenance"]["insitu_dropped"]


def test_insitu_without_a_replay_is_one_clear_error(tmp_path, capsys):
    path, _ = _twin(tmp_path / "t.toml", 0.0, 0.0)
    (tmp_path / "empty").mkdir()
    assert main(["profile", "--refit", path, "--insitu", str(tmp_path / "empty"), "--out", "x.toml"]) == 2
    err = capsys.readouterr().err
    assert "no requests.parquet there" in err and "agentperf run --out DIR" in err
    with pytest.raises(MeasurementError):
        insitu_twin(path, tmp_path, tmp_path / "y.toml", rows=run_sim_level(
            _trajectories()[:1], 1, RULES, deployment=path, seed=1).requests.head(3))  # fmt: skip


def test_replays_at_two_loads_pool_into_one_fit(tmp_path):
    # two replays (8 and 32 agents), each on its own clock from 0: pooled, every span is judged against
    # its own replay's requests only (concatenating the rows would lay the two runs over each other and
    # count the other run's requests as arrivals and finishes), and the fit gives the known costs back
    path, step = _twin(tmp_path / "t.toml", 0.004, 0.0005, release_s=0.002)
    low = run_sim_level(_trajectories(), 8, RULES, deployment=path, seed=3).requests
    high = run_sim_level(_trajectories(), 32, RULES, deployment=path, seed=4).requests
    one_low, one_high = fit_insitu(low, step, 2048), fit_insitu(high, step, 2048)
    f = fit_insitu([low, high], step, 2048)
    assert f.replays == 2 and f.spans == one_low.spans + one_high.spans
    assert min(one_low.arrivals_per_span, one_high.arrivals_per_span) < f.arrivals_per_span
    assert f.arrivals_per_span < max(one_low.arrivals_per_span, one_high.arrivals_per_span)
    assert f.admit_s == pytest.approx(0.004, rel=0.15)
    assert f.admit_s + f.other_finish_s == pytest.approx(0.004 + 0.0005 + 0.002, rel=0.1)
    laid_over = fit_insitu(pd.concat([low, high], ignore_index=True), step, 2048)
    assert laid_over.arrivals_per_span > 1.2 * f.arrivals_per_span  # what pooling by replay avoids


def test_profile_insitu_takes_several_replays_and_names_a_short_one(tmp_path, capsys):
    path, _ = _twin(tmp_path / "truth.toml", 0.004, 0.0005)
    for n, seed in ((8, 3), (32, 4)):
        run_sim_level(_trajectories(), n, RULES, deployment=path, seed=seed, out_dir=tmp_path / f"r{n}")
    out = tmp_path / "pooled.toml"
    src = ROOT / "benchmarks" / "results" / "twin" / "llama_t1_quiet_2026-12-01d.twin.toml"
    argv = ["profile", "--refit", str(src), "--insitu", str(tmp_path / "r8"), str(tmp_path / "r32")]
    assert main([*argv, "--out", str(out)]) == 0
    assert f"{tmp_path / 'r8'}, {tmp_path / 'r32'}" in capsys.readouterr().out
    data = tomllib.loads(out.read_text())
    assert data["insitu"]["source"] == [str(tmp_path / "r8"), str(tmp_path / "r32")]
    assert data["insitu"]["replays"] == 2 and data["step"]["admit_s"] > 0.002  # the probe's: 0.9 ms
    short = run_sim_level(
        _trajectories()[:2], 1, RunRules(warmup_s=0, duration_s=0.05, min_trajectories=0,
                                          min_trajectories_per_agent=0), deployment=path, seed=2
    ).requests  # fmt: skip
    full = run_sim_level(_trajectories(), 8, RULES, deployment=path, seed=3).requests
    with pytest.raises(MeasurementError, match=r"replay 2 of 2 gave \d+ decode spans, fewer than 30"):
        fit_insitu([full, short], {**STEP}, 2048)


def test_queued_steps_cost_only_while_a_request_waits_and_the_fit_finds_it(tmp_path):
    # llama.cpp's server steps slower while requests wait for its slots (docs/simulator.md): the twin adds
    # queued_step_s to a step only then. 2 agents on 4 slots never queue: the table is the same with or
    # without the term; 128 agents queue, their streams slow, and the in-situ fit (given the slots) finds
    # the term beside the arrival cost
    quiet, step = _twin(tmp_path / "q0.toml", 0.004, 0.0005)
    data = tomllib.loads((tmp_path / "q0.toml").read_text())
    data["step"]["queued_step_s"] = 0.0008
    (tmp_path / "q1.toml").write_text(dump_toml(data))
    slow = str(tmp_path / "q1.toml")
    few = [run_sim_level(_trajectories(), 2, RULES, deployment=p, seed=1).requests for p in (quiet, slow)]
    pd.testing.assert_frame_equal(few[0].drop(columns="run_id"), few[1].drop(columns="run_id"))
    many = [run_sim_level(_trajectories(), 128, RULES, deployment=p, seed=1).requests for p in (quiet, slow)]
    assert many[1]["output_speed_tps"].median() < 0.8 * many[0]["output_speed_tps"].median()
    f = fit_insitu(many[1], step, 2048, slots=4)
    assert f.queued_steps_share > 0.3
    assert f.queued_step_s == pytest.approx(0.0008, rel=0.25)
    assert f.admit_s == pytest.approx(0.004, rel=0.25)
    # without the slots the fit has no queue term and puts the queue's cost elsewhere
    assert fit_insitu(many[1], step, 2048).queued_step_s == 0.0
    # with slots the queue-free twin's replay gives (about) none
    assert fit_insitu(many[0], step, 2048, slots=4).queued_step_s < 0.0001
