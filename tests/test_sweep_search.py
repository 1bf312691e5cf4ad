"""The search policy of the sweep, driven by plain deterministic verdict functions of N.

The unit under test is :func:`agentperf_kit.sweep.search_levels` (which N to measure); the verdict
function stands in for a measured level. Results per tier come from :func:`agentperf_kit.slo.max_agents`,
as in a real sweep.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from agentperf_kit.slo import Tier, max_agents
from agentperf_kit.sweep import search_levels

TIERS = ("easy", "hard")


def _thresholds(limits: dict[str, int]):
    """Verdict function: tier t passes while N <= limits[t]; records the order of calls."""
    calls: list[int] = []

    def measure(n: int) -> dict[str, str]:
        calls.append(n)
        return {t: "pass" if n <= lim else "fail" for t, lim in limits.items()}

    return measure, calls


def _result(verdicts: dict[int, dict[str, str]], tiers=TIERS) -> pd.DataFrame:
    levels = pd.DataFrame(
        [{"concurrency": n, **{f"verdict_{t}": v[t] for t in tiers}} for n, v in verdicts.items()]
    )
    return max_agents(levels, [Tier(t, t, 1.0, 1.0) for t in tiers]).set_index("name")


@pytest.mark.parametrize("easy,hard", [(239, 27), (1, 0), (100, 100), (2, 1), (0, 0), (63, 64 - 1)])
def test_finds_every_boundary_exactly_with_no_more_levels_than_ramp_plus_bisection(easy, hard):
    measure, calls = _thresholds({"easy": easy, "hard": hard})
    verdicts = search_levels(measure, TIERS, 4096)
    res = _result(verdicts)
    assert res.loc["easy", "max_agents"] == easy and res.loc["hard", "max_agents"] == hard
    assert len(calls) == len(set(calls))  # each N measured once
    # ramp: 1, 2, ... up to the first power of two above the easiest limit; bisection: the bracket
    # [2^k, 2^(k+1)] around a limit L needs k = floor(log2 L) more levels (fewer when tiers share them)
    top = max(easy, hard)
    ramp = math.floor(math.log2(top)) + 2 if top >= 1 else 1
    budget = ramp + sum(math.floor(math.log2(lim)) for lim in (easy, hard) if lim >= 1)
    assert len(calls) <= budget


def test_a_level_measured_for_one_tier_serves_the_other():
    measure, calls = _thresholds({"easy": 5, "hard": 5})
    search_levels(measure, TIERS, 64)
    assert calls == [1, 2, 4, 8, 6, 5]  # one bisection answers both tiers


def test_n1_failing_gives_zero_without_bisection():
    measure, calls = _thresholds({"easy": 0, "hard": 0})
    verdicts = search_levels(measure, TIERS, 64)
    assert calls == [1]
    assert (_result(verdicts)["max_agents"] == 0).all()


def test_still_passing_at_max_agents_is_a_lower_bound():
    measure, calls = _thresholds({"easy": 10_000, "hard": 3})
    verdicts = search_levels(measure, TIERS, 100)
    res = _result(verdicts)
    assert calls[:8] == [1, 2, 4, 8, 16, 32, 64, 100]
    assert res.loc["easy", "max_agents"] == 100 and res.loc["easy", "max_agents_is_lower_bound"]
    assert res.loc["hard", "max_agents"] == 3 and not res.loc["hard", "max_agents_is_lower_bound"]


def test_non_monotonic_verdicts_take_the_highest_pass_below_the_lowest_fail():
    # the easy tier passes up to 40 except a noisy dip at N = 12, which the hard tier's bisection measures
    def measure(n):
        return {"easy": "pass" if n <= 40 and n != 12 else "fail", "hard": "pass" if n <= 13 else "fail"}

    verdicts = search_levels(measure, TIERS, 4096)
    res = _result(verdicts)
    assert 12 in verdicts and res.loc["hard", "max_agents"] == 13
    assert res.loc["easy", "max_agents"] == 11  # highest pass below the lowest failure (12)
    assert res.loc["easy", "non_monotonic"] and {16, 32} <= set(res.loc["easy", "non_monotonic_levels"])


def test_resolution_stops_bisection_early():
    measure, calls = _thresholds({"easy": 239, "hard": 0})
    verdicts = search_levels(measure, TIERS, 4096, resolution=16)
    res = _result(verdicts)
    lowest_fail = res.loc["easy", "lowest_failing_agents"]
    assert 0 < lowest_fail - res.loc["easy", "max_agents"] <= 16
    assert res.loc["easy", "max_agents"] <= 239 < lowest_fail
    assert len(calls) < len(search_levels(_thresholds({"easy": 239, "hard": 0})[0], TIERS, 4096))


@pytest.mark.parametrize("easy,hard", [(4357, 1412), (43, 6), (100, 63), (9000, 17)])
def test_relative_resolution_binds_only_for_big_brackets(easy, hard):
    """Within max(1, floor(lo / 32)) agents of each boundary; exact below 64 agents (the default system's
    answers unchanged); at ~4,000 agents 5 bisection levels instead of 12."""
    measure, calls = _thresholds({"easy": easy, "hard": hard})
    verdicts = search_levels(measure, TIERS, 16384, relative_resolution=1 / 32)
    res = _result(verdicts)
    exact_calls = _thresholds({"easy": easy, "hard": hard})
    exact = _result(search_levels(exact_calls[0], TIERS, 16384))
    for t, lim in (("easy", easy), ("hard", hard)):
        got, fail = res.loc[t, "max_agents"], res.loc[t, "lowest_failing_agents"]
        assert got <= lim < fail
        assert fail - got <= max(1, math.floor(got / 32))
        if lim < 64:
            assert got == exact.loc[t, "max_agents"] == lim
    assert len(calls) <= len(exact_calls[1])
    if easy == 4357:
        ramp = 14  # 1 ... 8192
        assert len(exact_calls[1]) - ramp == 12 + 10  # 1-agent bisection: 4096-8192 and 1024-2048
        assert len(calls) - ramp == 5 + 5


def test_inconclusive_levels_are_neither_and_the_search_still_ends():
    # N = 6 and 7 stay inconclusive (too few requests, say); the boundary is 8
    def measure(n):
        v = "inconclusive" if n in (6, 7) else "pass" if n <= 8 else "fail"
        return {"easy": v, "hard": "fail"}

    verdicts = search_levels(measure, TIERS, 64)
    assert _result(verdicts).loc["easy", "max_agents"] == 8
    assert {6, 7} <= set(verdicts) or 8 in verdicts


def test_a_bracket_of_only_inconclusive_levels_terminates():
    def measure(n):
        v = "pass" if n <= 4 else "fail" if n >= 8 else "inconclusive"
        return {"easy": v, "hard": v}

    verdicts = search_levels(measure, TIERS, 64)
    assert {5, 6, 7} <= set(verdicts)  # every point inside was tried once
    assert _result(verdicts).loc["easy", "max_agents"] == 4


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_agents"):
        search_levels(lambda n: {}, TIERS, 0)
    with pytest.raises(ValueError, match="resolution"):
        search_levels(lambda n: {}, TIERS, 8, resolution=0)
    with pytest.raises(ValueError, match="relative_resolution"):
        search_levels(lambda n: {}, TIERS, 8, relative_resolution=1.0)


@pytest.mark.parametrize("easy,hard", [(239, 27), (1, 0), (100, 100), (63, 63), (700, 5)])
def test_a_guide_shortens_ramp_steps_and_finds_the_same_boundaries(easy, hard):
    """``guide(ramp)`` replaces a doubling by any N strictly between the ramp's last level n and 2 n; a
    guide aimed just past the easy tier's limit needs no more levels, and every answer stays the same; a
    guide outside (n, 2 n) is ignored."""
    plain, plain_calls = _thresholds({"easy": easy, "hard": hard})
    base = _result(search_levels(plain, TIERS, 4096))
    aim = math.ceil(max(easy, hard) * 1.1) + 1
    seen: list[list[int]] = []

    def guide(ramp):
        seen.append(list(ramp))
        return aim

    guided, calls = _thresholds({"easy": easy, "hard": hard})
    res = _result(search_levels(guided, TIERS, 4096, guide=guide))
    pd.testing.assert_frame_equal(res, base)
    assert len(calls) == len(set(calls)) and len(calls) <= len(plain_calls)
    # the ramp: the guide's N where it falls inside (n, 2n), else the doubling, until both tiers fail
    ramp, n = [], 1
    while True:
        ramp.append(n)
        if n > max(easy, hard):
            break
        nxt = min(2 * n, 4096)
        n = aim if n < aim < nxt else nxt
    assert calls[: len(ramp)] == ramp
    assert seen == [ramp[: k + 1] for k in range(len(ramp) - 1)]  # the ramp so far, in order
    ignored, ignored_calls = _thresholds({"easy": easy, "hard": hard})
    search_levels(ignored, TIERS, 4096, guide=lambda r: 2 * r[-1] + 5)
    assert ignored_calls == plain_calls


def test_predicted_crossing_is_the_secant_of_the_margins_in_log_n():
    from agentperf_kit.sweep_band import predicted_crossing

    def row(v, speed, ttft=5.0):
        return {"verdict_t": v, "t_margin_speed": speed, "t_margin_ttft": ttft}

    # binding margins 0.8 at N = 16 and 0.4 at N = 32: 0.4 per doubling, zero one doubling past 32
    rows = {8: row("pass", 2.0), 16: row("pass", 0.8), 32: row("pass", 0.4)}
    assert predicted_crossing(rows, "t") == pytest.approx(64.0)
    rows[32] = row("pass", 3.0, 0.4)  # the binding (smaller) margin counts, here the TTFT's
    assert predicted_crossing(rows, "t") == pytest.approx(64.0)
    assert predicted_crossing({**rows, 64: row("fail", -0.1)}, "t") is None  # failed already
    assert predicted_crossing({16: row("pass", 0.8)}, "t") is None  # one level
    assert predicted_crossing({16: row("pass", 0.4), 32: row("pass", 0.8)}, "t") is None  # rising
    assert predicted_crossing({16: row("pass", 0.8), 32: row("pass", math.nan)}, "t") is None
    # a margin that barely falls (a crossing far beyond anything a ramp can use): none, not an overflow
    assert predicted_crossing({16: row("pass", 1.0), 32: row("pass", 1.0 - 1e-6)}, "t") is None  # e^(7e5)
    assert predicted_crossing({16: row("pass", 1.0), 32: row("pass", 0.99)}, "t") is None  # e^69 x 32


def test_an_aim_names_bisection_points_and_finds_the_same_boundaries():
    """``aim(tier, lo, hi)`` names the next bisection point of a tier's bracket for its first
    ``AIMED_PROBES`` points: a point just around the boundary closes the bracket in two levels; points
    outside the bracket (or already measured) are ignored; a bad aim still ends at the exact boundary."""
    from agentperf_kit.sweep import AIMED_PROBES

    limits = {"easy": 700, "hard": 27}
    plain, plain_calls = _thresholds(limits)
    base = _result(search_levels(plain, TIERS, 4096))
    asked: list[tuple[str, int, int]] = []

    def exact(t, lo, hi):
        asked.append((t, lo, hi))
        return limits[t] if lo < limits[t] else limits[t] + 1  # the last pass, then the first failure

    aimed, calls = _thresholds(limits)
    pd.testing.assert_frame_equal(_result(search_levels(aimed, TIERS, 4096, aim=exact)), base)
    ramp = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert calls == [*ramp, 700, 701, 27, 28]  # two points per tier close each bracket
    assert asked[0] == ("easy", 512, 1024) and len(calls) < len(plain_calls)
    for bad in (lambda t, lo, hi: lo, lambda t, lo, hi: hi + 3, lambda t, lo, hi: lo + 1):
        worse, _ = _thresholds(limits)  # at the bracket's ends or beyond: ignored; lo + 1: slow, still exact
        pd.testing.assert_frame_equal(_result(search_levels(worse, TIERS, 4096, aim=bad)), base)
    counted: list[str] = []

    def creep(t, lo, hi):
        counted.append(t)
        return lo + 1  # moves the bracket by one agent: only AIMED_PROBES times per tier

    search_levels(_thresholds(limits)[0], TIERS, 4096, aim=creep)
    assert counted.count("easy") == AIMED_PROBES and counted.count("hard") == AIMED_PROBES


def test_the_sweeps_aimed_point_closes_a_bracket_from_the_margins(tmp_path):
    """``_Sweeper.aimed_point``: the secant of the binding margins in log N gives the crossing; the
    point is the level that would close the bracket if the prediction holds, else just below the
    crossing; margins that are not finite or do not fall give none."""
    from agentperf_kit.sweep import SweepConfig, _Sweeper

    sw = _Sweeper(SweepConfig(out=str(tmp_path)), tmp_path, False)  # resolution 1 agent, 1/32 relative

    def row(m):
        return {"verdict_slo1": "pass" if m > 0 else "fail", "slo1_margin_speed": m, "slo1_margin_ttft": 9.0}

    # margin 0.5 at 1,000, -0.5 at 4,000: crossing at 2,000 (log-linear); nothing closes: 0.4 x 62 below
    sw.rows = {1000: row(0.5), 4000: row(-0.5)}
    assert sw.aimed_point("slo1", 1000, 4000) == math.floor(2000 - 0.4 * 62)
    # a pass just below the crossing: lo + floor(lo / 32) is predicted to fail and would close it
    sw.rows = {1990: row(0.004), 4000: row(-0.5)}
    assert sw.aimed_point("slo1", 1990, 4000) == 1990 + 62
    # a failure just above: the lowest N that would close the bracket with it is predicted to pass
    sw.rows = {1000: row(0.5), 2010: row(-0.004)}
    down = sw.aimed_point("slo1", 1000, 2010)
    assert 2010 - down <= math.floor(down / 32) and 2010 - (down - 1) > math.floor((down - 1) / 32)
    for m_lo, m_hi in ((0.5, math.nan), (0.5, -math.inf), (-0.1, -0.5), (0.5, 0.2)):
        sw.rows = {1000: row(m_lo), 4000: row(m_hi)}
        assert sw.aimed_point("slo1", 1000, 4000) is None


def test_the_sweeps_guided_step_stops_aiming_at_a_tier_that_passed_its_aim(tmp_path):
    """``_Sweeper.guided_step``: 10 % past the predicted crossing when below the doubling; a tier that
    passed a guided step aimed at it is not aimed at again (the ramp doubles), so margins that keep
    predicting a crossing just ahead cannot walk the ramp in small steps."""
    from agentperf_kit.sweep import SweepConfig, _Sweeper

    sw = _Sweeper(SweepConfig(out=str(tmp_path)), tmp_path, False)
    sw.max_agents = 4096

    def row(m):
        r = {f"verdict_{t}": "fail" for t in ("slo2", "slo3")}  # only slo1 is still open
        return {**r, "verdict_slo1": "pass", "slo1_margin_speed": m, "slo1_margin_ttft": 9.0}

    # margins 0.8 at 8 and 0.4 at 16: 0.4 per doubling, the crossing predicted at 32: the step, 36, is
    # above the doubling, which search_levels then takes
    sw.rows = {8: row(0.8), 16: row(0.4)}
    assert sw.guided_step([8, 16]) == math.ceil(32 * 1.1)
    # 0.8 at 8, 0.2 at 16: 0.6 per doubling, the crossing at 16 x 2^(1/3) = 20.2: the step is 23
    sw.rows = {8: row(0.8), 16: row(0.2)}
    assert sw.guided_step([8, 16]) == math.ceil(16 * 2 ** (1 / 3) * 1.1)
    # the step passed slo1 with a margin that again predicts a crossing just ahead: no more aiming
    sw.rows[23] = row(0.1)
    assert sw.guided_step([8, 16, 23]) is None
