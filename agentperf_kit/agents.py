"""Closed-loop agent behaviour, shared by live and simulated runs.

This module owns *what the agents do* and *which requests count*; it owns no clock and no I/O. A driver
(the live replay in :mod:`agentperf_kit.replay`, the virtual-time driver in :mod:`agentperf_kit.sim`)
owns the clock and the target, and talks to an :class:`AgentFleet` in three calls:

1. ``fleet.start(t0)`` -> the first :class:`RequestPlan` of every agent, staggered over the ramp.
2. When a plan's ``t_scheduled_s`` comes: ``fleet.may_send(now)``; if True send it and call
   ``fleet.on_send(plan, t_send)``. If False the steady window is over: the agent stops.
3. When the response ends (success or failure): ``next_plan = fleet.complete(plan, outcome)``; the fleet
   writes the raw row to its sink and returns the agent's next plan (scheduled at the end of this
   response plus the turn's tool delay), or None when the agent stops.

After the window closes a driver lets in-flight requests drain for ``rules.drain_timeout_s`` and then
reports the rest with ``fleet.cancel(plan, now)`` (error ``cancelled_at_end``; counted in the window
when sent in it, judged on what it showed: docs/metrics.md).

Agent behaviour (docs/replay.md): N agents, each sequential. Agent ``a`` takes trajectories
``perm[(a + k*S) mod T]`` for k = 0, 1, ... (``perm`` a seeded permutation of the set; the stride S is the
smallest integer >= N that shares no factor with T), so the assignment does not depend on timings, each
round of N agents starts N neighbouring trajectories of the permutation, and every agent walks through all
T trajectories before it repeats one (with S = N, agents of a level with gcd(N, T) > 1 would see only
T / gcd(N, T) of them: one trajectory forever when N is a multiple of T). Every phase instance gets a
fresh 32-digit random marker (and a run-unique
``phase_id``) that the target puts at the very start of the prompt. Agents start staggered: agent a's
first request is scheduled at ``t0 + ramp_s * rank / N`` (a seeded rank), and with ``random_start_turn``
at a seeded random turn of its first trajectory (a fresh phase instance whose prefix the server has not
seen), so a level reaches steady state quickly.

Steady window: it opens ``warmup_s`` after the last agent has sent its first request (all N active) and
closes at the first moment at least ``duration_s`` has passed *and* the window holds at least
``min_trajectories`` completed trajectories and at least ``min_trajectories_per_agent`` per agent; it is
closed regardless after ``max_duration_s`` (then ``window_capped``). A request is *in the window* when it
was sent at or after the window start and before its end, and was not cancelled at the end.

Ending early (:attr:`AgentFleet.aborted_reason`): when every request that ended over at least
``rules.abort_after_s`` seconds failed (no success in between), the level ends at once as a fail: the
window closes, no agent sends again, and :meth:`AgentFleet.window_summary` gives the reason
(``aborted_reason``; ``meets_aa_rules`` false). A driver may also end the level itself with
:meth:`AgentFleet.abort` (the live replay does when its output cannot be written).

Usage checks: a row whose ``usage_mismatch`` is set (the server's counts disagree with what was asked or
streamed) is counted; a window where more than :data:`USAGE_MISMATCH_MAX_SHARE` of the requests are
such rows does not meet the rules (the reason names the count).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from mypy_extensions import mypyc_attr

from .schema import RAW_COLUMNS
from .trajectories.model import Trajectory, Turn

__all__ = [
    "AA_RULES",
    "USAGE_MISMATCH_MAX_SHARE",
    "AgentFleet",
    "RequestOutcome",
    "RequestPlan",
    "RunRules",
    "add_run_columns",
]

_NAN = math.nan

# a window with more than this share of usage_mismatch rows does not meet the rules: the server's token
# counts cannot be trusted there (the speed of each flagged row falls back to its streamed chunks)
USAGE_MISMATCH_MAX_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class RunRules:
    """Timing and validity rules of one measured level (all times in seconds).

    Defaults are AA-AgentPerf's published rules (>= 10 min steady, >= 30 trajectories, >= 3 per agent);
    shorter settings are allowed and reported as not meeting them.

    Attributes:
        warmup_s: wait after all agents are active before the steady window opens.
        duration_s: minimum length of the steady window.
        min_trajectories: trajectories that must complete inside the window.
        min_trajectories_per_agent: trajectories each agent must complete inside the window.
        max_duration_s: the window closes after this long even if the counts are not met.
        ramp_s: agents' first requests are spread over this long; None = ``min(0.25 * N, 30)``.
        random_start_turn: start each agent at a random turn of its first trajectory.
        drain_timeout_s: after the window closes, in-flight requests get this long to finish.
        on_error: ``"continue"`` (next turn) or ``"abandon"`` (next trajectory) after a failed request.
        abort_after_s: the level ends early as a fail when every request ending over this long failed
            (measured from the end of the first failure after the last success; 0 turns it off). Default
            30 s: past the 10 s of the loosest tier's TTFT ceiling, so an outage that long means no
            request could have met any tier, and a target that refuses everything (wrong model, 429
            storm, a server down) stops costing time.
    """

    warmup_s: float = 60.0
    duration_s: float = 600.0
    min_trajectories: int = 30
    min_trajectories_per_agent: int = 3
    max_duration_s: float = 4 * 3600.0
    ramp_s: float | None = None
    random_start_turn: bool = True
    drain_timeout_s: float = 120.0
    on_error: str = "continue"
    abort_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.on_error not in ("continue", "abandon"):
            raise ValueError(f"on_error must be 'continue' or 'abandon', got {self.on_error!r}")
        for name in ("warmup_s", "duration_s", "max_duration_s", "drain_timeout_s", "abort_after_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if self.max_duration_s < self.duration_s:
            raise ValueError(
                f"max_duration_s ({self.max_duration_s}) must be >= duration_s ({self.duration_s})"
            )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # pickled by its constructor (scale-out ships the rules to worker processes): a frozen dataclass
        # compiled by mypyc (setup.py) cannot be restored field by field
        return (RunRules, tuple(getattr(self, f.name) for f in fields(self)))

    def ramp_for(self, n_agents: int) -> float:
        """The ramp length in seconds for ``n_agents``."""
        return min(0.25 * n_agents, 30.0) if self.ramp_s is None else float(self.ramp_s)

    def short_of_aa(self) -> list[str]:
        """Reasons these *settings* cannot meet AA's rules (empty when they can)."""
        reasons = []
        if self.duration_s < AA_RULES.duration_s:
            reasons.append(f"steady window {self.duration_s:g} s < AA's {AA_RULES.duration_s:g} s")
        if self.min_trajectories < AA_RULES.min_trajectories:
            reasons.append(f"min_trajectories {self.min_trajectories} < AA's {AA_RULES.min_trajectories}")
        if self.min_trajectories_per_agent < AA_RULES.min_trajectories_per_agent:
            reasons.append(
                f"min_trajectories_per_agent {self.min_trajectories_per_agent} < AA's "
                f"{AA_RULES.min_trajectories_per_agent}"
            )
        return reasons


