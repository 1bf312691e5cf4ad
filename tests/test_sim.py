"""The simulated inference system in virtual time: step times by hand, conservation, monotonicity, the
KV-cache cliff, prefix-cache behaviour and determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentperf_kit.agents import RunRules
from agentperf_kit.metrics import level_stats
from agentperf_kit.sim.engine import Engine
from agentperf_kit.sim.presets import efficiency, get_deployment, list_deployments
from agentperf_kit.sim.virtual import run_sim_level
from agentperf_kit.trajectories import synthesize

SHORT = RunRules(
    warmup_s=10, duration_s=120, min_trajectories=0, min_trajectories_per_agent=0, drain_timeout_s=300
)
TRAJS = synthesize(count=40, seed=11)


def _run(n, dep="h200x8-dsv4pro", seed=1, rules=SHORT, trajs=TRAJS):
    return run_sim_level(trajs, n, rules, deployment=dep, seed=seed)


def _stats(res):
    w = res.window
    return level_stats(res.requests, window_start_s=w["window_start_s"], window_end_s=w["window_end_s"])


def test_presets_resolve_and_unknown_names_are_listed():
    names = list_deployments()
    assert {"h200x8-dsv4pro", "gb300nvl72-dsv4pro"} <= set(names)
    for name in names:
        dep = get_deployment(name)
        assert dep.kv_capacity_tokens > 0, name
    with pytest.raises(KeyError, match="known: "):
        get_deployment("tpu-pod")


def test_decode_step_time_by_hand():
    """Every named term of the step-time model, recomputed from the preset facts (docs/simulator.md)."""
    dep = get_deployment("h200x8-dsv4pro")
    eff = efficiency("mid")
    eng = Engine(dep, eff, lambda *a: None, lambda *a: None)
    b, ctx = 4, 4 * 30_000
    # compute: non-expert linear layers at FP8, routed experts at BF16 (FP4 experts on Hopper: W4A16
    # dequant) on the busiest rank (imbalance 1.2), attention: 1.01e10 per query + 186,368 per context token
    expert_active = 6 * 0.066e9 * 58
    assert dep.expert_active_params == pytest.approx(expert_active)
    assert dep.expert_imbalance == 1.2 and dep.expert_bandwidth_factor == 0.7 and dep.ep_size == 8
    t_cmp = 2 * (49e9 - expert_active) * b / (8 * 1979e12 * eff.compute)
    t_cmp += 2 * expert_active * b * 1.2 / (8 * 989e12 * eff.compute)
    t_cmp += (1.01e10 * b + 186_368 * ctx) / (8 * 989e12 * eff.compute)
    # memory: a dense-weight copy per GPU (data-parallel attention), KV read (per context token and per
    # query), the experts the batch touches on the busiest rank at the dequant bandwidth factor
    touched = 384 * (1 - (1 - 6 / 384) ** b)
    bw = 8 * 4.8e12 * eff.bandwidth
    t_mem = (8 * dep.dense_weight_bytes + 1211 * ctx + 22_030_000 * b) / bw
    t_mem += dep.expert_weight_bytes_per_layer * 58 * touched * 1.2 / (bw * 0.7)
    roof = max(t_cmp, t_mem) + (1 - 0.8) * min(t_cmp, t_mem)  # partial overlap 0.8
    # exposed EP8 all-to-all per MoE layer: 49 us + tokens per rank x top-6 x 7168 x 3 B / 155 GB/s
    # (fixed latencies scale with the efficiency set's latency factor)
    a2a = 58 * (49e-6 * eff.latency + (b / 8) * 6 * 7168 * 3 / 155e9)
    floor = (2.0e-3 + 40e-6 * 61) * eff.latency  # latency floor: per step + per layer
    expected = floor + roof + a2a
    assert eng.step_time(b, ctx, 0, 0) == pytest.approx(expected)
    assert eng.decode_step_time(b, ctx) == pytest.approx(expected)  # no MTP on this preset
    # a large batch touches (almost) every expert: step time grows sub-linearly in the batch
    assert eng.step_time(64, 64 * 10_000, 0, 0) < 64 * eng.step_time(1, 10_000, 0, 0) / 4


def test_mtp_raises_per_user_speed_and_costs_verification_work():
    from agentperf_kit.sim.presets import with_mtp

    dep = get_deployment("h200x8-dsv4pro")
    eff = efficiency("mid")
    plain = Engine(dep, eff, lambda *a: None, lambda *a: None)
    mtp = Engine(with_mtp(dep), eff, lambda *a: None, lambda *a: None)
    for b in (1, 16, 64):
        t0, t1 = plain.decode_step_time(b, b * 30_000), mtp.decode_step_time(b, b * 30_000)
        # a verification step (2 queries per sequence) takes longer than a plain step ...
        assert t1 * 1.85 > t0
        # ... and yields 1.85 tokens per sequence on average: faster per user
        assert t1 < t0
        # exactly: the 2-query step divided by 1 + acceptance
        assert t1 == pytest.approx(mtp._step(2 * b, b, 2.0, b * 30_000, 0, 0)[0] / 1.85)


def test_multi_node_deployments_pay_for_scale_out_communication():
    one = get_deployment("h200x8-dsv4pro")
    two = get_deployment("h200x16-dsv4pro")
    assert two.nodes == 2 and two.ep_size == 16
    assert two.a2a_link_bytes_per_s == 50e9  # EP16 spans two nodes: RDMA
    assert one.a2a_link_bytes_per_s == 155e9  # EP8 inside one NVLink domain
    eff = efficiency("mid")
    e1 = Engine(one, eff, lambda *a: None, lambda *a: None)
    e2 = Engine(two, eff, lambda *a: None, lambda *a: None)
    assert e2._comm(256) > e1._comm(128)  # same tokens per rank, slower link
    tp = get_deployment("h100x16-dsv4pro-tp16")
    assert tp.tp_internode_collectives == 2 * 61 and tp.ep_size == 1


def test_conservation_every_request_sent_has_one_row():
    res = _run(8)
    df = res.requests
    assert res.manifest["sim"]["requests"] == len(df)
    assert df.ok.all() or set(df.error[~df.ok]) <= {"cancelled_at_end", "http_error"}
    assert (df.output_tokens[df.ok] == df.target_output_tokens[df.ok]).all()
    assert (df.t_first_s[df.ok] >= df.t_send_s[df.ok]).all()
    assert (df.t_end_s[df.ok] >= df.t_first_s[df.ok]).all()


def test_more_agents_mean_slower_output_and_longer_ttft():
    s = [_stats(_run(n)) for n in (2, 16, 96)]
    speeds = [x["p25_output_speed_tps"] for x in s]
    ttfts = [x["p95_ttft_s"] for x in s]
    assert speeds[0] > speeds[1] > speeds[2]
    assert ttfts[0] < ttfts[2]


def test_prefix_cache_hits_within_phases_only():
    res = _run(4)
    df = res.requests[res.requests.ok]
    first_of_phase = df.groupby("phase_id").turn.transform("min") == df.turn
    assert (df.cached_prompt_tokens[first_of_phase] == 0).all()
    later = df[~first_of_phase]
    assert (later.cached_prompt_tokens > 0).mean() > 0.95
    assert (later.cached_prompt_tokens <= later.prompt_tokens).all()


def test_ttft_cliff_when_the_kv_cache_fills():
    dep = get_deployment("h200x8-dsv4pro")
    roomy = dataclasses.replace(dep, kv_capacity_tokens=20_000_000)
    # 24 agents: below the decode saturation of the step-time model (issue 12's physics made steps slower,
    # so the former 48 agents queued even with a roomy cache); 600K tokens hold less than their contexts
    tight = dataclasses.replace(dep, kv_capacity_tokens=600_000)
    a = _stats(_run(24, dep=roomy))
    b = _stats(_run(24, dep=tight))
    assert b["prefix_cache_hit_rate"] < a["prefix_cache_hit_rate"]
    assert b["p95_ttft_s"] > 5 * a["p95_ttft_s"]


def test_deterministic_for_a_seed():
    a, b, c = _run(6, seed=3), _run(6, seed=3), _run(6, seed=4)
    cols = ["agent", "turn", "t_send_s", "t_first_s", "t_end_s", "cached_prompt_tokens"]
    assert a.requests[cols].equals(b.requests[cols])
    assert not a.requests[cols].equals(c.requests[cols])


def test_manifest_records_deployment_power_and_window(tmp_path):
    res = run_sim_level(TRAJS, 4, SHORT, seed=1, out_dir=tmp_path)
    m = res.manifest
    assert m["power_scope"] == "modelled" and m["power_w"] > 0
    assert m["accelerators"] == 8 and m["target"]["deployment"]["name"] == "h200x8-dsv4pro"
    assert not m["window"]["meets_aa_rules"]
    assert (tmp_path / "requests.parquet").exists() and (tmp_path / "manifest.json").exists()
    assert math.isfinite(m["window"]["window_s"])


# -- preemption by recompute (kv_policy = "preempt") ----------------------------------------------------


def _burst(policy, cap=20_000, n=20, prompt=2000, output=600):
    """n requests at t=0 on a tiny KV cache; returns (engine, {i: (t_first, t_end)}, kv samples)."""
    import dataclasses

    from agentperf_kit.sim.engine import SimRequest

    dep = dataclasses.replace(get_deployment("h200x8-dsv4pro"), kv_capacity_tokens=cap)
    done: dict[int, tuple[float, float, int]] = {}
    eng = Engine(
        dep,
        efficiency("mid"),
        lambda r, t: done.__setitem__(r.key, (r.t_first, t, eng.tokens_done(r))),
        lambda *a: None,
        kv_policy=policy,
    )
    for i in range(n):
        eng.submit(SimRequest(i, i, prompt, 0, output, 0.0))
    samples = []
    while eng.has_work:
        eng.advance(float("inf"))
        samples.append(eng.kv_running() + eng.idle_tokens)
    return eng, done, samples


def test_preemption_by_recompute_when_blocks_run_out():
    eng, done, samples = _burst("preempt")
    assert eng.preemptions > 0
    assert sorted(done) == list(range(20))  # every request finishes despite preemptions
    assert all(tokens == 600 for _, _, tokens in done.values())
    assert max(samples) <= 20_000  # the cache is never overcommitted at an event
    assert eng.kv_running() == 0 and eng.prefill_alloc == 0 and eng.b == 0


def test_tokens_done_holds_still_while_a_preempted_request_waits():
    """tokens_done of a preempted request stays at the tokens generated before the preemption until its
    re-prefill completes (it used to grow with the engine's step index), never decreases and never
    exceeds the output; decoding() lists exactly the requests whose count can grow."""
    import dataclasses

    from agentperf_kit.sim.engine import SimRequest

    dep = dataclasses.replace(get_deployment("h200x8-dsv4pro"), kv_capacity_tokens=20_000)
    eng = Engine(dep, efficiency("mid"), lambda r, t: None, lambda *a: None, kv_policy="preempt")
    reqs = [SimRequest(i, i, 2000, 0, 600, 0.0) for i in range(20)]
    for r in reqs:
        eng.submit(r)
    last = {id(r): 0 for r in reqs}
    held = 0  # samples of a preempted request outside the decode batch with tokens already generated
    t = 0.0
    while eng.has_work:
        t += 0.05
        eng.advance(t)
        decoding = {id(r) for r in eng.decoding()}
        for r in reqs:
            n = eng.tokens_done(r)
            assert last[id(r)] <= n <= r.output, (r.key, last[id(r)], n)
            if id(r) not in decoding and r.preemptions and r.gen0 < r.output:
                assert n == r.gen0  # frozen while queued / re-prefilling
                held += 1
            last[id(r)] = n
    assert eng.preemptions > 0 and held > 0  # the case under test happened
    assert all(eng.tokens_done(r) == r.output for r in reqs)


def test_preempt_admits_more_at_first_than_reserve_but_stalls_the_newest():
    res_eng, res_done, _ = _burst("reserve")
    pre_eng, pre_done, _ = _burst("preempt")
    assert res_eng.preemptions == 0
    # reserve admits 20,000 // 2,600 = 7 at once; preempt admits by prompt only, so more requests get
    # their first token early ...
    early = lambda d: sum(1 for f, _, _ in d.values() if f < 1.0)  # noqa: E731
    assert early(pre_done) > early(res_done)
    # ... and pays with recomputation: prompt tokens prefilled again after preemptions
    assert res_eng.prefill_computed == 20 * 2000
    assert pre_eng.prefill_computed > 20 * 2000


def test_reserve_policy_never_preempts_under_pressure():
    eng, done, samples = _burst("reserve", n=30)
    assert eng.preemptions == 0 and len(done) == 30
    assert max(samples) <= 20_000


# -- prefill/decode disaggregation ---------------------------------------------------------------------


def test_disaggregated_single_request_by_hand():
    """TTFT = prefill in the prefill pool + KV transfer; then output - 1 decode steps in the decode pool."""
    from agentperf_kit.sim.disagg import make_engine
    from agentperf_kit.sim.engine import SimRequest

    dep = get_deployment("h200x16-dsv4pro-pd")
    eff = efficiency("mid")
    out = {}
    eng = make_engine(dep, eff, lambda r, t: out.__setitem__("r", (r, t)), lambda *a: None)
    eng.submit(SimRequest("a", 0, 12_000, 0, 50, 0.0))
    while eng.has_work:
        eng.advance(math.inf)
    req, t_end = out["r"]
    pre = Engine(dep.prefill_pool, eff, lambda *a: None, lambda *a: None)
    prefill = pre.step_time(12_000, 0, 12_000**2 / 2, 12_000)  # one 12K chunk (budget 16,384)
    transfer = 12_000 * dep.kv_bytes_per_token / dep.kv_transfer_bytes_per_s
    assert req.t_first == pytest.approx(prefill + transfer)
    dec = Engine(dep.decode_pool, eff, lambda *a: None, lambda *a: None)
    first_step = dec.step_time(1, 0, 0, 0)  # the admission step (KV already there)
    decode = sum(dec.step_time(1, 12_001 + k, 0, 0) for k in range(49))
    assert t_end - req.t_first == pytest.approx(first_step + decode, rel=1e-6)


def test_disaggregated_run_conserves_requests_and_caches_prefixes_in_the_prefill_pool():
    res = _run(24, dep="h200x16-dsv4pro-pd")
    df = res.requests
    ok = df[df.ok]
    assert res.manifest["sim"]["requests"] == len(df) and len(ok) > 50
    assert (ok.output_tokens == ok.target_output_tokens).all()
    later = ok[ok.groupby("phase_id").turn.transform("min") != ok.turn]
    assert (later.cached_prompt_tokens > 0).mean() > 0.9
    # a P/D system at this load answers with a TTFT at least the transfer time of its prompt
    dep = get_deployment("h200x16-dsv4pro-pd")
    transfer = ok.prompt_tokens * dep.kv_bytes_per_token / dep.kv_transfer_bytes_per_s
    assert (ok.ttft_s >= transfer - 1e-9).all()


def test_disaggregated_pools_advance_in_lockstep():
    """A request arriving while the decode pool runs a long decode is prefilled at once (no run-ahead)."""
    from agentperf_kit.sim.disagg import make_engine
    from agentperf_kit.sim.engine import SimRequest

    dep = get_deployment("h200x16-dsv4pro-pd")
    done = {}
    eng = make_engine(dep, efficiency("mid"), lambda r, t: done.__setitem__(r.key, r), lambda *a: None)
    eng.submit(SimRequest("long", 0, 1000, 0, 5000, 0.0))
    eng.advance(5.0)  # the long request is decoding
    assert "long" not in done
    eng.submit(SimRequest("late", 1, 1000, 0, 10, eng.now))
    t_sub = eng.now
    while "late" not in done:
        eng.advance(math.inf)
    assert done["late"].t_first - t_sub < 0.5  # prefill + transfer + one step, not the long decode


def test_serve_sim_refuses_disaggregated_presets():
    from agentperf_kit.sim.server import SimServer

    with pytest.raises(ValueError, match="disaggregated"):
        SimServer("h200x16-dsv4pro-pd")


# -- conservation: every submitted request ends finished, rejected or cancelled -------------------------


@pytest.mark.parametrize("how", ["prefix_cache", "kv_ready"])
def test_fully_cached_request_behind_a_budget_filling_chunk_is_not_lost(how):
    """Regression (issue 12 item 2): a request admitted with nothing to prefill, queued behind a prefill
    chunk that takes the whole step budget, was dropped from the prefilling list when that chunk completed
    in the same step, and was never answered."""
    from agentperf_kit.sim.engine import SimRequest

    dep = dataclasses.replace(get_deployment("h200x8-dsv4pro"), max_num_batched_tokens=4096)
    done: dict[str, float] = {}
    eng = Engine(dep, efficiency("mid"), lambda r, t: done.__setitem__(r.key, t), lambda *a: None)
    if how == "prefix_cache":  # phase 7's first turn leaves its 1,600-token prompt in the prefix cache
        eng.submit(SimRequest("first", 7, 1600, 0, 2, 0.0))
        while eng.has_work:
            eng.advance(math.inf)
        t0 = eng.now
        cached = SimRequest("cached", 7, 1600, 1600, 5, t0)  # the whole prompt repeats: 100 % hit
    else:  # a decode pool's request: its KV arrived from the prefill pool
        t0 = 0.0
        cached = SimRequest("cached", 7, 1600, 0, 5, t0, kv_ready=True)
    eng.submit(SimRequest("big", 8, 4096, 0, 3, t0))  # one chunk fills the whole budget
    eng.submit(cached)
    while eng.has_work:
        eng.advance(math.inf)
    assert {"big", "cached"} <= set(done)
    assert eng.submitted == eng.finished_count + eng.rejected_count + eng.cancelled_count


def _shrink(dep, cap, budget, seqs):
    out = dataclasses.replace(dep, kv_capacity_tokens=cap, max_num_batched_tokens=budget, max_num_seqs=seqs)
    if dep.disaggregated:
        out = dataclasses.replace(
            out,
            prefill_pool=_shrink(dep.prefill_pool, cap, budget, seqs),
            decode_pool=_shrink(dep.decode_pool, cap, budget, seqs),
        )
    return out


_TURN = st.tuples(
    st.sampled_from([0, 16, 512, 1600, 4096]),  # prompt growth over the phase's previous prompt (0: full hit)
    st.integers(1, 40),  # output tokens
    st.sampled_from([0.0, 0.01, 0.1, 1.0]),  # tool delay before this turn, s
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    preset=st.sampled_from(
        ["h200x8-dsv4pro", "h200x16-dsv4pro-pd", "h200x8-dsv4pro-mtp", "h200x16-dsv4pro", "b200x8-dsv3"]
    ),
    policy=st.sampled_from(["preempt", "reserve"]),
    cap=st.sampled_from([6000, 20_000, 10**7]),
    budget=st.sampled_from([512, 4096, 8192]),
    seqs=st.sampled_from([2, 8, 256]),
    phases=st.lists(
        st.tuples(st.sampled_from([0.0, 0.05, 0.5]), st.lists(_TURN, min_size=1, max_size=5)),
        min_size=1,
        max_size=8,
    ),
    horizon=st.floats(0.5, 30.0),
)
def test_conservation_under_random_workloads(preset, policy, cap, budget, seqs, phases, horizon):
    """Every submitted request ends finished, rejected or cancelled, whatever the workload (prompt sizes,
    full and partial prefix-cache hits, tool delays, bursts of arrivals), KV policy and preset, P/D
    included. Each phase is a closed-loop agent: its next turn is sent a tool delay after the last ends."""
    from agentperf_kit.sim.disagg import make_engine
    from agentperf_kit.sim.engine import SimRequest

    dep = _shrink(get_deployment(preset), cap, budget, seqs)
    outcome: dict[tuple[int, int], str] = {}
    prompt_of = dict.fromkeys(range(len(phases)), 0)
    pending: list[tuple[float, int, int]] = [(t0, ph, 0) for ph, (t0, _) in enumerate(phases)]

    def on_finish(req, t):
        assert outcome[req.key] == "sent"
        outcome[req.key] = "finished"
        ph, turn = req.key
        if turn + 1 < len(phases[ph][1]):
            pending.append((t + phases[ph][1][turn + 1][2], ph, turn + 1))

    def on_reject(req, t, detail):
        assert outcome[req.key] == "sent"
        outcome[req.key] = "rejected"

    eng = make_engine(dep, efficiency("mid"), on_finish, on_reject, kv_policy=policy)
    while True:
        pending.sort()
        t_next = pending[0][0] if pending else math.inf
        if eng.has_work and eng.now < min(t_next, horizon):
            eng.advance(min(t_next, horizon))
            continue
        if not pending or t_next > horizon:
            break
        t, ph, turn = pending.pop(0)
        if not eng.has_work:
            eng.now = max(eng.now, t)
        grow, output, _ = phases[ph][1][turn]
        prefix = prompt_of[ph]
        prompt_of[ph] = max(16, prefix + grow)
        outcome[(ph, turn)] = "sent"
        eng.submit(SimRequest((ph, turn), ph, prompt_of[ph], prefix, output, max(t, eng.now)))
    for req in eng.cancel_all():  # raises SimulatorInvariantError on a lost request
        assert outcome[req.key] == "sent"
        outcome[req.key] = "cancelled"
    assert set(outcome.values()) <= {"finished", "rejected", "cancelled"}
    assert eng.submitted == len(outcome)
