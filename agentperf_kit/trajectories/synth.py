"""Seeded synthetic agent trajectories with real agent structure.

Not independent draws fitted to marginals: each phase starts from a system prompt + task, and every turn's
prompt is the previous prompt + the previous recorded output + a new tool result, so the context grows turn
by turn and a turn's reusable prefix is exactly the previous prompt (see ``model``). A phase ends (a new
context: compaction or a new sub-task) when the next prompt would pass ``compaction_at_tokens`` or, at
random, with probability ``new_subtask_prob`` per turn; no request (prompt + output) exceeds
``max_context_tokens``.

Distributions (all lognormal unless stated; parameters in :class:`SynthConfig`) are chosen so the default
set matches AA-AgentPerf's published shape: per-request input ~5K..131K tokens with a mean of ~27K,
output median ~150 and P95 ~2K tokens (reasoning included), tool delay 0.1-5 s with a median ~1 s,
sessions of tens up to 200 turns, >= 80 % of input tokens a prefix of the previous prompt.
``agentperf trajectories stats`` shows what a set really has.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .model import Trajectory, Turn

__all__ = ["DEFAULT_COUNT", "DEFAULT_SEED", "SynthConfig", "synthesize"]

DEFAULT_SEED = 20260601
DEFAULT_COUNT = 240


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """Parameters of the generator (token counts in tokens, times in seconds).

    Teaching knobs: ``tool_delay_median_s`` ("what if tool calls took 5 s?"), ``output_median_tokens``,
    ``turns_median``, ``compaction_at_tokens``.
    """

    system_prompt_median_tokens: float = 11000.0
    system_prompt_sigma: float = 0.35
    min_prompt_tokens: int = 5000
    tool_result_median_tokens: float = 400.0
    tool_result_sigma: float = 1.3
    output_median_tokens: float = 150.0
    output_p95_tokens: float = 2000.0
    max_output_tokens: int = 16384
    reasoning_share: tuple[float, float] = (0.3, 0.9)
    tool_delay_median_s: float = 1.0
    tool_delay_sigma: float = 0.75
    tool_delay_range_s: tuple[float, float] = (0.1, 5.0)
    turns_median: float = 45.0
    turns_sigma: float = 0.7
    turns_range: tuple[int, int] = (10, 200)
    new_subtask_prob: float = 0.065
    compaction_at_tokens: int = 110_000
    compacted_summary_tokens: float = 4000.0
    max_context_tokens: int = 131_072

    def __post_init__(self) -> None:
        if not 0 < self.output_median_tokens < self.output_p95_tokens:
            raise ValueError("need 0 < output_median_tokens < output_p95_tokens")
        lo, hi = self.tool_delay_range_s
        if not 0 <= lo <= self.tool_delay_median_s <= hi:
            raise ValueError(f"tool_delay_median_s must lie in tool_delay_range_s {self.tool_delay_range_s}")
        if self.compaction_at_tokens + self.max_output_tokens > self.max_context_tokens:
            raise ValueError("compaction_at_tokens + max_output_tokens must not exceed max_context_tokens")


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(sigma * rng.gauss(0.0, 1.0))


def synthesize(
    config: SynthConfig | None = None, *, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED
) -> list[Trajectory]:
    """Generate ``count`` trajectories, deterministically for a given ``seed`` and ``config``."""
    cfg = config or SynthConfig()
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = random.Random(seed)
    out_sigma = math.log(cfg.output_p95_tokens / cfg.output_median_tokens) / 1.6448536
    return [_one(rng, cfg, out_sigma, f"syn-{seed}-{i:05d}") for i in range(count)]


def _one(rng: random.Random, cfg: SynthConfig, out_sigma: float, tid: str) -> Trajectory:
    lo_t, hi_t = cfg.turns_range
    n_turns = min(hi_t, max(lo_t, round(_lognormal(rng, cfg.turns_median, cfg.turns_sigma))))
    d_lo, d_hi = cfg.tool_delay_range_s
    turns: list[Turn] = []
    phase = 0
    prev_prompt = 0  # previous prompt in this phase (0: phase start)
    prev_output = 0
    carry = 0  # context carried into a new phase (compaction summary)
    for k in range(n_turns):
        output = min(
            cfg.max_output_tokens, max(1, round(_lognormal(rng, cfg.output_median_tokens, out_sigma)))
        )
        if prev_prompt == 0:
            base = max(
                cfg.min_prompt_tokens,
                round(_lognormal(rng, cfg.system_prompt_median_tokens, cfg.system_prompt_sigma)),
            )
            prefix, new = 0, base + carry
        else:
            tool_result = max(1, round(_lognormal(rng, cfg.tool_result_median_tokens, cfg.tool_result_sigma)))
            prefix, new = prev_prompt, prev_output + tool_result
        prompt = prefix + new
        if prefix and (prompt > cfg.compaction_at_tokens or rng.random() < cfg.new_subtask_prob):
            # start a new context: compaction (carry a summary) or a new sub-task (fresh task text)
            phase += 1
            compacted = prompt > cfg.compaction_at_tokens
            carry = round(_lognormal(rng, cfg.compacted_summary_tokens, 0.3)) if compacted else 0
            base = max(
                cfg.min_prompt_tokens,
                round(_lognormal(rng, cfg.system_prompt_median_tokens, cfg.system_prompt_sigma)),
            )
            prefix, new = 0, base + carry
            prompt = new
        output = min(output, cfg.max_context_tokens - prompt)
        lo_r, hi_r = cfg.reasoning_share
        reasoning = min(output - 1, round(output * rng.uniform(lo_r, hi_r))) if output > 1 else 0
        delay = min(d_hi, max(d_lo, _lognormal(rng, cfg.tool_delay_median_s, cfg.tool_delay_sigma)))
        last = k == n_turns - 1
        turns.append(
            Turn(
                phase=phase,
                prefix_tokens=prefix,
                new_tokens=new,
                output_tokens=output,
                reasoning_tokens=reasoning,
                tool_calls=not last,
                tool_delay_s=round(delay, 3),
            )
        )
        prev_prompt, prev_output = prompt, output
    return Trajectory(tid, turns, source="synthetic", meta={"generator": "agentperf_kit.trajectories.synth"})