AA_RULES = RunRules()


@dataclass(slots=True)
class RequestPlan:
    """A request an agent wants to send. Targets read ``turn`` (token counts, messages) and ``marker``.

    ``fresh_phase`` is True on the first request of a phase instance (the target has not seen its
    ``phase_id`` before); ``turn.prefix_tokens`` may still be > 0 when the agent started mid-trajectory,
    in which case no prefix is cached anywhere.
    """

    agent: int
    traj_index: int
    trajectory_id: str
    turn_index: int
    turn: Turn
    phase_id: int
    marker: str
    fresh_phase: bool
    t_scheduled_s: float
    t_send_s: float = _NAN


@dataclass(slots=True)
class RequestOutcome:
    """What a target measured for one request (raw; metrics are derived later).

    Times are seconds on the run's clock (NaN when it did not happen). Counts are None when unknown.
    ``target_prompt_tokens`` is the prompt size the target actually asked for (marker included); None
    means ``turn.input_tokens``.
    """

    t_send_s: float
    t_end_s: float
    t_first_s: float = _NAN
    t_first_answer_s: float = _NAN
    t_last_s: float = _NAN
    ok: bool = True
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    output_tokens: int | None = None
    first_chunk_tokens: int | None = None
    reasoning_tokens: int | None = None
    n_chunks: int = 0
    finish_reason: str | None = None
    has_tool_calls: bool = False
    http_status: int | None = None
    error: str = ""
    error_detail: str = ""
    target_prompt_tokens: int | None = None
    retry_after_s: float = _NAN
    usage_mismatch: bool = False
    note: str = ""


RowSink = Callable[[tuple], None]


