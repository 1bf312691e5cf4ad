"""Intervals for clustered samples, metric edge cases, failure policy, unfinished requests, steadiness.

Hand-computed examples for each definition and interval method, and a negative control: on strongly
clustered data the independent (order-statistic) interval is shown too narrow, the clustered one not.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentperf_kit.agents import RunRules
from agentperf_kit.metrics import derive_request_metrics
from agentperf_kit.percentiles import clustered_percentile_ci, percentile, percentile_ci
from agentperf_kit.replay import Endpoint, run_live
from agentperf_kit.slo import Tier, evaluate_level, level_intervals, level_verdicts, policy_frame
from tests.sse_servers import SSEServer

NAN = math.nan
TIER = Tier("slo1", "20 & 10", 20, 10)

# --- intervals -----------------------------------------------------------------------------------------


def test_design_effect_by_hand():
    """1000 values 0..999 in 100 clusters of 10 consecutive ones; median: k = 500 below, so 50 clusters
    sum +5 and 50 sum -5 of (1[below] - 0.5): V = 100 * 25 / 1000^2 = 0.0025, V_iid = 0.25 / 1000 =
    0.00025, deff = 10, n_eff = 100. The exact 95% ranks of a median of 100 are 39 and 60 (0-based;
    Binomial(100, 0.5)), mapped to (k + 1) * 1001 / 101 - 1: floor(395.4) = 395 and ceil(603.6) = 604."""
    x = np.arange(1000.0)
    ci = clustered_percentile_ci(x, 50, clusters=[np.arange(1000) // 10])
    assert ci.deff == pytest.approx(10.0) and ci.n_eff == pytest.approx(100.0)
    assert (ci.low, ci.high) == (395.0, 604.0)
    assert ci.value == 499.5
    # clusters that alternate between below and above carry no correlation: deff floored at 1, the
    # independent interval exactly
    alt = clustered_percentile_ci(x, 50, clusters=[np.arange(1000) % 10])
    assert alt.deff == 1.0 and (alt.low, alt.high) == percentile_ci(x, 50)


def test_two_clusters_by_hand():
    """8 values, two clusters of 4 (the lower half and the upper half): median indicator sums +2 and -2,
    V = 8 / 64 = 0.125, V_iid = 0.25 / 8, deff = 4, n_eff = 2: two samples cannot bound a median."""
    ci = clustered_percentile_ci(np.arange(1.0, 9.0), 50, clusters=[np.array([0, 0, 0, 0, 1, 1, 1, 1])])
    assert ci.deff == pytest.approx(4.0) and ci.n_eff == pytest.approx(2.0)
    assert (ci.low, ci.high) == (-math.inf, math.inf)


@pytest.mark.parametrize("n", [1, 2, 7, 50, 333])
@pytest.mark.parametrize("q", [0, 5, 25, 50, 95, 100])
def test_singleton_clusters_give_the_exact_independent_interval(n, q):
    rng = np.random.default_rng(n)
    x = rng.exponential(size=n)
    x[: min(3, n)] = math.inf  # failures kept as +inf
    x = np.append(x, NAN)  # ignored with its label
    ci = clustered_percentile_ci(x, q, clusters=[np.arange(n + 1)])
    assert (ci.low, ci.high) == percentile_ci(x, q) and ci.deff == 1.0
    assert ci.value == percentile(x, q) or (math.isnan(ci.value) and math.isnan(percentile(x, q)))
    assert clustered_percentile_ci(x, q).low == percentile_ci(x, q)[0]  # no clusters: the same


def _clustered_sample(rng, agents, per_agent, spread):
    """Each agent has its own mean (spread) plus unit noise: the population is N(0, 1 + spread^2)."""
    mu = rng.normal(0, spread, agents)
    x = (mu[:, None] + rng.normal(size=(agents, per_agent))).ravel()
    return x, np.repeat(np.arange(agents), per_agent)


def test_negative_control_iid_interval_is_too_narrow_on_clustered_data():
    """40 agents with their own means (sd 2) and 100 requests each: 200 replications. The independent
    interval covers the population P25 far less often than 95%; the agent-clustered one near 95%."""
    rng = np.random.default_rng(7)
    truth = -0.6744897501960817 * math.sqrt(1 + 2.0**2)
    iid = clu = 0
    reps = 200
    for _ in range(reps):
        x, agent = _clustered_sample(rng, 40, 100, 2.0)
        lo, hi = percentile_ci(x, 25)
        iid += lo <= truth <= hi
        c = clustered_percentile_ci(x, 25, clusters=[agent])
        clu += c.low <= truth <= c.high
    assert iid / reps < 0.5  # too narrow: the test can tell
    assert clu / reps >= 0.88


def test_time_batches_catch_a_shared_server_state():
    """Every agent sees the same slowly varying server state (a shared random walk over time): agent
    clusters see nothing (deff 1), 20 time batches see the correlation; the level interval with the
    default method (agent+time) is the wider."""
    rng = np.random.default_rng(3)
    n_t, agents = 400, 30
    state = np.cumsum(rng.normal(0, 0.3, n_t))
    x = (state[:, None] + rng.normal(size=(n_t, agents))).ravel()
    df = pd.DataFrame(
        {
            "ttft_s": np.exp(x),
            "t_send_s": np.repeat(np.arange(n_t, dtype=float), agents),
            "agent": np.tile(np.arange(agents), n_t),
        }
    )
    by_agent = level_intervals(df, "ttft_s", 95, method="agent")
    by_time = level_intervals(df, "ttft_s", 95, method="time")
    both = level_intervals(df, "ttft_s", 95, method="agent+time")
    iid = level_intervals(df, "ttft_s", 95, method="iid")
    assert by_agent.deff < 1.5 and by_time.deff > 5
    assert both.deff == by_time.deff and both.high - both.low > 2 * (iid.high - iid.low)


# --- metric definitions --------------------------------------------------------------------------------


def _raw(*rows):
    cols = [
        "t_send_s",
        "t_first_s",
        "t_first_answer_s",
        "t_last_s",
        "t_end_s",
        "output_tokens",
        "first_chunk_tokens",
        "n_chunks",
        "ok",
        "error",
    ]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("output_tokens", "first_chunk_tokens", "n_chunks"):
        df[c] = df[c].astype("Int64")
    df["error"] = df["error"].astype("string")
    return df


def test_metric_edge_cases_by_hand():
    df = derive_request_metrics(
        _raw(
            (0.0, 0.5, 0.5, 2.5, 2.6, 101, None, 100, True, ""),  # (101 - 1) / 2 = 50
            (0.0, 0.5, 0.5, 2.5, 2.6, 101, 5, 97, True, ""),  # AA API: (101 - 5) / 2 = 48
            (0.0, 0.4, 0.4, 0.4, 0.5, 30, None, 1, True, ""),  # one chunk/read: unmeasurable
            (0.0, 0.9, 0.9, 0.9, 0.9, 12, None, 0, True, ""),  # no visible text, usage > 0: undefined
            (0.0, 1.0, 1.0, 11.0, 11.0, None, None, 21, False, "cancelled_at_end"),  # (21 - 1) / 10 = 2
            (0.0, NAN, NAN, NAN, 30.0, None, None, 0, False, "cancelled_at_end"),  # hung: a miss
            (0.0, NAN, NAN, NAN, 3.0, None, None, 0, False, "http_error"),  # failure: a miss
            (0.0, 0.3, 0.3, 0.3, 0.3, 1, None, 1, True, ""),  # one token: no speed, no flag
        )
    )
    sp = df.output_speed_tps.tolist()
    assert sp[0] == pytest.approx(50.0) and sp[1] == pytest.approx(48.0)
    assert math.isnan(sp[2]) and math.isnan(sp[3]) and math.isnan(sp[7])
    assert sp[4] == pytest.approx(2.0) and sp[5] == 0.0 and sp[6] == 0.0
    assert df.speed_unmeasurable.tolist() == [False, False, True, True, False, False, False, False]
    assert df.speed_formula.tolist()[:2] == ["minus_one", "aa_first_chunk"]
    tt = df.ttft_s.tolist()
    assert tt[0] == 0.5 and tt[2] == 0.4 and math.isnan(tt[3]) and tt[4] == 1.0
    assert tt[5] == math.inf and tt[6] == math.inf


def _level(speeds, ttfts, ok=None, error=None, t=None, unmeasurable=None):
    n = len(speeds)
    return pd.DataFrame(
        {
            "output_speed_tps": speeds,
            "ttft_s": ttfts,
            "in_window": True,
            "agent": np.arange(n) % 16,
            "t_send_s": np.arange(n, dtype=float) if t is None else t,
            "ok": [True] * n if ok is None else ok,
            "error": pd.array([""] * n if error is None else error, dtype="string"),
            "speed_unmeasurable": [False] * n if unmeasurable is None else unmeasurable,
        }
    )


def test_failure_policy_flips_the_verdict_of_six_failures_in_a_hundred():
    """94 good requests (TTFT 1 s, 50 tok/s) and 6 server failures: under `miss` the P95 TTFT (rank
    0.95 * 99 = 94.05) is +inf: fail; under `exclude` (the reference) the 94 left pass."""
    df = _level(
        [50.0] * 94 + [0.0] * 6,
        [1.0] * 94 + [math.inf] * 6,
        ok=[True] * 94 + [False] * 6,
        error=[""] * 94 + ["http_error"] * 6,
    )
    assert level_verdicts(df, [TIER], confidence=None, failure_policy="miss") == {"slo1": "fail"}
    assert level_verdicts(df, [TIER], confidence=None, failure_policy="exclude") == {"slo1": "pass"}
    # at 95% confidence 6 misses in 100 cannot show that more than 5% of the population misses
    assert level_verdicts(df, [TIER], failure_policy="miss") == {"slo1": "inconclusive"}
    assert level_verdicts(df, [TIER], failure_policy="exclude") == {"slo1": "pass"}
    assert len(policy_frame(df, "exclude")) == 94
    # a window of nothing but server failures leaves `exclude` nothing to judge: it fails (no request met
    # any SLO), rather than stay inconclusive and let a sweep ramp on past a dead server
    dead = df[~df.ok]
    ev = evaluate_level(dead, [TIER], failure_policy="exclude")
    assert ev.tier_verdict.iloc[0] == "fail" and set(ev.reason) == {"all_failed"}
    with pytest.raises(ValueError, match="failure_policy"):
        policy_frame(df, "drop")


def test_unfinished_requests_count_under_both_policies():
    """Requests still running at the end (cancelled_at_end) or timed out by the client are not server
    failures: `exclude` keeps them, so a hung server never passes."""
    n_ok, n_hung = 49, 13
    df = _level(
        [50.0] * n_ok + [0.0] * n_hung,
        [1.0] * n_ok + [math.inf] * n_hung,
        ok=[True] * n_ok + [False] * n_hung,
        error=[""] * n_ok + ["cancelled_at_end"] * 10 + ["stall_timeout"] * 3,
    )
    for policy in ("miss", "exclude"):
        assert level_verdicts(df, [TIER], failure_policy=policy) == {"slo1": "fail"}


def test_a_large_unmeasured_share_is_never_a_pass():
    """10% of the requests came in one chunk (speed NaN): above the 5% limit the speed statistic is
    inconclusive even though the measured 90% pass; at 4% it passes."""
    n = 400
    for share, want in ((0.10, "inconclusive"), (0.04, "pass")):
        k = int(n * share)
        df = _level([50.0] * (n - k) + [NAN] * k, [1.0] * n, unmeasurable=[False] * (n - k) + [True] * k)
        ev = evaluate_level(df, [TIER]).set_index("statistic")
        assert ev.loc["output_speed_tps", "unmeasured_share"] == pytest.approx(k / n)
        assert ev.tier_verdict.iloc[0] == want
        if want == "inconclusive":
            assert ev.loc["output_speed_tps", "reason"] == "unmeasured"


def test_a_drifting_window_is_reported_not_judged():
    """TTFT 2 s in the first half of the window and 30 s in the second (ceiling 10 s): the halves'
    intervals do not overlap and their verdicts disagree: inconclusive (unsteady). A window that is
    slow throughout fails, and one steady but different in its halves on the same side is judged."""
    n = 400
    t = np.arange(n, dtype=float)
    rng = np.random.default_rng(0)
    drift = _level([50.0] * n, np.r_[rng.uniform(1, 2, n // 2), rng.uniform(20, 30, n // 2)], t=t)
    ev = evaluate_level(drift, [TIER], window=(0.0, float(n))).set_index("statistic")
    assert not ev.loc["ttft_s", "steady"] and ev.loc["ttft_s", "reason"] == "unsteady"
    assert ev.tier_verdict.iloc[0] == "inconclusive"
    assert evaluate_level(drift, [TIER], check_steady=False).tier_verdict.iloc[0] == "fail"
    same_side = _level([50.0] * n, np.r_[rng.uniform(1, 2, n // 2), rng.uniform(4, 5, n // 2)], t=t)
    ev = evaluate_level(same_side, [TIER], window=(0.0, float(n))).set_index("statistic")
    assert not ev.loc["ttft_s", "steady"] and ev.tier_verdict.iloc[0] == "pass"


# --- a hung server, end to end -------------------------------------------------------------------------


class _HangsSome(SSEServer):
    """Serves every streamed request but those numbered in ``hang`` (1-based), which never get an answer
    (not even headers)."""

    def __init__(self, hang: set[int], **kw):
        super().__init__(**kw)
        self.hang = hang

    async def _sse(self, request, body, *args):
        if len(self.bodies) in self.hang:
            await asyncio.sleep(3600)
        return await super()._sse(request, body, *args)


def test_a_level_where_many_requests_hang_fails_the_tier():
    """Issue 11: 4 agents; requests 6-8 never get an answer, so 3 agents hang for the whole window while
    the fourth keeps getting fast answers. The hung requests (sent before the window and still running at
    its end, then cancelled at the end of the run) stay in the window with TTFT +inf: the tier fails under
    both policies. Dropping them (as before) left only the fourth agent's fast requests and passed."""
    from agentperf_kit.trajectories.model import Trajectory, Turn

    trajs = [Trajectory(f"t{i}", [Turn(0, 0, 50, 20, tool_delay_s=0.05)] * 6) for i in range(4)]
    rules = RunRules(
        warmup_s=0.2,
        duration_s=1.0,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0.1,
        drain_timeout_s=0.3,
        random_start_turn=False,
    )

    async def go(tmp):
        server = await _HangsSome({6, 7, 8}, ttft_s=0.01, itl_s=0.001).start()
        try:
            ep = Endpoint(server.base_url, "test-model", stall_timeout_s=60, request_timeout_s=120)
            return await run_live(ep, trajs, 4, rules, out_dir=tmp, progress=False)
        finally:
            await server.stop()

    res = asyncio.run(go(tempfile.mkdtemp()))
    df = res.requests
    w = df[df.in_window]
    hung = w[w.error == "cancelled_at_end"]
    assert len(hung) == 3 and (hung.ttft_s == math.inf).all()
    assert w.agent.nunique() == 4  # no agent left the verdict
    assert (w.ok & (w.ttft_s < 1)).sum() >= 2  # the healthy agent kept going
    loose = Tier("loose", "1 tok/s & 60 s", 1, 60)
    for policy in ("miss", "exclude"):
        assert level_verdicts(df, [loose], failure_policy=policy, confidence=None) == {"loose": "fail"}
    # the old rule (unfinished requests dropped) would have passed it
    old = df[df.in_window & (df.error != "cancelled_at_end")]
    assert level_verdicts(old, [loose], confidence=None) == {"loose": "pass"}


