"""How long a level's steady window will last: ``duration_s`` is a minimum, the trajectory rules can
stretch it.

The window closes when it has lasted ``duration_s`` *and* holds ``min_trajectories`` completed trajectories
*and* every agent completed ``min_trajectories_per_agent`` of them (or at ``max_duration_s``; see
:mod:`agentperf_kit.agents`). A trajectory's wall time is its tool waits plus, per turn, a TTFT and its
output tokens at the server's speed. With ``T`` the mean trajectory wall time and N agents, the counts are
met after about

* ``(min_trajectories_per_agent - 0.5) * T`` (the per-agent rule; an agent is on average half-way through a
  trajectory when the window opens), and
* ``min_trajectories * T / N`` (the total rule),

so the expected window is ``min(max_duration_s, max(duration_s, both))``. The server's speed is not known
before the run: :func:`expected_window` takes it as an assumption (the CLI uses the loosest tier of the
default preset, i.e. a level that just passes), and also gives the floor set by the tool waits alone.
Everything is in seconds; an estimate, printed as "about".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .agents import RunRules
from .trajectories import Trajectory

__all__ = ["WindowEstimate", "expected_window"]


@dataclass(frozen=True)
class WindowEstimate:
    """Expected steady window of one level (seconds).

    Attributes:
        window_s: expected window at the assumed speed and TTFT.
        floor_s: the window if the server answered instantly (tool waits alone).
        trajectory_s: mean wall time of one trajectory at the assumed speed.
        stretched_by: the rule that sets ``window_s`` (``duration_s``, ``min_trajectories_per_agent``,
            ``min_trajectories`` or ``max_duration_s``).
        speed_tps, ttft_s: the assumption.
    """

    window_s: float
    floor_s: float
    trajectory_s: float
    stretched_by: str
    speed_tps: float
    ttft_s: float
    duration_s: float

    @property
    def stretched(self) -> bool:
        """More than twice ``duration_s``: worth a warning."""
        return self.window_s > 2 * self.duration_s

    def describe(
        self, *, per_agent_flag: str = "min_trajectories_per_agent", total_flag: str = "min_trajectories"
    ) -> str:
        """One line for a user; ``*_flag`` names the options that relax the rule (CLI flags or fields)."""
        text = (
            f"expected steady window about {_t(self.window_s)} (at least {_t(self.floor_s)}; assuming "
            f"{self.speed_tps:g} tok/s and {self.ttft_s:g} s TTFT, one trajectory takes about "
            f"{_t(self.trajectory_s)})"
        )
        if self.stretched_by in ("min_trajectories_per_agent", "min_trajectories"):
            flag = per_agent_flag if self.stretched_by == "min_trajectories_per_agent" else total_flag
            text += (
                f"; set by the {self.stretched_by} rule, not the duration {_t(self.duration_s)}: lower "
                f"{flag} (the level then no longer meets AA's rules) or use shorter trajectories"
            )
        elif self.stretched_by == "max_duration_s":
            text += "; capped by max_duration_s"
        return text


def expected_window(
    trajectories: Sequence[Trajectory],
    n_agents: int,
    rules: RunRules,
    *,
    speed_tps: float,
    ttft_s: float,
) -> WindowEstimate:
    """The expected steady window of a level of ``n_agents`` (see the module docstring)."""
    if not trajectories or n_agents < 1:
        raise ValueError("expected_window needs trajectories and n_agents >= 1")
    tool = sum(sum(t.tool_delay_s for t in tr.turns) for tr in trajectories) / len(trajectories)
    gen = sum(sum(ttft_s + t.output_tokens / speed_tps for t in tr.turns) for tr in trajectories) / len(
        trajectories
    )

    def window(traj_s: float) -> tuple[float, str]:
        cands = {
            "duration_s": rules.duration_s,
            "min_trajectories_per_agent": max(rules.min_trajectories_per_agent - 0.5, 0.0) * traj_s,
            "min_trajectories": rules.min_trajectories * traj_s / n_agents,
        }
        rule = max(cands, key=lambda k: cands[k])
        w = cands[rule]
        if w > rules.max_duration_s:
            return rules.max_duration_s, "max_duration_s"
        return w, rule

    w, rule = window(tool + gen)
    floor, _ = window(tool)
    return WindowEstimate(w, floor, tool + gen, rule, speed_tps, ttft_s, rules.duration_s)


def _t(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
