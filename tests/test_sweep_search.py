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
