"""The two halves of an :class:`~agentperf_kit.agents.AgentFleet` split across worker processes.

One level of N agents run by K workers: worker ``w`` runs the agents ``a`` with ``a % K == w``; the driver
owns the schedule and the AA rules over all of them.

- :class:`SubFleet` (in each worker) is the whole fleet's agent behaviour restricted to the worker's
  agents: the same seeded trajectory order, start turns and ramp as one process would give them (every
  worker draws the whole fleet's start, then keeps its own agents), phase ids unique across workers
  (worker ``w`` numbers its later phases ``N + w, N + w + K, ...``) and markers unique across workers (a
  marker nonce per worker). It never decides the window's end itself: the driver gives it a time
  (:meth:`SubFleet.close_at`) and no agent sends at or after it. It reports every agent's first send
  (:attr:`SubFleet.first_sends`).
- :class:`Ledger` (in the driver) applies the window and validity rules of ``AgentFleet`` to the rows and
  first sends the workers stream back: the window opens ``warmup_s`` after the latest first send of all N
  agents, trajectory completions and the per-agent minimum are counted over all workers, and the "every
  request failed for ``abort_after_s``" rule is applied to all workers' rows together. Its
  :meth:`~agentperf_kit.agents.AgentFleet.window_summary` is the level's.

The driver sees rows up to one poll interval late. The window's bounds are exact either way (times on the
run's clock, computed from the rows); what the lateness could change is when the workers stop sending.
So the driver gives the workers the window's end as soon as it is known (:meth:`Ledger.planned_end_s`:
``duration_s`` after the window's start once the trajectory counts are met, and ``max_duration_s`` after
it at the latest), ahead of time in the usual case, and every worker stops at that time on its own clock,
as one process does. Only when the counts are met after ``duration_s`` does the end lie in the past when
the driver learns it; requests sent in between are after the window's end, so not in it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from ..agents import AgentFleet, RequestOutcome, RequestPlan
from ..schema import RAW_COLUMNS

__all__ = ["Ledger", "SubFleet", "worker_nonce"]

_AGENT = RAW_COLUMNS.index("agent")
_TRAJ = RAW_COLUMNS.index("trajectory_id")
_TURN = RAW_COLUMNS.index("turn")
_T_SEND = RAW_COLUMNS.index("t_send_s")
_T_END = RAW_COLUMNS.index("t_end_s")
_OK = RAW_COLUMNS.index("ok")
_ERROR = RAW_COLUMNS.index("error")
_MISMATCH = RAW_COLUMNS.index("usage_mismatch")

_NONCE_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd, 128 bits: distinct nonces for distinct workers


def worker_nonce(marker_nonce: int, worker: int) -> int:
    """Worker ``worker``'s marker nonce (107 bits); worker 0 keeps the run's own."""
    return (marker_nonce ^ (worker * _NONCE_MIX)) % 2**107


class SubFleet(AgentFleet):
    """The agents ``a % workers == worker`` of a fleet of ``n_agents`` (module docstring). Build it like an
    :class:`~agentperf_kit.agents.AgentFleet`, then call :meth:`split` before :meth:`start`."""

    worker: int = 0
    workers: int = 1
    t0_s: float = 0.0
    _close_at_s: float = math.inf  # the window's end the driver gave (run seconds)

    def split(self, worker: int, workers: int, t0_s: float) -> SubFleet:
        """Make this the worker ``worker`` of ``workers``; its agents start at ``t0_s`` (run seconds)."""
        self.worker, self.workers, self.t0_s = worker, workers, t0_s
        self.first_sends: deque[tuple[int, float]] = deque()
        self.traj_turns = {t.trajectory_id: len(t.turns) for t in self.trajectories}
        self._phase_stride = 1
        self._close_at_s = math.inf
        return self

    def start(self, t0: float) -> list[RequestPlan]:
        """This worker's agents' first plans, from the driver's start time (``t0`` is ignored)."""
        plans = super().start(self.t0_s)  # the whole fleet's draws: the same as one process makes
        self._next_phase_id, self._phase_stride = self.n_agents + self.worker, self.workers
        return [p for p in plans if p.agent % self.workers == self.worker]

    def _plan(self, agent, t_scheduled: float, *, force_fresh: bool = False) -> RequestPlan:
        before = self._next_phase_id
        plan = super()._plan(agent, t_scheduled, force_fresh=force_fresh)
        if self._next_phase_id != before:
            self._next_phase_id = before + self._phase_stride
        return plan

    def may_send(self, now: float) -> bool:
        """Until the time the driver gave (:meth:`close_at`)."""
        if not self._closed and now >= self._close_at_s:
            self._close(self._close_at_s)
        return not self._closed

    def on_send(self, plan: RequestPlan, t_send: float) -> None:
        if not self._agents[plan.agent].active:
            self.first_sends.append((plan.agent, t_send))
        super().on_send(plan, t_send)

    def close_at(self, t_end: float) -> None:
        """The driver says the window ends at ``t_end`` (run seconds; in the past or ahead): no agent sends
        at or after it. An earlier time than one given before wins; a later one changes nothing."""
        self._close_at_s = min(self._close_at_s, t_end)


