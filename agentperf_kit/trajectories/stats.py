"""Statistics of a trajectory set: what ``agentperf trajectories stats`` prints.

Per-request distributions (one value per turn = model call): ``input_tokens`` (prefix + new),
``output_tokens``, ``tool_delay_s``; per-trajectory: ``turns_per_trajectory``. Each distribution has
``mean, min, p5, p25, p50, p75, p95, max, total`` (linear-interpolation percentiles).
``cached_fraction`` is the token-weighted share of input tokens that repeat the previous turn's prompt in
the same phase: sum(prefix_tokens) / sum(input_tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..percentiles import percentile_sorted
from .model import Trajectory

__all__ = ["distribution", "format_stats", "trajectory_stats"]

_QS = (("p5", 5), ("p25", 25), ("p50", 50), ("p75", 75), ("p95", 95))


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``mean, min, p5, p25, p50, p75, p95, max, total`` of ``values`` (NaN-free)."""
    s = np.sort(np.asarray(values, dtype=float))
    if len(s) == 0:
        return {k: float("nan") for k in ("mean", "min", *(n for n, _ in _QS), "max", "total")}
    out = {"mean": float(s.mean()), "min": float(s[0])}
    out.update({name: percentile_sorted(s, q) for name, q in _QS})
    out.update({"max": float(s[-1]), "total": float(s.sum())})
    return out


def trajectory_stats(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Summary statistics of a set (see the module docstring); JSON-serializable."""
    turns = [t for traj in trajectories for t in traj.turns]
    inputs = np.array([t.input_tokens for t in turns], dtype=float)
    prefix = np.array([t.prefix_tokens for t in turns], dtype=float)
    outputs = np.array([t.output_tokens for t in turns], dtype=float)
    reasoning = [t.reasoning_tokens for t in turns if t.reasoning_tokens is not None]
    return {
        "trajectories": len(trajectories),
        "turns": len(turns),
        "phases": sum(traj.n_phases for traj in trajectories),
        "input_tokens": distribution(inputs),
        "output_tokens": distribution(outputs),
        "reasoning_tokens": distribution(reasoning) if reasoning else None,
        "tool_delay_s": distribution([t.tool_delay_s for t in turns]),
        "turns_per_trajectory": distribution([len(traj.turns) for traj in trajectories]),
        "cached_fraction": float(prefix.sum() / inputs.sum()) if inputs.sum() else float("nan"),
        "max_request_tokens": int((inputs + outputs).max()) if len(turns) else 0,
        "tool_call_share": float(np.mean([t.tool_calls for t in turns])) if turns else float("nan"),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A readable table of :func:`trajectory_stats` output."""
    lines = [
        f"trajectories {stats['trajectories']:,}   turns (model calls) {stats['turns']:,}   "
        f"phases {stats['phases']:,}",
        f"cached fraction (token-weighted prefix of the previous prompt): {stats['cached_fraction']:.1%}",
        f"largest request (input + output): {stats['max_request_tokens']:,} tokens",
        "",
        f"{'distribution':<22}{'mean':>10}{'min':>10}{'p5':>10}{'p25':>10}{'p50':>10}{'p75':>10}{'p95':>10}"
        f"{'max':>10}",
    ]
    for key in ("input_tokens", "output_tokens", "reasoning_tokens", "tool_delay_s", "turns_per_trajectory"):
        d = stats.get(key)
        if not d:
            continue
        fmt = "{:>10.2f}" if key == "tool_delay_s" else "{:>10,.0f}"
        vals = "".join(fmt.format(d[k]) for k in ("mean", "min", "p5", "p25", "p50", "p75", "p95", "max"))
        lines.append(f"{key:<22}{vals}")
    return "\n".join(lines)