# --- what decides, stored ------------------------------------------------------------------------------


def test_levels_csv_and_summary_store_each_tiers_own_statistics(tmp_path):
    """A tier with its own percentiles (P10 speed, P99 TTFT) has them in levels.csv with their
    intervals, and summary.json names its binding statistic with value, interval and margin; the
    failure policy and the other policy's verdicts are recorded."""
    from agentperf_kit.sweep import SweepConfig, load_sweep, run_sweep

    cfg = SweepConfig(
        out=str(tmp_path / "s"),
        level_duration_s=30,
        warmup_s=5,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        max_agents=4,
        max_extensions=0,
        tiers="fast=100/2/10/99,easy=1/60",
        failure_policy="exclude",
        band=False,  # tests/test_sweep_band.py
    )
    res = run_sweep(cfg, progress=False)
    lv = pd.read_csv(tmp_path / "s" / "levels.csv")
    for col in (
        "fast_speed_p10",
        "fast_speed_p10_ci_low",
        "fast_ttft_p99_ci_high",
        "easy_speed_p25",
        "easy_ttft_p95",
        "fast_margin_speed",
        "verdict_fast_if_miss",
        "speed_unmeasured_share",
        "p25_output_speed_tps_deff",
        "failure_policy",
        "ci_method",
        "steady",
    ):
        assert col in lv, col
    reqs = load_sweep(tmp_path / "s").requests
    for n, row in lv.set_index("concurrency").iterrows():
        w = reqs[(reqs.concurrency == n) & reqs.in_window & (reqs.ok | (reqs.error == "cancelled_at_end"))]
        assert row["fast_speed_p10"] == pytest.approx(percentile(w.output_speed_tps, 10))
        assert row["fast_ttft_p99"] == pytest.approx(percentile(w.ttft_s, 99))
        assert row["fast_speed_p10_ci_low"] <= row["fast_speed_p10"] <= row["fast_speed_p10_ci_high"]
    s = res.summary
    assert s["failure_policy"] == "exclude" and s["ci_method"] == "agent+time"
    easy = next(t for t in s["tiers"] if t["name"] == "easy")
    b = easy["binding_at_max_agents"]
    assert b["concurrency"] == easy["max_agents"] == 4
    assert b["statistic"] in ("output_speed_tps", "ttft_s") and b["ci_low"] <= b["value"] <= b["ci_high"]
    kind = "speed" if b["statistic"] == "output_speed_tps" else "ttft"
    row = lv.set_index("concurrency").loc[4]
    assert b["margin"] == pytest.approx(row[f"easy_margin_{kind}"]) and b["margin"] > 0