class Ledger(AgentFleet):
    """The level's window and validity over all workers (module docstring). Build it like the fleet
    (same trajectories, N, rules, seed); feed it :meth:`note_first_send` and :meth:`record`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._turns = {t.trajectory_id: len(t.turns) for t in self.trajectories}
        self._first_sends: dict[int, float] = {}

    def note_first_send(self, agent: int, t_send: float) -> None:
        """Agent ``agent`` sent its first request at ``t_send``; once all N have, the window opens
        ``warmup_s`` after the latest first send."""
        if agent in self._first_sends:
            return
        self._first_sends[agent] = t_send
        self._agents[agent].active = True
        self._n_active = len(self._first_sends)
        self.requests_sent = max(self.requests_sent, self._n_active)
        if self._n_active == self.n_agents:
            self.t_all_active_s = max(self._first_sends.values())
            self.window_start_s = self.t_all_active_s + self.rules.warmup_s

    @property
    def window_known(self) -> bool:
        """True once the window's start is known (all N agents have sent)."""
        return self.window_start_s == self.window_start_s

    def record(self, rows: Sequence[tuple]) -> None:
        """Count finished requests (raw rows, in ``t_end_s`` order within the batch): requests and
        ``usage_mismatch`` rows in the window, completed trajectories, the failure rule."""
        for row in sorted(rows, key=lambda r: _num(r[_T_END])):
            self.requests_done += 1
            if row[_ERROR] == "cancelled_at_end":
                continue
            t_send, t_end = _num(row[_T_SEND]), _num(row[_T_END])
            start = self.window_start_s
            if t_send >= start and (not self._closed or t_send < self.window_end_s):
                self.requests_in_window += 1
                self.usage_mismatch_in_window += bool(row[_MISMATCH])
            ok = bool(row[_OK])
            self._watch_failures(RequestOutcome(t_send_s=t_send, t_end_s=t_end, ok=ok, error=row[_ERROR]))
            if row[_TURN] + 1 < self._turns.get(row[_TRAJ], 0):
                continue
            if not self._closed and t_end >= self.window_start_s:  # a trajectory ended in the window
                agent = self._agents[row[_AGENT]]
                agent.completed_in_window += 1
                self.completed_in_window += 1
                if self._t_counts_met != self._t_counts_met and self._counts_met_now():
                    self._t_counts_met = t_end

    def planned_end_s(self) -> float:
        """The window's end as far as it is known now (run seconds): ``inf`` before the window's start is
        known; then ``max_duration_s`` after the start (the cap) until the trajectory counts are met, then
        ``duration_s`` after the start or the time they were met, whichever is later; once closed (or
        aborted), the end itself. The same rule as :meth:`~agentperf_kit.agents.AgentFleet.may_send`."""
        if self._closed:
            return self.window_end_s
        start = self.window_start_s
        if start != start:
            return math.inf
        cap = start + self.rules.max_duration_s
        if not self._counts_met():
            return cap
        met = self._t_counts_met if self._t_counts_met == self._t_counts_met else -math.inf
        return min(cap, max(start + self.rules.duration_s, met))

    def sent(self, n: int) -> None:
        """The workers have sent ``n`` requests in all (for the window summary)."""
        self.requests_sent = n


def _num(x: object) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan
