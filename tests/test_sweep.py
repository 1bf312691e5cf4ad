"""The sweep end to end against the simulated system (virtual time), resume, refusal, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings

import pandas as pd
import pytest

from agentperf_kit.cli import main
from agentperf_kit.sweep import SweepConfig, SweepConfigError, load_sweep, plan_levels, run_sweep

FAST = dict(  # the band is tested in test_sweep_band.py; left out here to keep these sweeps short
    level_duration_s=60,
    warmup_s=10,
    min_trajectories=5,
    min_trajectories_per_agent=1,
    max_agents=256,
    band=False,
)


def test_plan_is_an_exponential_ramp_capped():
    assert plan_levels(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert plan_levels(1) == [1]


@pytest.fixture(scope="module")
def fast_sweep(tmp_path_factory):
    """One fresh sweep with FAST's settings, shared: checked end to end, and the reference that a killed
    and resumed sweep must reproduce (tests read it, none writes into its directory)."""
    return run_sweep(SweepConfig(out=str(tmp_path_factory.mktemp("fast") / "s"), **FAST), progress=False)


@pytest.mark.slow
def test_sweep_end_to_end(fast_sweep):
    res = fast_sweep
    tiers = res.summary["tiers"]
    maxes = [t["max_agents"] for t in tiers]
    # stricter tiers never allow more agents
    assert maxes == sorted(maxes, reverse=True) and maxes[0] > maxes[-1]
    for t in tiers:
        n = t["max_agents"]
        assert t["agents_per_accelerator"] == pytest.approx(n / res.summary["accelerators"])
        if n:
            assert t["agents_per_mw"] == pytest.approx(n / (t["power_w"] / 1e6))
        # the boundary is bracketed to one agent: n passes, n + 1 was measured and fails
        lv = res.levels.set_index("concurrency")
        if n and not t["max_agents_is_lower_bound"]:
            assert lv.loc[n, f"verdict_{t['name']}"] == "pass"
            assert lv.loc[n + 1, f"verdict_{t['name']}"] == "fail"
    # files on disk agree with the returned result
    loaded = load_sweep(res.directory)
    assert loaded.summary["tiers"] == json.loads(json.dumps(res.summary["tiers"]))
    assert set(loaded.requests.level) == set(range(len(res.levels)))
    text = (res.directory / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert not res.summary["meets_aa_rules"]


def test_resume_refuses_a_different_configuration(tmp_path):
    run_sweep(SweepConfig(out=str(tmp_path / "s"), **{**FAST, "max_agents": 8}), progress=False)
    with pytest.raises(SweepConfigError, match="different configuration"):
        run_sweep(
            SweepConfig(out=str(tmp_path / "s"), **{**FAST, "max_agents": 8, "seed": 5}), progress=False
        )


def test_one_copy_of_request_rows_and_a_larger_cap_reuses_the_levels(tmp_path):
    out = tmp_path / "s"
    small = run_sweep(SweepConfig(out=str(out), **{**FAST, "max_agents": 4}), progress=False)
    assert list(small.levels.concurrency) == [1, 2, 4]  # FAST's tiers still pass at 4: a lower bound
    assert small.summary["tiers"][0]["max_agents_is_lower_bound"]
    # the level files are the only copy of the rows; the sweep's view sets `level` to the index by N
    assert not (out / "requests.parquet").exists()
    assert not list(out.glob("levels/*/requests.arrow"))  # the raw stream is dropped once finalized
    req = load_sweep(out).requests
    assert len(req) == small.summary["simulated_requests"]
    from agentperf_kit.results import load_run

    for lv in small.levels.itertuples():
        own = load_run(out / "levels" / f"n{lv.concurrency:05d}_e{lv.extensions}").requests
        mine = req[req.level == lv.level]
        assert len(mine) == len(own) and set(mine.concurrency) == {lv.concurrency}
    # a larger cap resumes: the measured levels are reused, only the new ones are measured
    big = run_sweep(SweepConfig(out=str(out), **{**FAST, "max_agents": 16}), progress=False)
    assert list(big.levels.concurrency)[:3] == [1, 2, 4] and 8 in set(big.levels.concurrency)
    assert big.summary["levels_measured_this_run"] == big.summary["n_levels"] - 3
    assert any("was 4" in n for n in big.summary["notes"])
    assert json.loads((out / "sweep.json").read_text())["config"]["max_agents"] == 16
    pd.testing.assert_frame_equal(
        big.levels[big.levels.concurrency <= 4]
        .drop(columns=["level", "decides_answer"])
        .reset_index(drop=True),
        small.levels.drop(columns=["level", "decides_answer"]),
    )
    # any other change is still refused
    with pytest.raises(SweepConfigError, match="different configuration"):
        run_sweep(SweepConfig(out=str(out), **{**FAST, "max_agents": 16, "seed": 5}), progress=False)


def test_levels_above_every_tiers_lowest_failure_decide_nothing():
    from agentperf_kit.sweep import _deciding_levels

    levels = pd.DataFrame({"concurrency": [1, 2, 4, 8, 16, 5, 6]})
    tiers = pd.DataFrame({"lowest_failing_agents": [6.0, 4.0, None]})
    # a tier that never failed (lower bound) is decided by every level
    assert _deciding_levels(levels, tiers).all()
    tiers = pd.DataFrame({"lowest_failing_agents": [6.0, 4.0]})
    assert list(_deciding_levels(levels, tiers)) == [True, True, True, False, False, True, True]


def _edit_manifest(out, **changes):
    path = out / "sweep.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_resume_compares_version_and_commit(tmp_path):
    """Another version refuses; the same version and config at another commit resumes with a warning;
    the same commit resumes silently."""
    from agentperf_kit.results import toolkit_provenance

    out = tmp_path / "s"
    cfg = SweepConfig(out=str(out), **{**FAST, "max_agents": 2})
    first = run_sweep(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_sweep(cfg, progress=False)  # same commit: no warning
    _edit_manifest(out, toolkit_version="0.0.1")
    with pytest.raises(SweepConfigError, match=r"agentperf-kit 0\.0\.1"):
        run_sweep(cfg, progress=False)
    _edit_manifest(out, toolkit_version=first.summary["toolkit_version"])
    if toolkit_provenance()["toolkit_commit"] is None:
        pytest.skip("not run from a git checkout: no commit to compare")
    _edit_manifest(out, toolkit_commit="0" * 40)
    with pytest.warns(UserWarning, match="commit 000000000000, this is"):
        again = run_sweep(cfg, progress=False)
    pd.testing.assert_frame_equal(again.levels, first.levels)


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_result(tmp_path, fast_sweep):
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "agentperf_kit.cli",
        "sweep",
        "--out",
        str(out),
        "--level-duration",
        "60",
        "--max-agents",
        "256",
        "--config",
        str(tmp_path / "c.toml"),
    ]
    (tmp_path / "c.toml").write_text(
        "[sweep]\nwarmup_s = 10\nmin_trajectories = 5\nmin_trajectories_per_agent = 1\n"
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / "levels").glob("*/requests.parquet"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    measured_before = len(list((out / "levels").glob("*/requests.parquet")))
    assert measured_before >= 3 and not (out / "summary.json").exists()
    resumed = run_sweep(SweepConfig(out=str(out), **FAST), progress=False)
    runs_after = len(list((out / "levels").glob("*/requests.parquet")))  # levels + their extensions
    assert resumed.summary["levels_measured_this_run"] == runs_after - measured_before
    fresh = fast_sweep  # the same configuration, run fresh in its own directory
    key = ["name", "max_agents", "max_agents_is_lower_bound", "binding_constraint"]
    assert pd.DataFrame(resumed.summary["tiers"])[key].equals(pd.DataFrame(fresh.summary["tiers"])[key])
    # not just the answer: every level and every request is the same (run ids name the directory)
    pd.testing.assert_frame_equal(resumed.levels, fresh.levels)
    pd.testing.assert_frame_equal(
        resumed.requests.drop(columns="run_id"), fresh.requests.drop(columns="run_id")
    )


def test_cli_json_and_dry_run(tmp_path, capsys):
    assert main(["sweep", "--dry-run"]) == 0
    assert "ramp levels [1, 2, 4" in capsys.readouterr().out
    assert (
        main(
            [
                "sweep",
                "--out",
                str(tmp_path / "j"),
                "--level-duration",
                "30",
                "--max-agents",
                "4",
                "--json",
                "--tiers",
                "aa-gpt-oss-120b",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["tier_preset"] == "aa-gpt-oss-120b" and len(summary["tiers"]) == 4
    assert summary["power_scope"] == "modelled"


def test_cli_bad_input_is_named(capsys):
    assert main(["sweep", "--tiers", "nope", "--dry-run"]) == 2
    assert "known presets" in capsys.readouterr().err
    assert main(["sweep", "--target", "http://127.0.0.1:9/v1", "--dry-run"]) == 2
    assert "--model" in capsys.readouterr().err


def test_sweep_against_a_live_endpoint(tmp_path):

    from agentperf_kit.results import load_run
    from agentperf_kit.trajectories import SynthConfig, fit_context, save_trajectories, synthesize
    from tests.sse_servers import SSEServer, serving

    trajs = fit_context(
        synthesize(SynthConfig(tool_delay_median_s=0.01, tool_delay_range_s=(0.005, 0.02)), count=8, seed=2),
        1500,
    )
    path = save_trajectories(trajs, tmp_path / "t.jsonl")
    with serving(SSEServer(ttft_s=0.02, itl_s=0.001)) as server:
        cfg = SweepConfig(
            target=server.base_url,
            model="m",
            accelerators=1,
            trajectories=str(path),
            level_duration_s=1.5,
            warmup_s=0.2,
            min_trajectories=0,
            min_trajectories_per_agent=0,
            max_agents=2,
            drain_timeout_s=2,
            confidence=0.5,
            power_w=700,
            power_scope="declared",
            out=str(tmp_path / "live"),
            endpoint="completions",
        )
        res = run_sweep(cfg, progress=False)
    assert list(res.levels.concurrency) == [1, 2]
    # every request the server saw is a row of some level's run: on a loaded machine a level whose verdict
    # is inconclusive is extended (levels/n00001_e1...), and the sweep's table keeps the last extension
    level_dirs = sorted((tmp_path / "live" / "levels").iterdir())
    level_rows = sum(len(load_run(d).requests) for d in level_dirs)
    assert level_rows == len(server.bodies)
    last = {d.name.split("_")[0]: d for d in level_dirs}  # n00001 -> its last extension
    assert len(res.requests) == sum(len(load_run(d).requests) for d in last.values())
    slo1 = res.summary["tiers"][0]
    assert slo1["max_agents"] == 2 and slo1["max_agents_is_lower_bound"]
    assert slo1["agents_per_mw"] == pytest.approx(2 / 700e-6)
    assert res.summary["power_scope"] == "declared"


def test_user_defined_tiers_and_inf_flags(tmp_path):
    res = run_sweep(
        SweepConfig(
            out=str(tmp_path / "u"), tiers="easy=1/60,impossible=100000/0.001", **{**FAST, "max_agents": 4}
        ),
        progress=False,
    )
    by = {t["name"]: t for t in res.summary["tiers"]}
    assert by["easy"]["max_agents_is_lower_bound"] and by["impossible"]["max_agents"] == 0
    assert "p95_ttft_s_is_inf" in res.levels


def test_sweep_client_settings_reach_the_endpoint_and_no_credential_reaches_the_config(tmp_path):
    live = {"target": "http://h/v1", "model": "m", "accelerators": 8}
    base = SweepConfig(**live)
    assert "headers" not in base.measurement_dict()  # defaults left out: older sweeps still resume
    toml = tmp_path / "s.toml"
    toml.write_text(
        '[sweep]\ntarget = "http://h/v1"\nmodel = "m"\naccelerators = 8\n'
        'headers = ["X-Tenant: lab", "Authorization: Bearer sk-secretsecret99"]\n'
        "extra_body = { top_k = 1 }\nstall_timeout_s = 30\ncontinuous_usage = true\n"
    )
    cfg = SweepConfig.from_toml(toml)
    ep = cfg.endpoint_for()
    assert ep.headers == {"X-Tenant": "lab", "Authorization": "Bearer sk-secretsecret99"}
    assert ep.extra_body == {"top_k": 1} and ep.stall_timeout_s == 30 and ep.continuous_usage
    d = cfg.measurement_dict()
    assert d["headers"] == ["X-Tenant: ***", "Authorization: ***"]  # every header value is a secret
    assert "sk-secretsecret99" not in json.dumps(d) and "lab" not in json.dumps(d["headers"])
    assert cfg.config_hash() != base.config_hash()
    public = SweepConfig(**live, public_headers=("X-Tenant: lab",))  # unless marked public
    assert public.measurement_dict()["public_headers"] == ["X-Tenant: lab"]
    assert public.endpoint_for().public_dict()["headers"] == {"X-Tenant": "lab"}
    with pytest.raises(SweepConfigError, match="Name: value"):
        SweepConfig(**live, headers=("nocolon",))
    with pytest.raises(SweepConfigError, match="JSON object"):
        SweepConfig(**live, extra_body="[1]")