def trajectory_stride(n_agents: int, n_trajectories: int) -> int:
    """The step S between an agent's successive trajectories in the permutation: the smallest integer
    >= ``n_agents`` that is coprime with ``n_trajectories``, so that ``a + k*S (mod T)`` visits all T."""
    stride = n_agents
    while math.gcd(stride, n_trajectories) != 1:
        stride += 1
    return stride


@dataclass(slots=True)
class _Agent:
    index: int
    k: int = 0  # trajectories taken so far
    traj_index: int = -1
    turn_index: int = 0
    phase: int = -1
    phase_id: int = -1
    marker: str = ""
    active: bool = False
    completed_in_window: int = 0


@mypyc_attr(allow_interpreted_subclasses=True)  # scaleout/fleets.py's SubFleet and Ledger
@dataclass
class AgentFleet:
    """N closed-loop agents over a trajectory set (see the module docstring for the protocol).

    Args:
        trajectories: the set; agents cycle through a seeded permutation of it.
        n_agents: N, agents alive at once (>= 1).
        rules: timing and validity rules.
        seed: seeds the permutation, the start turns, the ramp order and the phase markers.
        marker_nonce: mixed into every phase marker (XOR before the 32-digit cut). A live run draws it at
            random, so that markers are unique across runs with the same seed: a repeated run against
            the same server must not find its prompts already cached. 0 (the simulator's, whose cache
            starts empty every run) keeps markers a function of the seed alone.
        sink: called with each raw row (a tuple in ``schema.RAW_COLUMNS`` order) as requests end.
        run_id: written into every row.
        level: index of the level within a sweep, written into every row.
    """

    trajectories: Sequence[Trajectory]
    n_agents: int
    rules: RunRules
    seed: int
    sink: RowSink
    run_id: str = "run"
    level: int = 0
    marker_nonce: int = 0
    window_start_s: float = _NAN
    window_end_s: float = _NAN
    window_capped: bool = False
    t_all_active_s: float = _NAN
    completed_in_window: int = 0
    requests_sent: int = 0
    requests_done: int = 0
    aborted_reason: str | None = None
    stopped_early_reason: str | None = None
    early_stop_looks: list[str] | None = None  # a sweep's interim looks (sweep_early), one line each
    requests_in_window: int = 0
    usage_mismatch_in_window: int = 0
    _agents: list[_Agent] = field(default_factory=list, repr=False)
    _n_active: int = 0
    _next_phase_id: int = 0
    _t_counts_met: float = _NAN
    _closed: bool = False
    _fail_since: float = _NAN  # end of the first failure after the last success
    _fails: int = 0  # failures since then
    # _reached[k]: agents with at least k trajectories completed in the window (k = 1, 2, ...)
    _reached: list[int] = field(default_factory=lambda: [0], repr=False)

    def __post_init__(self) -> None:
        if self.n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {self.n_agents}")
        usable = [t for t in self.trajectories if t.turns]
        if not usable:
            raise ValueError("the trajectory set has no trajectory with at least one turn")
        self.trajectories = usable
        self._rng = random.Random(self.seed)
        self._perm = list(range(len(usable)))
        self._rng.shuffle(self._perm)
        self._stride = trajectory_stride(self.n_agents, len(usable))
        self._agents = [_Agent(i) for i in range(self.n_agents)]

    # -- protocol ---------------------------------------------------------------------------------------

    def start(self, t0: float) -> list[RequestPlan]:
        """First plan of every agent, staggered over the ramp starting at ``t0`` (seconds)."""
        ramp = self.rules.ramp_for(self.n_agents)
        ranks = list(range(self.n_agents))
        self._rng.shuffle(ranks)
        plans = []
        for agent, rank in zip(self._agents, ranks):
            self._take_trajectory(agent)
            if self.rules.random_start_turn:
                agent.turn_index = self._rng.randrange(len(self.trajectories[agent.traj_index].turns))
            plans.append(self._plan(agent, t0 + ramp * rank / self.n_agents, force_fresh=True))
        return plans

    def may_send(self, now: float) -> bool:
        """Whether a request scheduled now may still be sent (False once the steady window is over)."""
        if self._closed:
            return False
        start = self.window_start_s
        if start != start:  # NaN: not all agents active yet
            return True
        elapsed = now - start
        if elapsed >= self.rules.max_duration_s:
            self._close(start + self.rules.max_duration_s, capped=not self._counts_met())
            return False
        if elapsed >= self.rules.duration_s and self._counts_met():
            self._close(max(start + self.rules.duration_s, self._t_counts_met))
            return False
        return True

    def active_agents(self) -> int:
        """Agents that have sent their first request (all of them once the ramp is over)."""
        return self._n_active

    def on_send(self, plan: RequestPlan, t_send: float) -> None:
        """Record that ``plan`` went out at ``t_send`` (seconds)."""
        plan.t_send_s = t_send
        self.requests_sent += 1
        agent = self._agents[plan.agent]
        if not agent.active:
            agent.active = True
            self._n_active += 1
            if self._n_active == self.n_agents:
                self.t_all_active_s = t_send
                self.window_start_s = t_send + self.rules.warmup_s

    def complete(self, plan: RequestPlan, outcome: RequestOutcome) -> RequestPlan | None:
        """Record the outcome of ``plan`` and return the agent's next plan (None: the agent stops)."""
        row = self._row(plan, outcome)
        return self._complete(plan, row, outcome.t_end_s, outcome.ok, bool(outcome.usage_mismatch), outcome)

    def complete_streamed(
        self,
        plan: RequestPlan,
        t_end: float,
        t_first: float,
        t_first_answer: float,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        output_tokens: int,
        reasoning_tokens: int | None,
    ) -> RequestPlan | None:
        """:meth:`complete` of a successful request that streamed its ``output_tokens`` one per chunk up to
        ``t_end`` (its last token; finish ``length``, HTTP 200, first chunk 1 token, usage as reported,
        prompt as asked, seconds and tokens): the same row and next plan as ``complete`` with that
        :class:`RequestOutcome`, without building one (the simulator's answer to every request)."""
        turn = plan.turn
        row = (
            self.run_id,
            self.level,
            self.n_agents,
            plan.agent,
            plan.trajectory_id,
            turn.phase,
            plan.phase_id,
            plan.turn_index,
            plan.t_scheduled_s,
            plan.t_send_s,
            t_first,
            t_first_answer,
            t_end,
            t_end,
            prompt_tokens,
            cached_prompt_tokens,
            output_tokens,
            1,
            reasoning_tokens,
            prompt_tokens,
            turn.output_tokens,
            output_tokens,
            "length",
            turn.tool_calls,
            turn.tool_delay_s,
            True,
            200,
            "",
            "",
            _NAN,
            False,
            "",
        )
        return self._complete(plan, row, t_end, True, False, None)

    def _complete(
        self,
        plan: RequestPlan,
        row: tuple,
        t_end: float,
        ok: bool,
        usage_mismatch: bool,
        outcome: RequestOutcome | None,
    ) -> RequestPlan | None:
        self.requests_done += 1
        self.sink(row)
        start, t_send = self.window_start_s, plan.t_send_s
        if t_send >= start and (not self._closed or t_send < self.window_end_s):  # in the window
            self.requests_in_window += 1
            self.usage_mismatch_in_window += usage_mismatch
        if ok:
            self._fail_since, self._fails = _NAN, 0
        else:
            assert outcome is not None
            self._watch_failures(outcome)
        agent = self._agents[plan.agent]
        traj = self.trajectories[agent.traj_index]
        agent.turn_index += 1
        ended = agent.turn_index >= len(traj.turns)
        if ended and not self._closed and t_end >= self.window_start_s:  # False while start is NaN
            agent.completed_in_window += 1
            self.completed_in_window += 1
            k, reached = agent.completed_in_window, self._reached
            if k == len(reached):
                reached.append(0)
            reached[k] += 1
            if self._t_counts_met != self._t_counts_met and self._counts_met_now():
                self._t_counts_met = t_end
        if self._closed:
            return None
        t_next = t_end + plan.turn.tool_delay_s
        if ended or (not ok and self.rules.on_error == "abandon"):
            self._take_trajectory(agent)
            return self._plan(agent, t_next, force_fresh=True)
        return self._plan(agent, t_next)

    def abort(self, now: float, reason: str) -> None:
        """End the level now as a fail (no agent sends again); ``reason`` goes to the window summary."""
        if self.aborted_reason is None:
            self.aborted_reason = reason
        if not self._closed:
            self._close(now)

    def stop_early(self, t_end: float, reason: str) -> None:
        """Close the steady window at ``t_end`` (seconds, not after now) because the level's verdict is
        already decided (:mod:`agentperf_kit.sweep_early`); ``reason`` goes to the window summary, and the
        level no longer meets AA's rules (its window is shorter than they ask)."""
        if not self._closed:
            self.stopped_early_reason = reason
            self._close(t_end)

    def min_completed_per_agent(self) -> int:
        """The fewest trajectories any agent has completed in the window so far (0 before it opens)."""
        reached, n = self._reached, self.n_agents
        k = 0
        while k + 1 < len(reached) and reached[k + 1] >= n:
            k += 1
        return k

    def window_share(self, now: float) -> float:
        """How far the window is, at ``now`` (seconds), toward the rule that will close it last: the least
        of elapsed / ``duration_s``, trajectories / ``min_trajectories`` and the fewest per agent /
        ``min_trajectories_per_agent`` (rules at 0 are left out); 0 before the window opens, capped at 1."""
        start, r = self.window_start_s, self.rules
        if start != start or now <= start:
            return 0.0
        shares = [(now - start) / r.duration_s if r.duration_s > 0 else 1.0]
        if r.min_trajectories > 0:
            shares.append(self.completed_in_window / r.min_trajectories)
        if r.min_trajectories_per_agent > 0:
            shares.append(self.min_completed_per_agent() / r.min_trajectories_per_agent)
        return min(1.0, *shares)

    def _watch_failures(self, outcome: RequestOutcome) -> None:
        if outcome.ok:
            self._fail_since, self._fails = _NAN, 0
            return
        t_end = outcome.t_end_s
        if t_end != t_end or self.aborted_reason is not None:
            return
        if self._fail_since != self._fail_since:
            self._fail_since = t_end
        self._fails += 1
        limit = self.rules.abort_after_s
        if limit > 0 and t_end - self._fail_since >= limit:
            self.abort(
                t_end,
                f"every request failed for {t_end - self._fail_since:.1f} s ({self._fails} in a row, "
                f"last: {outcome.error}) >= abort_after_s={limit:g} s",
            )

    def cancel(
        self,
        plan: RequestPlan,
        now: float,
        *,
        detail: str = "",
        n_chunks: int = 0,
        t_first_s: float = _NAN,
        t_last_s: float = _NAN,
    ) -> None:
        """Record a request still in flight at the end of the drain as ``cancelled_at_end``, with what it
        had received where the caller knows it (visible chunks, first and last chunk times)."""
        self.requests_done += 1
        self.sink(
            self._row(
                plan,
                RequestOutcome(
                    t_send_s=plan.t_send_s,
                    t_end_s=now,
                    t_first_s=t_first_s,
                    t_last_s=t_last_s,
                    n_chunks=n_chunks,
                    ok=False,
                    error="cancelled_at_end",
                    error_detail=detail or "still running when the drain timeout expired",
                ),
            )
        )

    # -- state ------------------------------------------------------------------------------------------

    @property
    def window_closed(self) -> bool:
        """True once the steady window has closed (no agent sends again)."""
        return self._closed

    def window_progress(self, now: float) -> str:
        """What the level is waiting for at ``now`` (seconds), one line for progress displays, e.g.
        ``window: 8.2/20 s, trajectories 12/30, min per agent 1/3`` (the window closes when all three are
        met, or at ``max_duration_s``)."""
        r = self.rules
        if self._closed:
            return "window closed: draining" if self.aborted_reason is None else "ended early: draining"
        start = self.window_start_s
        if start != start:
            return f"ramp: {self._n_active}/{self.n_agents} agents active"
        if now < start:
            return f"warm-up: {now - (start - r.warmup_s):.1f}/{r.warmup_s:g} s"
        per_agent = min(a.completed_in_window for a in self._agents)
        return (
            f"window: {now - start:.1f}/{r.duration_s:g} s, trajectories {self.completed_in_window}/"
            f"{r.min_trajectories}, min per agent {per_agent}/{r.min_trajectories_per_agent}"
        )

    def window_summary(self) -> dict[str, Any]:
        """Window bounds, trajectory counts and the AA-validity verdict with its reasons."""
        reasons = self.rules.short_of_aa()
        if self.window_start_s != self.window_start_s:
            reasons.append("the steady window never opened (not all agents became active)")
        per_agent = [a.completed_in_window for a in self._agents]
        if self.window_capped:
            reasons.append(
                f"window capped at max_duration_s={self.rules.max_duration_s:g} s before the trajectory "
                f"counts were met ({self.completed_in_window} trajectories, min per agent "
                f"{min(per_agent)})"
            )
        elif (
            self.rules.min_trajectories >= AA_RULES.min_trajectories
            and self.completed_in_window < AA_RULES.min_trajectories
        ):
            reasons.append(
                f"{self.completed_in_window} trajectories completed in the window < "
                f"{AA_RULES.min_trajectories}"
            )
        if (
            not self.window_capped
            and self.rules.min_trajectories_per_agent >= AA_RULES.min_trajectories_per_agent
            and min(per_agent) < AA_RULES.min_trajectories_per_agent
        ):
            reasons.append(
                f"an agent completed only {min(per_agent)} trajectories in the window < "
                f"{AA_RULES.min_trajectories_per_agent}"
            )
        length = self.window_end_s - self.window_start_s
        if length == length and length < AA_RULES.duration_s <= self.rules.duration_s:
            reasons.append(f"steady window lasted {length:.1f} s < {AA_RULES.duration_s:g} s")
        if self.aborted_reason is not None:
            reasons.append(f"the level ended early: {self.aborted_reason}")
        if self.stopped_early_reason is not None:
            reasons.append(f"the level was stopped early, its verdict decided: {self.stopped_early_reason}")
        n_win, n_bad = self.requests_in_window, self.usage_mismatch_in_window
        if n_bad and n_bad > USAGE_MISMATCH_MAX_SHARE * n_win:
            reasons.append(
                f"{n_bad} of {n_win} requests in the window have usage that disagrees with what was asked "
                f"or streamed (usage_mismatch) > {USAGE_MISMATCH_MAX_SHARE:.0%}"
            )
        return {
            "window_start_s": self.window_start_s,
            "window_end_s": self.window_end_s,
            "window_s": length,
            "window_capped": self.window_capped,
            "t_all_active_s": self.t_all_active_s,
            "trajectories_completed_in_window": self.completed_in_window,
            "min_trajectories_per_agent_in_window": min(per_agent),
            "requests_sent": self.requests_sent,
            "aborted_reason": self.aborted_reason,
            "stopped_early_reason": self.stopped_early_reason,
            **(
                {"early_stop_looks": list(self.early_stop_looks)} if self.early_stop_looks is not None else {}
            ),
            "usage_mismatch_in_window": n_bad,
            "meets_aa_rules": not reasons,
            "aa_rules_reasons": reasons,
        }

    # -- internals --------------------------------------------------------------------------------------

    def _counts_met_now(self) -> bool:
        if self.completed_in_window < self.rules.min_trajectories:
            return False
        need = self.rules.min_trajectories_per_agent
        return all(a.completed_in_window >= need for a in self._agents)

    def _counts_met(self) -> bool:
        return self._t_counts_met == self._t_counts_met or (
            self.rules.min_trajectories <= 0 and self.rules.min_trajectories_per_agent <= 0
        )

    def _close(self, t_end: float, *, capped: bool = False) -> None:
        self._closed = True
        self.window_end_s = t_end
        self.window_capped = capped

    def _take_trajectory(self, agent: _Agent) -> None:
        n = len(self.trajectories)
        agent.traj_index = self._perm[(agent.index + agent.k * self._stride) % n]
        agent.k += 1
        agent.turn_index = 0
        agent.phase = -1

    def _plan(self, agent: _Agent, t_scheduled: float, *, force_fresh: bool = False) -> RequestPlan:
        traj = self.trajectories[agent.traj_index]
        turn = traj.turns[agent.turn_index]
        fresh = force_fresh or turn.phase != agent.phase
        if fresh:
            agent.phase = turn.phase
            agent.phase_id = self._next_phase_id
            self._next_phase_id += 1
            agent.marker = f"{(self._rng.getrandbits(107) ^ self.marker_nonce) % 10**32:032d}"
        return RequestPlan(
            agent=agent.index,
            traj_index=agent.traj_index,
            trajectory_id=traj.trajectory_id,
            turn_index=agent.turn_index,
            turn=turn,
            phase_id=agent.phase_id,
            marker=agent.marker,
            fresh_phase=fresh,
            t_scheduled_s=t_scheduled,
        )

    def _row(self, plan: RequestPlan, o: RequestOutcome) -> tuple:
        turn = plan.turn
        return (
            self.run_id,
            self.level,
            self.n_agents,
            plan.agent,
            plan.trajectory_id,
            turn.phase,
            plan.phase_id,
            plan.turn_index,
            plan.t_scheduled_s,
            o.t_send_s,
            o.t_first_s,
            o.t_first_answer_s,
            o.t_last_s,
            o.t_end_s,
            o.prompt_tokens,
            o.cached_prompt_tokens,
            o.output_tokens,
            o.first_chunk_tokens,
            o.reasoning_tokens,
            turn.input_tokens if o.target_prompt_tokens is None else o.target_prompt_tokens,
            turn.output_tokens,
            o.n_chunks,
            o.finish_reason,
            o.has_tool_calls,
            turn.tool_delay_s,
            o.ok,
            o.http_status,
            o.error,
            o.error_detail,
            o.retry_after_s,
            o.usage_mismatch,
            o.note,
        )


