"""Early stop of a sweep's levels (agentperf_kit/sweep_early.py): the rule that says which verdicts let a
level stop, the interim looks on real judged rows, the fleet's window share, and whole sweeps on the
simulator with and without it (same verdicts and answers, fewer requests, answers measured in full)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agentperf_kit.agents import AgentFleet, RequestOutcome, RunRules
from agentperf_kit.slo import Tier
from agentperf_kit.sweep import SweepConfig, load_sweep, run_sweep
from agentperf_kit.sweep_early import EarlyStop, final_levels, stop_outcomes

T = ("a", "b")


def _v(**levels: str) -> dict[int, dict[str, str]]:
    """{N: {tier: verdict}} from keywords like n40="pp" (tier a pass, tier b pass; f = fail)."""
    word = {"p": "pass", "f": "fail", "i": "inconclusive"}
    return {int(k[1:]): {t: word[c] for t, c in zip(T, v)} for k, v in levels.items()}


def test_stop_outcomes_in_the_ramp():
    # the first level: a failure there decides the answer (0), a pass leaves the ramp going
    assert stop_outcomes(1, {}, T, 256) == {"a": frozenset({"pass"}), "b": frozenset({"pass"})}
    # N = 4 after passes at 1 and 2: either verdict leaves both answers open
    both = frozenset({"pass", "fail"})
    assert stop_outcomes(4, _v(n1="pp", n2="pp"), T, 256) == {"a": both, "b": both}
    # N = 2 after a pass at 1: a failure would decide (bracket 1..2 is at the resolution)
    assert stop_outcomes(2, _v(n1="pp"), T, 256) == {"a": frozenset({"pass"}), "b": frozenset({"pass"})}
    # a pass at the cap is the answer (a lower bound): only a failure there may stop early
    fail = frozenset({"fail"})
    assert stop_outcomes(256, _v(n128="pp"), T, 256) == {"a": fail, "b": fail}
    assert stop_outcomes(256, _v(n255="pp"), T, 256) is None


def test_stop_outcomes_in_the_bisection():
    both = frozenset({"pass", "fail"})
    # tier a bracket 40..48 (4 each way > 1), tier b failed at 8: a level of 44 cannot move b's answer
    v = _v(n8="pf", n40="pf", n48="ff")
    assert stop_outcomes(44, v, T, 256) == {"a": both}
    # N = 47 just below the failure at 48: a pass there would be the answer
    assert stop_outcomes(47, v, T, 256) == {"a": frozenset({"fail"})}
    # N = 41 just above the pass at 40: a failure there would bound the answer
    assert stop_outcomes(41, v, T, 256) == {"a": frozenset({"pass"})}
    # bracket 40..42: N = 41 decides tier a whatever it is
    assert stop_outcomes(41, _v(n8="pf", n40="pf", n42="ff"), T, 256) is None
    # the relative resolution widens what counts as "at the resolution": 1/32 of 4096 is 128
    v = _v(n4096="pf", n4352="ff")
    assert stop_outcomes(4224, v, T, 8192, relative_resolution=1 / 32) is None
    assert stop_outcomes(4224, v, T, 8192) == {"a": both}


def test_final_levels_are_each_tiers_answer_and_the_failure_above_it():
    v = _v(n1="pf", n2="pf", n4="pf", n8="ff", n6="pf", n7="ff")
    assert final_levels(v, T) == {6, 7, 1}  # a: 6 passes, 7 fails; b: nothing passes below its failure at 1
    assert final_levels(_v(n1="pp", n2="pp"), T) == {2}  # never failed: the highest pass (a lower bound)


def _judged(speed_tps: float, n_agents: int = 40, per_agent: int = 30, seed: int = 1) -> pd.DataFrame:
    """In-window rows of ended requests: ``n_agents`` agents, ``per_agent`` requests each, speeds around
    ``speed_tps`` (lognormal, 10 % spread), TTFT around 0.5 s, sent over 1,000 s."""
    rng = np.random.default_rng(seed)
    n = n_agents * per_agent
    return pd.DataFrame(
        {
            "in_window": np.ones(n, bool),
            "ok": np.ones(n, bool),
            "error": [""] * n,
            "agent": np.repeat(np.arange(n_agents), per_agent),
            "t_send_s": np.tile(np.linspace(0.0, 1000.0, per_agent, endpoint=False), n_agents),
            "speed_unmeasurable": np.zeros(n, bool),
            "output_speed_tps": speed_tps * rng.lognormal(0.0, 0.1, n),
            "ttft_s": 0.5 * rng.lognormal(0.0, 0.1, n),
        }
    )


def test_a_look_stops_only_on_the_verdicts_that_leave_the_answers_open():
    tiers = (Tier("a", "a", 20.0, 10.0), Tier("b", "b", 60.0, 5.0))
    rows = _judged(40.0)  # tier a passes by far, tier b fails by far
    es = EarlyStop(tiers, {"a": frozenset({"pass", "fail"}), "b": frozenset({"fail"})})
    assert es.look_confidence == pytest.approx(0.975)  # 0.95 spread over the two interim looks
    assert not es.due(0.2) and es.due(0.34)
    reason = es.decide(rows, (0.0, 1000.0))
    assert reason is not None and "a pass" in reason and "b fail" in reason
    assert es.due(0.7) and not es.due(0.5)  # the second look at two thirds
    assert not es.due(1.0)  # the window closes now anyway
    # a tier that may stop only on a failure, seen passing: the level goes on
    es = EarlyStop(tiers, {"a": frozenset({"fail"})})
    assert es.decide(rows, (0.0, 1000.0)) is None and len(es.looks) == 1
    # at the threshold: inconclusive, never a stop
    es = EarlyStop(tiers, {"a": frozenset({"pass", "fail"})})
    assert es.decide(_judged(20.0 / 0.935), (0.0, 1000.0)) is None
    assert "inconclusive" in es.looks[0]


def test_a_look_waits_while_a_request_from_early_in_the_window_still_runs():
    # the window opened at 100 s; at 1,000 s the earliest request still running was sent at 150 s: judging
    # [100, 150) would judge the window's first minutes only (a big system's start-up backlog)
    assert not EarlyStop.covered(100.0, 150.0, 1000.0)
    assert EarlyStop.covered(100.0, 775.0, 1000.0)  # 0.75 of the elapsed window
    assert not EarlyStop.covered(100.0, 760.0, 1000.0)
    assert not EarlyStop.covered(100.0, 100.0, 100.0)


def _fleet(n_agents: int, rules: RunRules) -> AgentFleet:
    from agentperf_kit.trajectories import default_trajectories

    return AgentFleet(default_trajectories()[:8], n_agents, rules, seed=3, sink=lambda row: None)


def test_the_fleet_reports_its_window_share_and_stops_early():
    rules = RunRules(warmup_s=0.0, duration_s=100.0, min_trajectories=2, min_trajectories_per_agent=2)
    fleet = _fleet(2, rules)
    plans = fleet.start(0.0)
    for p in plans:
        fleet.on_send(p, 0.0)
    assert fleet.window_share(50.0) == 0.0  # no trajectory completed yet: the per-agent rule binds
    now, done = 0.0, {0: 0, 1: 0}
    pending = list(plans)
    while min(done.values()) < 1:  # every agent completes its first trajectory in the window
        p = pending.pop(0)
        now += 1.0
        nxt = fleet.complete(p, RequestOutcome(t_send_s=p.t_send_s, t_end_s=now, ok=True))
        if p.turn_index == len(fleet.trajectories[p.traj_index].turns) - 1:
            done[p.agent] += 1
        fleet.on_send(nxt, now)
        pending.append(nxt)
    assert fleet.min_completed_per_agent() == 1
    assert fleet.window_share(now) == pytest.approx(min(0.5, now / 100.0))
    fleet.stop_early(now, "decided")
    assert fleet.window_closed and not fleet.may_send(now + 1.0)
    summary = fleet.window_summary()
    assert summary["stopped_early_reason"] == "decided" and summary["window_end_s"] == now
    assert not summary["meets_aa_rules"]
    assert any("stopped early" in r for r in summary["aa_rules_reasons"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The default sweep (AA's rules, the default H200 system; no band) with and without early stop."""
    d = tmp_path_factory.mktemp("early")
    on = run_sweep(SweepConfig(out=str(d / "on"), band=False), progress=False)
    off = run_sweep(SweepConfig(out=str(d / "off"), band=False, early_stop=False), progress=False)
    return on, off


