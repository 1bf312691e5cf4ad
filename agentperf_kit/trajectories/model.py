"""The trajectory model: what one recorded agent session asks of the server.

A **trajectory** is an ordered list of **turns** (model calls). Turns are grouped into **phases**: a phase
is a stretch of the session over which the context only grows (each turn's prompt extends the previous
one). A new phase starts where the agent starts over (the first turn, a compaction, a new sub-task); the
replay gives every phase instance its own random marker at the very start of the prompt, so nothing is
shared across phases, agents or runs.

**Reusable prefix (project-wide definition).** What a turn can reuse from the server's prefix cache is at
most the previous turn's *prompt* in the same phase. The server also cached the text it generated, but that
differs from the recorded output the next turn carries, so the recorded output is *new* input to the next
turn. Hence, for turn k of a phase::

    prefix_tokens[k] <= input_tokens[k-1]      (0 on the first turn of a phase)
    input_tokens[k]  = prefix_tokens[k] + new_tokens[k]

All token counts are integers (tokens of the model's tokenizer, or of the source's recorded usage).
Times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputFormatError

__all__ = ["Trajectory", "TrajectoryFormatError", "Turn"]


class TrajectoryFormatError(InputFormatError):
    """A trajectory file or record is malformed.

    The message names the file, the line (1-based, where the format has lines), the field, the value seen
    and what would fix it, e.g.::

        traces.jsonl line 12: 'output_tokens' must be a non-negative integer, got -3
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        value: Any = None,
    ) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f" line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.field = field
        self.value = value


@dataclass(frozen=True, slots=True)
class Turn:
    """One model call of a trajectory.

    Attributes:
        phase: index of the phase within its trajectory (0, 1, ...); non-decreasing along the trajectory.
        prefix_tokens: input tokens that repeat the previous turn's prompt in the same phase (the part a
            prefix cache can serve); 0 on the first turn of a phase.
        new_tokens: input tokens not in that prefix (the previous recorded output, tool results, the
            task...).
        output_tokens: target output tokens, reasoning included (the replay forces this length).
        reasoning_tokens: recorded reasoning tokens within ``output_tokens``, or None when unknown.
        tool_calls: whether the recorded response ended in tool calls.
        tool_delay_s: seconds the agent waits after this turn's response before sending the next turn
            (the simulated tool run); >= 0.
        messages: the recorded OpenAI chat ``messages`` of the request, when the source has them (sent as
            recorded, with the phase marker put in front). None for token-count-only turns.
        tools: the recorded OpenAI ``tools`` list, when the source has it.
    """

    phase: int
    prefix_tokens: int
    new_tokens: int
    output_tokens: int
    reasoning_tokens: int | None = None
    tool_calls: bool = False
    tool_delay_s: float = 0.0
    messages: list[dict[str, Any]] | None = field(default=None, compare=False, repr=False)
    tools: list[dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    @property
    def input_tokens(self) -> int:
        """Whole prompt size in tokens: ``prefix_tokens + new_tokens``."""
        return self.prefix_tokens + self.new_tokens


@dataclass(slots=True)
class Trajectory:
    """One recorded (or synthesized) agent session: an ordered list of turns.

    Attributes:
        trajectory_id: identifier, unique within a set.
        turns: the model calls, in order.
        source: where it came from (``synthetic``, ``aa-local``, ``mooncake``, ``mini-swe-agent``, ...).
        meta: free-form provenance (task id, repository, file it came from...); JSON-serializable.
    """

    trajectory_id: str
    turns: list[Turn]
    source: str = "synthetic"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_phases(self) -> int:
        """Number of phases (1 + the last turn's phase index; 0 for an empty trajectory)."""
        return self.turns[-1].phase + 1 if self.turns else 0

    @property
    def input_tokens(self) -> int:
        """Total input tokens over all turns."""
        return sum(t.input_tokens for t in self.turns)

    @property
    def output_tokens(self) -> int:
        """Total target output tokens over all turns."""
        return sum(t.output_tokens for t in self.turns)