def test_both_policies_verdicts_are_printed_where_they_differ():
    from agentperf_kit.report import _policy_section
    from agentperf_kit.sweep import format_summary

    summary = {
        "target": "sim",
        "tier_preset": "x",
        "accelerators": 8,
        "tiers": [],
        "n_levels": 1,
        "levels": [{"concurrency": 8}],
        "meets_aa_rules": True,
        "failure_policy": "miss",
        "ci_method": "agent+time",
        "confidence": 0.95,
        "policy_differs_at": [{"concurrency": 8, "tier": "slo1", "miss": "fail", "exclude": "pass"}],
    }
    text = format_summary(summary)
    assert "failure policy: miss" in text and "N=8 slo1: fail (miss), pass (exclude)" in text
    html = "".join(_policy_section(summary))
    assert "<b>miss</b>" in html and "exclude" in html and "slo1" in html


class _EdgeServer(SSEServer):
    """Streams hand-written chunk sequences, one scenario per request in turn (times after the request):
    1. a tool call whose first delta has only id/type (0.1 s), its name at 0.4 s, arguments at 0.5 and 0.6 s
    2. all 30 tokens in one content chunk
    3. no visible text at all, but usage.completion_tokens = 5 in the finish chunk"""

    async def _sse(self, request, body, *args):
        from aiohttp import web

        k = len(self.bodies)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj):
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def delta(d=None, finish=None, usage=None):
            c = {"id": "x", "object": "chat.completion.chunk", "model": "test-model"}
            c["choices"] = [{"index": 0, "delta": d or {}, "finish_reason": finish}]
            if usage:
                c["usage"] = usage
            return c

        u = {"prompt_tokens": 10}
        await send(delta({"role": "assistant", "content": ""}))
        if k % 3 == 1:
            call = {"index": 0, "id": "call_1", "type": "function"}
            await asyncio.sleep(0.1)
            await send(delta({"tool_calls": [call]}))
            await asyncio.sleep(0.3)
            await send(delta({"tool_calls": [{"index": 0, "function": {"name": "ls", "arguments": ""}}]}))
            for piece in ('{"a"', ": 1}"):
                await asyncio.sleep(0.1)
                await send(delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            await send(delta(finish="tool_calls", usage={**u, "completion_tokens": 6}))
        elif k % 3 == 2:
            await asyncio.sleep(0.05)
            await send(delta({"content": " tok" * 30}))
            await send(delta(finish="length", usage={**u, "completion_tokens": 30}))
        else:
            await asyncio.sleep(0.05)
            await send(delta({"content": ""}, finish="length", usage={**u, "completion_tokens": 5}))
        await resp.write(b"data: [DONE]\n\n")
        return resp


def test_edge_cases_measured_like_the_reference_through_the_real_client():
    """The three client-side edge cases of issue 13, through the real HTTP path: an id-only tool-call
    delta is not the first token (TTFT >= 0.4 s, when the name came; it was 0.1 s); a one-chunk answer and
    a no-visible-text answer have no speed (NaN, flagged; it was +inf), and the latter no TTFT."""
    from agentperf_kit.trajectories.model import Trajectory, Turn

    trajs = [Trajectory("t0", [Turn(0, 0, 50, 30, tool_delay_s=0.01)] * 3)]
    rules = RunRules(
        warmup_s=0,
        duration_s=1.5,
        min_trajectories=0,
        min_trajectories_per_agent=0,
        ramp_s=0,
        drain_timeout_s=5,
        random_start_turn=False,
    )

    async def go(tmp):
        server = await _EdgeServer().start()
        try:
            ep = Endpoint(server.base_url, "test-model", stall_timeout_s=30, request_timeout_s=60)
            return await run_live(ep, trajs, 1, rules, out_dir=tmp, progress=False)
        finally:
            await server.stop()

    df = asyncio.run(go(tempfile.mkdtemp())).requests.sort_values("t_send_s")
    kind = (np.arange(len(df)) % 3).tolist()
    assert len(df) >= 3
    for (_, r), k in zip(df.iterrows(), kind):
        if k == 0:  # tool call
            assert r.ok and r.has_tool_calls and r.ttft_s >= 0.4
            # (6 - 1) tokens over the 0.2 s from the name to the last arguments
            assert r.output_speed_tps <= 5 / 0.2 + 1e-9 and not r.speed_unmeasurable
        elif k == 1:  # one chunk
            assert r.ok and math.isnan(r.output_speed_tps) and r.speed_unmeasurable
            assert r.ttft_s >= 0.05
        else:  # no visible text, usage > 0
            assert r.ok and r.n_chunks == 0 and r.speed_unmeasurable
            assert math.isnan(r.ttft_s) and math.isnan(r.output_speed_tps)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(0, 100), st.just(math.inf)), min_size=1, max_size=80),
    st.integers(1, 6),
    st.sampled_from([5.0, 25.0, 50.0, 95.0]),
)
def test_clustered_interval_holds_the_value_and_the_independent_interval(xs, g, q):
    """For any sample and clustering: the value is the linear percentile, the interval contains it and
    contains the independent interval (deff >= 1 never narrows it)."""
    x = np.array(xs)
    labels = np.arange(len(x)) % g
    ci = clustered_percentile_ci(x, q, clusters=[labels])
    lo, hi = percentile_ci(x, q)
    assert ci.value == percentile(x, q) and ci.deff >= 1.0
    assert ci.low <= ci.value <= ci.high
    assert ci.low <= lo and ci.high >= hi