assert len(RAW_COLUMNS) == 32, "AgentFleet._row and complete_streamed must follow schema.RAW_COLUMNS"


def add_run_columns(df: pd.DataFrame, window_start_s: float, window_end_s: float) -> pd.DataFrame:
    """Add the run-level derived columns ``in_window`` and ``tool_wait_s`` to a raw request frame.

    ``in_window``: sent in [window_start_s, window_end_s), or sent before it and still running at its end
    (no end, or ``t_end_s >= window_end_s``: the agent spent the whole window in that one request, so the
    window counts it rather than lose the agent). A request still unfinished when the run ended
    (``cancelled_at_end``) stays in: it is judged on what it showed (docs/metrics.md), never dropped.
    ``tool_wait_s``: the same agent's next ``t_send_s`` minus this row's ``t_end_s`` (NaN for an agent's
    last request). Rows of several levels are handled per (run_id, level, agent).
    """
    return add_run_columns_inplace(df.copy(), window_start_s, window_end_s)


def add_run_columns_inplace(out: pd.DataFrame, window_start_s: float, window_end_s: float) -> pd.DataFrame:
    """:func:`add_run_columns` adding the columns to ``out`` itself (no copy of the frame); returns ``out``.
    One run's rows (one ``run_id`` and ``level``: every level a driver finalizes) take a numpy path in
    O(rows) memory; several take pandas' group-by."""
    t_send = out["t_send_s"].to_numpy(dtype=float)
    t_end = out["t_end_s"].to_numpy(dtype=float)
    out["in_window"] = in_window_mask(t_send, t_end, window_start_s, window_end_s)
    one_run = out["run_id"].nunique(dropna=False) == 1 and out["level"].nunique(dropna=False) == 1
    if len(out) and one_run and pd.api.types.is_integer_dtype(out["agent"]) and not out["agent"].hasnans:
        out["tool_wait_s"] = one_run_tool_wait(out["agent"].to_numpy(), t_send, t_end)
    else:
        order = out.sort_values(["run_id", "level", "agent", "t_send_s"], kind="stable").index
        nxt = out.loc[order].groupby(["run_id", "level", "agent"], sort=False)["t_send_s"].shift(-1)
        out["tool_wait_s"] = (nxt - out.loc[order, "t_end_s"]).reindex(out.index).astype(float)
    return out


def in_window_mask(
    t_send: np.ndarray, t_end: np.ndarray, window_start_s: float, window_end_s: float
) -> np.ndarray:
    """``in_window`` of :func:`add_run_columns` for rows with these send and end times (seconds), row by
    row (what a driver finalizing a level a chunk at a time uses)."""
    spans = (t_send < window_start_s) & ~(t_end < window_end_s)  # NaN end: still running
    return (((t_send >= window_start_s) & (t_send < window_end_s)) | spans) & ~np.isnan(t_send)


def one_run_tool_wait(agent: np.ndarray, t_send: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """``tool_wait_s`` of :func:`add_run_columns` for one run's rows (one ``run_id`` and ``level``;
    ``agent`` integers without NA; times in seconds, NaN sends last within an agent): a numpy sort in
    O(rows) memory, the same order as the group-by of several runs (stable)."""
    order = np.lexsort((t_send, agent))
    a_o, s_o = agent[order], t_send[order]
    nxt = np.full(len(order), np.nan)
    same = a_o[1:] == a_o[:-1]
    nxt[:-1] = np.where(same, s_o[1:], np.nan)
    wait = np.empty(len(order))
    wait[order] = nxt - t_end[order]
    return wait
