"""What-if knobs for simulated sweeps: change the workload or the system and sweep again.

A what-if is a comma-separated list of ``knob=value`` (``SweepConfig.what_if``, ``agentperf sweep
--what-if tool_delay=0.5``, repeatable). Knobs:

============== ========= ==============================================================================
knob           value     effect
============== ========= ==============================================================================
``tool_delay`` factor>0  every turn's tool delay x factor (faster tools: < 1)
``output``     factor>0  every turn's output tokens (and reasoning tokens) x factor, >= 1 token; prompts
                         unchanged
``context``    factor>0  every prompt x factor (prefix and new tokens; a turn's prefix stays <= the
                         previous scaled prompt, so the cache structure is kept); outputs unchanged
``prefix_cache`` off|on  ``off``: no turn reuses the previous prompt (prefix tokens become new tokens); the
                         engine still sees the 16-token phase marker repeat, which is negligible
``trajectories`` PATH    replay this trajectory file instead
``deployment`` NAME      sweep this simulated deployment instead (``agentperf presets``)
============== ========= ==============================================================================

The canonical form (knobs sorted, factors as ``%g``) is what the sweep records (``summary.json``
``what_if`` and ``config.what_if``) and prints. What-if studies are for the simulator: a live system's
tool delays are its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from .errors import ConfigError
from .trajectories.model import Trajectory, Turn

__all__ = ["WHAT_IF_KNOBS", "apply_what_if", "parse_what_if", "what_if_string"]

WHAT_IF_KNOBS = ("tool_delay", "output", "context", "prefix_cache", "trajectories", "deployment")
_FACTORS = ("tool_delay", "output", "context")


def parse_what_if(spec: str | Sequence[str] | None) -> dict[str, str | float]:
    """``"tool_delay=0.5,output=2"`` (or a list of such strings) -> ``{"output": 2.0, "tool_delay": 0.5}``.
    Raises :class:`~agentperf_kit.errors.ConfigError` naming the knob, the value and what would work."""
    parts: list[str] = []
    for s in [spec] if isinstance(spec, str) else list(spec or []):
        parts += [p.strip() for p in str(s).split(",") if p.strip()]
    out: dict[str, str | float] = {}
    for p in parts:
        key, sep, val = p.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or key not in WHAT_IF_KNOBS or not val:
            raise ConfigError(
                f"what_if: bad knob {p!r}; expected KNOB=VALUE with KNOB one of {', '.join(WHAT_IF_KNOBS)}, "
                "e.g. tool_delay=0.5"
            )
        if key in out:
            raise ConfigError(f"what_if: knob {key!r} given twice ({out[key]!r} and {val!r}); give it once")
        if key in _FACTORS:
            try:
                f = float(val)
            except ValueError:
                f = float("nan")
            if not f > 0 or f == float("inf"):
                raise ConfigError(f"what_if: {key} must be a positive factor like 0.5, got {val!r}")
            out[key] = f
        elif key == "prefix_cache":
            if val not in ("on", "off"):
                raise ConfigError(f"what_if: prefix_cache must be 'on' or 'off', got {val!r}")
            out[key] = val
        else:
            out[key] = val
    return dict(sorted(out.items()))


def what_if_string(knobs: dict[str, str | float]) -> str:
    """Canonical form: knobs sorted, factors as ``%g`` (``"output=2,tool_delay=0.5"``)."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(knobs.items()))


def apply_what_if(trajectories: Iterable[Trajectory], knobs: dict[str, str | float]) -> list[Trajectory]:
    """A copy of the set with the workload knobs applied (``tool_delay``, ``output``, ``context``,
    ``prefix_cache``); ``trajectories`` and ``deployment`` act on the sweep's configuration instead."""
    td = float(knobs.get("tool_delay", 1.0))
    of = float(knobs.get("output", 1.0))
    cf = float(knobs.get("context", 1.0))
    no_cache = knobs.get("prefix_cache") == "off"
    out = []
    for traj in trajectories:
        turns: list[Turn] = []
        prev_in = 0
        prev_phase = -1
        for t in traj.turns:
            if cf != 1.0:
                full = max(1, round(t.input_tokens * cf))
                prefix = 0 if t.phase != prev_phase else min(prev_in, int(t.prefix_tokens * cf))
                full = max(full, prefix + 1)
            else:
                full, prefix = t.input_tokens, t.prefix_tokens
            if no_cache:
                prefix = 0
            output = t.output_tokens if of == 1.0 else max(1, round(t.output_tokens * of))
            reasoning = t.reasoning_tokens
            if reasoning is not None and of != 1.0:
                reasoning = min(output, round(reasoning * of))
            turns.append(
                replace(
                    t,
                    prefix_tokens=prefix,
                    new_tokens=full - prefix,
                    output_tokens=output,
                    reasoning_tokens=reasoning,
                    tool_delay_s=t.tool_delay_s * td,
                )
            )
            prev_in, prev_phase = full, t.phase
        meta = {**traj.meta, "what_if": what_if_string(knobs)} if knobs else traj.meta
        out.append(Trajectory(traj.trajectory_id, turns, traj.source, meta))
    return out
