"""Fit a trajectory set to a small server's context window.

Every request must fit: ``input_tokens + output_tokens <= max_context_tokens - reserve_tokens`` (the
reserve covers the phase marker and the chat template). Two documented ways:

- ``mode="scale"`` (default) multiplies every token count by **one factor** ``f <= 1`` chosen so that the
  largest request fits, keeping the structure exactly: within a phase each turn's prefix is still the
  previous (scaled) prompt, so the cached fraction and the shape of the distributions are kept; only the
  absolute sizes shrink. With ``max_output_tokens`` the scaled outputs are also capped (and ``f`` is
  chosen with the cap in mind, so a few very long outputs do not shrink everything). With
  ``min_output_tokens`` the scaled outputs are also floored (``f`` is chosen with the floor in mind).
- ``mode="cap"`` keeps token counts as they are where they fit and **truncates** where they do not:
  outputs are capped at ``max_output_tokens`` (default: a quarter of the budget), and when a phase's
  growing context would overflow, the turn starts a **new phase** (as a compacting agent would) whose
  prompt is ``keep_fraction`` of the budget (the kept summary) plus the turn's new tokens, capped so the
  request fits. The prompts stay realistic in size; the number of phases grows.

Why a floor: scaling a 131K-context set into 2,048 tokens multiplies every count by about 0.018, so a
median 151-token output becomes 3 tokens and 35 % of the outputs 1 token. A 1-token output has no output
speed by definition, and a few tokens from a fast small server (llama.cpp decodes the tiny model at
0.25-0.4 ms per token) stream out within one of the client's reads, so their speed is unmeasurable
(docs/metrics.md): a sweep level with more than 5 % such requests never passes. ``min_output_tokens``
(both modes) keeps every output at least that long; the prompts are scaled as before.

Tool delays, tool-call flags and turn counts are unchanged; reasoning tokens are scaled or capped with the
output. Trajectories with recorded ``messages`` are refused: their text cannot be resized.
``fit_context(default_trajectories(), 4096)`` makes the default set fit the 4,096-token slots of the small
real servers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from .model import Trajectory, Turn

__all__ = ["FIT_MODES", "fit_context"]

FIT_MODES = ("scale", "cap")


def _scale(traj: Trajectory, f: float, out_cap: float, out_floor: int = 1) -> Trajectory:
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
        out = max(out_floor, min(round(t.output_tokens * f), int(out_cap) if out_cap < math.inf else 1 << 62))
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


def _largest(trajectories: Sequence[Trajectory]) -> int:
    return max((t.input_tokens + t.output_tokens for tr in trajectories for t in tr.turns), default=0)


def _scale_factor(
    trajectories: Sequence[Trajectory], budget: int, out_cap: float, out_floor: int = 1
) -> float:
    """Largest f <= 1 with input*f + clip(output*f, out_floor, out_cap) <= budget for every turn."""
    f = 1.0
    for tr in trajectories:
        for t in tr.turns:
            total = t.input_tokens + t.output_tokens
            ft = budget / total
            if t.output_tokens * ft > out_cap:  # the cap binds: input*f + cap <= budget
                ft = (budget - out_cap) / t.input_tokens if t.input_tokens else math.inf
            elif t.output_tokens * ft < out_floor:  # the floor binds: input*f + floor <= budget
                ft = (budget - out_floor) / t.input_tokens if t.input_tokens else math.inf
            f = min(f, ft)
    return f


def _cap(traj: Trajectory, budget: int, out_cap: int, keep: int, out_floor: int = 1) -> Trajectory:
    turns: list[Turn] = []
    resets = 0
    phase = -1
    src_phase = -1
    prev_src_input = prev_input = 0
    for t in traj.turns:
        out = max(out_floor, min(t.output_tokens, out_cap))
        reasoning = None if t.reasoning_tokens is None else min(t.reasoning_tokens, out)
        room = budget - out
        if t.phase != src_phase or t.prefix_tokens == 0:
            phase += 1
            prefix, inp = 0, min(t.input_tokens, room)
        else:
            prefix = prev_input if t.prefix_tokens == prev_src_input else min(t.prefix_tokens, prev_input)
            inp = prefix + t.new_tokens
            if inp > room:  # the context would overflow: compact into a new phase
                phase += 1
                resets += 1
                prefix, inp = 0, min(room, keep + t.new_tokens)
        turns.append(
            replace(
                t,
                phase=phase,
                prefix_tokens=prefix,
                new_tokens=inp - prefix,
                output_tokens=out,
                reasoning_tokens=reasoning,
            )
        )
        src_phase, prev_src_input, prev_input = t.phase, t.input_tokens, inp
    meta = {**traj.meta, "context_fit": {"mode": "cap", "budget_tokens": budget, "resets": resets}}
    return Trajectory(traj.trajectory_id, turns, traj.source, meta)


def fit_context(
    trajectories: Sequence[Trajectory],
    max_context_tokens: int,
    *,
    mode: str = "scale",
    max_output_tokens: int | None = None,
    min_output_tokens: int | None = None,
    reserve_tokens: int = 64,
    keep_fraction: float = 0.25,
) -> list[Trajectory]:
    """A copy of the set whose every request (input + output + ``reserve_tokens``) fits the context.

    Args:
        trajectories: token-count-only trajectories (no recorded ``messages``).
        max_context_tokens: the server's context window per request, in tokens.
        mode: ``"scale"`` (one factor for every count) or ``"cap"`` (truncate and start new phases); see
            the module docstring.
        max_output_tokens: cap on each turn's output tokens (``cap`` default: a quarter of the budget;
            ``scale`` default: none).
        min_output_tokens: floor on each turn's output tokens (default 1): outputs long enough for the
            client to measure their speed on a fast small server (module docstring).
        reserve_tokens: tokens kept free per request for the phase marker and chat template.
        keep_fraction: ``cap`` mode: share of the budget a compacted context keeps (0..1).

    Raises:
        ValueError: an unknown mode, a context too small for the reserve, bad caps, or recorded messages.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}, got {mode!r}")
    if any(t.messages is not None for tr in trajectories for t in tr.turns):
        raise ValueError(
            "fit_context resizes token-count-only trajectories; these carry recorded messages, whose text "
            "cannot be resized: replay them on a server with a large enough context instead"
        )
    budget = max_context_tokens - reserve_tokens
    if budget < 2:
        raise ValueError(
            f"max_context_tokens {max_context_tokens} leaves no room after {reserve_tokens} reserved tokens"
        )
    if max_output_tokens is not None and not 1 <= max_output_tokens < budget:
        raise ValueError(f"max_output_tokens must be in 1..{budget - 1}, got {max_output_tokens}")
    if min_output_tokens is not None:
        top = max_output_tokens if max_output_tokens is not None else budget - 1
        if not 1 <= min_output_tokens <= top:
            raise ValueError(
                f"min_output_tokens must be in 1..{top} (max_output_tokens, else the budget less one), "
                f"got {min_output_tokens}"
            )
    floor = min_output_tokens or 1
    if not 0 <= keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
    if mode == "cap":
        out_cap = max(max_output_tokens or max(1, budget // 4), floor)
        keep = round(keep_fraction * budget)
        return [_cap(tr, budget, out_cap, keep, floor) for tr in trajectories]
    out_limit = math.inf if max_output_tokens is None else float(max_output_tokens)
    f = _scale_factor(trajectories, budget, out_limit, floor)
    for _ in range(20):  # rounding can push a request a few tokens over: shrink until all fit
        fitted = [_scale(tr, f, out_limit, floor) for tr in trajectories]
        top = _largest(fitted)
        if top <= budget:
            return fitted
        f *= (budget - (top - budget) - 1) / budget
    raise ValueError(f"cannot fit the set into {max_context_tokens} tokens (too small for its structure)")
