"""Fit a trajectory set to a small server's context window.

``fit_context(trajs, max_context_tokens, mode="scale")`` multiplies every token count by one factor so that
the largest request (input + output + ``reserve_tokens`` for the phase marker and chat template) fits,
keeping the structure: within a phase each turn's prefix is still exactly the previous (scaled) prompt.
``mode="cap"`` leaves requests that fit untouched and scales only the trajectories that do not fit.
Tool delays are unchanged. The real servers in ``../shared/real-servers`` have 4,096-token contexts per
slot: ``fit_context(trajs, 4096)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .model import Trajectory, Turn

__all__ = ["fit_context"]


def _scale(traj: Trajectory, f: float) -> Trajectory:
    turns: list[Turn] = []
    prev_in_orig = prev_in_new = 0
    prev_phase = -1
    for t in traj.turns:
        new_input = max(1, round(t.input_tokens * f))
        if t.phase != prev_phase or t.prefix_tokens == 0:
            prefix = 0
        elif t.prefix_tokens == prev_in_orig:
            prefix = prev_in_new
        else:
            prefix = min(prev_in_new, round(t.prefix_tokens * f))
        new_input = max(new_input, prefix + 1)
        out = max(1, round(t.output_tokens * f))
        reasoning = None if t.reasoning_tokens is None else min(out, round(t.reasoning_tokens * f))
        turns.append(
            replace(
                t,
                prefix_tokens=prefix,
                new_tokens=new_input - prefix,
                output_tokens=out,
                reasoning_tokens=reasoning,
            )
        )
        prev_in_orig, prev_in_new, prev_phase = t.input_tokens, new_input, t.phase
    return Trajectory(traj.trajectory_id, turns, traj.source, {**traj.meta, "context_scale": f})


def fit_context(
    trajectories: Sequence[Trajectory],
    max_context_tokens: int,
    *,
    mode: str = "scale",
    reserve_tokens: int = 64,
) -> list[Trajectory]:
    """A copy of the set whose every request (input + output + reserve) fits ``max_context_tokens``."""
    if mode not in ("scale", "cap"):
        raise ValueError(f"mode must be 'scale' or 'cap', got {mode!r}")
    if any(t.messages is not None for tr in trajectories for t in tr.turns):
        raise ValueError(
            "fit_context scales token-count-only trajectories; recorded messages cannot be scaled"
        )
    budget = max_context_tokens - reserve_tokens
    if budget < 2:
        raise ValueError(
            f"max_context_tokens {max_context_tokens} leaves no room after {reserve_tokens} reserved"
        )

    def largest(tr: Trajectory) -> int:
        return max(t.input_tokens + t.output_tokens for t in tr.turns) if tr.turns else 0

    if mode == "scale":
        top = max(largest(tr) for tr in trajectories)
        f = min(1.0, budget / top * 0.98)
        return [_scale(tr, f) for tr in trajectories]
    return [tr if largest(tr) <= budget else _scale(tr, budget / largest(tr) * 0.98) for tr in trajectories]