def test_early_stop_keeps_every_verdict_and_answer_for_fewer_requests(pair):
    on, off = pair
    tiers = ["slo1", "slo2", "slo3"]
    key = [f"verdict_{t}" for t in tiers]
    # the guided steps read the levels' margins, which cut windows move a little: the paths may differ
    # above the ramp's last pass, but every level both measured has the same verdicts, and the answers
    # are the same
    full = off.levels.set_index("concurrency")[key].add_suffix("_full")
    both = on.levels.set_index("concurrency")[key].join(full, how="inner")
    assert len(both) >= 8
    for k in key:
        assert (both[k] == both[f"{k}_full"]).all(), both
    assert [t["max_agents"] for t in on.summary["tiers"]] == [t["max_agents"] for t in off.summary["tiers"]]
    assert on.summary["simulated_requests"] < 0.8 * off.summary["simulated_requests"]
    assert off.summary["n_levels_stopped_early"] == 0 and off.levels["stopped_early"].isna().all()
    stopped = on.levels["stopped_early"].notna()
    assert on.summary["n_levels_stopped_early"] == int(stopped.sum()) >= 3
    # every level that ran its full window (those that decide an answer among them) has the rows of the full
    # sweep's level of that N (same seed)
    by_n = off.levels.set_index("concurrency")
    for _, r in on.levels[~stopped].iterrows():
        if r["concurrency"] in by_n.index:
            assert r["n_requests"] == by_n.loc[r["concurrency"], "n_requests"]
    for t in on.summary["tiers"]:
        for n in (t["max_agents"], t["lowest_failing_agents"]):
            if n and n == n:
                assert not stopped[on.levels["concurrency"] == n].any()
    # stopped levels decide nothing and say so; the sweep still meets AA's rules
    assert not on.levels.loc[stopped, "decides_answer"].any()
    assert on.summary["meets_aa_rules"] and off.summary["meets_aa_rules"]
    assert any("stopped early" in n for n in on.summary["notes"])


def test_a_stopped_level_that_turns_out_to_decide_is_measured_again_in_full(pair, tmp_path, monkeypatch):
    from agentperf_kit.sweep import _Sweeper

    _, off = pair
    # the plain search (no guided ramp step, no aimed bisection point: an aimed point runs in full from
    # the start) measures the default sweep's slo2 answer, N = 6, as a step before the failure above it
    monkeypatch.setattr(_Sweeper, "guided_step", lambda self, ramp: None)
    monkeypatch.setattr(_Sweeper, "aimed_point", lambda self, tier, lo, hi: None)
    on = run_sweep(SweepConfig(out=str(tmp_path / "plain"), band=False), progress=False)
    again = [n for n in on.summary["notes"] if "measured again, in full" in n]
    assert again, "the plain search measures the slo2 answer (N = 6) before the failure above it"
    n = int(again[0].split(":")[0].removeprefix("N="))
    manifest = json.loads((on.directory / "levels" / f"n{n:05d}_e0" / "manifest.json").read_text())
    assert manifest["window"]["stopped_early_reason"] is None and manifest["meets_aa_rules"]
    # in virtual time the full run is the same run as the full sweep's (same seed)
    a = load_sweep(on.directory).requests
    b = load_sweep(off.directory).requests
    cols = ["agent", "t_send_s", "ttft_s", "output_speed_tps"]
    assert (
        a[a["concurrency"] == n][cols]
        .reset_index(drop=True)
        .equals(b[b["concurrency"] == n][cols].reset_index(drop=True))
    )


def test_a_resumed_sweep_reuses_stopped_levels_and_gives_the_same_result(pair, tmp_path):
    import shutil

    on, _ = pair
    out = tmp_path / "resumed"
    shutil.copytree(on.directory, out)
    (out / "summary.json").unlink()
    again = run_sweep(SweepConfig(out=str(out), band=False), progress=False)
    assert again.levels["n_requests"].equals(on.levels["n_requests"])
    assert again.summary["n_levels_stopped_early"] == on.summary["n_levels_stopped_early"]


def test_a_level_without_an_output_directory_stops_early_too():
    from agentperf_kit.sim.virtual import run_sim_level
    from agentperf_kit.slo import get_tier_preset
    from agentperf_kit.trajectories import default_trajectories

    rules = RunRules()  # AA's: the window closes at 3 trajectories per agent
    tiers = get_tier_preset("aa-dsv4pro").tiers
    es = EarlyStop(tiers, {"slo1": frozenset({"pass"})})
    res = run_sim_level(default_trajectories(), 2, rules, seed=4, early_stop=es)
    full = run_sim_level(default_trajectories(), 2, rules, seed=4)
    assert res.window["stopped_early_reason"] == es.looks[0] and len(es.looks) == 1
    assert res.window["early_stop_looks"] == es.looks
    assert res.window["window_end_s"] < full.window["window_end_s"]
    assert res.window["min_trajectories_per_agent_in_window"] >= 1
    # the cut window holds exactly the requests the look judged, every one of them ended
    n_judged = int(es.looks[0].split("(")[1].split(" requests")[0].replace(",", ""))
    assert int(res.requests["in_window"].sum()) == n_judged
    # up to the cut the run is the full run's (the same seed, the same engine)
    cut = res.window["window_end_s"]
    cols = ["agent", "t_send_s", "t_end_s", "ttft_s"]
    a = res.requests[res.requests["t_end_s"] < cut][cols].sort_values(cols).reset_index(drop=True)
    b = full.requests[full.requests["t_end_s"] < cut][cols].sort_values(cols).reset_index(drop=True)
    assert a.equals(b)


def test_settling_at_the_last_look_stops_a_level_whose_verdict_is_not_the_one_needed():
    """``settle_at_last_look`` (the band's levels): a level stops at its last look even when a tier's
    verdict there is not one that lets it stop; without it the level runs its full window."""
    from agentperf_kit.sim.virtual import run_sim_level
    from agentperf_kit.slo import get_tier_preset
    from agentperf_kit.trajectories import default_trajectories

    tiers = get_tier_preset("aa-dsv4pro").tiers
    needs = {"slo1": frozenset({"fail"})}  # 2 agents pass slo1 by far: never the verdict needed
    plain = EarlyStop(tiers, needs)
    settle = EarlyStop(tiers, needs, settle_at_last_look=True)
    full = run_sim_level(default_trajectories(), 2, RunRules(), seed=4, early_stop=plain)
    cut = run_sim_level(default_trajectories(), 2, RunRules(), seed=4, early_stop=settle)
    assert full.window["stopped_early_reason"] is None and len(plain.looks) == 2
    assert len(settle.looks) == 2 and cut.window["stopped_early_reason"] == settle.looks[-1]
    assert settle.looks[-1].startswith("look 2 ") and "slo1 pass" in settle.looks[-1]
    assert settle.looks[-1].endswith("(last look: the undecided tiers take their point verdicts)")
    assert cut.window["window_end_s"] < full.window["window_end_s"]


def test_a_live_sweep_stops_decided_levels_early_and_keeps_every_request(tmp_path):
    from agentperf_kit.results import load_run
    from agentperf_kit.trajectories import SynthConfig, fit_context, save_trajectories, synthesize
    from tests.sse_servers import SSEServer, serving

    synth = SynthConfig(
        tool_delay_median_s=0.005,
        tool_delay_range_s=(0.002, 0.01),
        output_median_tokens=800.0,  # ~20 tokens once the context is scaled to 1,500
        output_p95_tokens=1500.0,
        reasoning_share=(0.0, 0.0),
    )
    path = save_trajectories(fit_context(synthesize(synth, count=8, seed=2), 1500), tmp_path / "t.jsonl")
    with serving(SSEServer(ttft_s=0.005, itl_s=0.0005)) as server:
        cfg = SweepConfig(
            target=server.base_url,
            model="m",
            accelerators=1,
            trajectories=str(path),
            level_duration_s=6.0,
            warmup_s=0.2,
            min_trajectories=0,
            min_trajectories_per_agent=0,
            max_agents=8,
            drain_timeout_s=2,
            confidence=0.5,
            max_extensions=0,
            power_w=700,
            power_scope="declared",
            out=str(tmp_path / "live"),
            endpoint="completions",
        )
        res = run_sweep(cfg, progress=False)
    # every tier passes by far: N = 1, 2 and 4 only steer the ramp (a pass may stop them), N = 8 is the cap
    lv = res.levels.set_index("concurrency")
    assert list(lv.index) == [1, 2, 4, 8]
    assert pd.isna(lv.loc[8, "stopped_early"])  # a pass at the cap is an answer: full window
    stopped = lv[lv["stopped_early"].notna()]
    assert len(stopped) >= 1, lv[["n_requests", "stopped_early"]]
    for n in stopped.index:
        m = load_run(tmp_path / "live" / "levels" / f"n{n:05d}_e0").manifest
        w = m["window"]
        assert w["stopped_early_reason"] == w["early_stop_looks"][-1] and w["window_s"] < 6.0
        assert "slo1 pass, slo2 pass, slo3 pass" in w["stopped_early_reason"]
    # nothing lost: every request the server saw is a row of some level
    level_dirs = sorted((tmp_path / "live" / "levels").iterdir())
    assert sum(len(load_run(d).requests) for d in level_dirs) == len(server.bodies)


def test_resuming_with_early_stop_off_measures_the_stopped_levels_in_full(pair, tmp_path):
    import shutil

    on, off = pair
    out = tmp_path / "switched"
    shutil.copytree(on.directory, out)
    (out / "summary.json").unlink()
    full = run_sweep(SweepConfig(out=str(out), band=False, early_stop=False), progress=False)
    assert full.summary["n_levels_stopped_early"] == 0
    assert full.levels["n_requests"].equals(off.levels["n_requests"])  # the full sweep's levels, same seeds
    # measured now: the stopped levels its (full) search still asks for, and the levels only it asks for
    # (its guided steps read full windows' margins); every full level of the first run is reused
    stopped = set(on.levels.loc[on.levels["stopped_early"].notna(), "concurrency"])
    wanted = set(off.levels["concurrency"])
    new = (stopped & wanted) | (wanted - set(on.levels["concurrency"]))
    assert full.summary["levels_measured_this_run"] == len(new) >= 1
