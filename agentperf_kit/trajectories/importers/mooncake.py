"""Import a Mooncake trace (kvcache-ai/Mooncake, FAST'25 release) and rebuild its sessions.

Each line is one request: ``timestamp`` (ms since the trace start), ``input_length`` and
``output_length`` (tokens) and ``hash_ids``: one id per 512-token block of the prompt, remapped so that
equal ids mean equal block contents *and* equal everything before them. Sessions are not recorded; they
are rebuilt:

1. **Common leading blocks.** A prefix of blocks is *common* (a shared system prompt, not a session)
   when the trace continues it with at least ``common_fanout`` different next blocks. For each request,
   ``c`` = the length of its longest common prefix (0 when none).
2. **Parent link.** A request R links to the *latest earlier* request P whose blocks, all but its last
   (the last block of a prompt is usually partial, so its id differs), are a prefix of R's blocks and
   longer than R's common prefix ``c`` (so a shared system prompt alone never links two requests).
   Requests are taken in timestamp order, ties in file order.
3. **Chains.** When several requests link to the same parent, the latest one continues the session and the
   others start new sessions. Every request is then in exactly one chain; a chain is a trajectory, one
   phase, whose turns are its requests in order.

Turn mapping: input = ``input_length``; ``prefix_tokens`` = the parent's ``input_length`` (capped at the
request's own): a chat resends its whole history, which the block ids prove for all but the last,
partial block; ``output_tokens`` = ``output_length`` (0 is raised to 1, counted in the meta warnings).
The gap between a request and the next one of its session (``next.timestamp - this.timestamp``) is human
think time *plus* the original server's response time, so ``think_time`` chooses the tool delay:
``"cap"`` (default) min(gap, ``max_think_s`` = 5 s), ``"keep"`` the gap as recorded, ``"resample"`` a
seeded draw from the AA-shaped tool-delay distribution (lognormal, median 1 s, 0.1-5 s).

Lost: arrival times across sessions (a closed-loop benchmark sets its own), the exact shared length of
the last block, tool calls (unknown: ``tool_calls`` is false) and reasoning tokens (null). Each
trajectory's meta lists the source ``lines`` it holds, so every input request can be traced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..model import Trajectory, TrajectoryFormatError, Turn
from ._common import bad, is_count, is_seconds, iter_jsonl, sample_tool_delay

__all__ = ["THINK_TIME_MODES", "import_mooncake"]

THINK_TIME_MODES = ("cap", "keep", "resample")


class _Req:
    __slots__ = ("blocks", "inp", "line", "out", "ts")

    def __init__(self, line: int, ts: float, inp: int, out: int, blocks: list[int]) -> None:
        self.line, self.ts, self.inp, self.out, self.blocks = line, ts, inp, out, blocks


def _read(path: Path) -> list[_Req]:
    reqs: list[_Req] = []
    for line, row in iter_jsonl(path):
        ts, inp, out, blocks = (
            row.get(k) for k in ("timestamp", "input_length", "output_length", "hash_ids")
        )
        if not is_seconds(ts):
            raise bad(path, line, "timestamp", ts, "must be a number of milliseconds >= 0")
        if not is_count(inp, 1):
            raise bad(path, line, "input_length", inp, "must be a positive integer (prompt tokens)")
        if not is_count(out):
            raise bad(path, line, "output_length", out, "must be a non-negative integer (output tokens)")
        if not isinstance(blocks, list) or not all(is_count(b) for b in blocks):
            raise bad(path, line, "hash_ids", blocks, "must be a list of non-negative integer block ids")
        reqs.append(_Req(line, float(ts), inp, out, blocks))
    if not reqs:
        raise TrajectoryFormatError("the trace has no requests", path=str(path))
    reqs.sort(key=lambda r: (r.ts, r.line))
    return reqs


def _prefix_keys(blocks: Sequence[int]) -> list[int]:
    """keys[j] identifies blocks[:j] (j = 0..len); equal keys at equal depth mean equal prefixes."""
    keys = [0]
    h = 0
    for b in blocks:
        h = hash((h, b))
        keys.append(h)
    return keys


def _link(reqs: list[_Req], common_fanout: int) -> list[int]:
    """Parent index (into ``reqs``) of each request, or -1."""
    all_keys = [_prefix_keys(r.blocks) for r in reqs]
    fanout: dict[tuple[int, int], set[int]] = {}
    for r, keys in zip(reqs, all_keys):
        for j in range(1, len(r.blocks)):
            seen = fanout.setdefault((j, keys[j]), set())
            if len(seen) < common_fanout:
                seen.add(r.blocks[j])
    latest: dict[tuple[int, int], int] = {}  # (len(P)-1, key of P[:-1]) -> latest request index
    parents: list[int] = []
    for i, (r, keys) in enumerate(zip(reqs, all_keys)):
        common = 0
        for j in range(1, len(r.blocks)):
            if len(fanout.get((j, keys[j]), ())) >= common_fanout:
                common = j
        parent = -1
        for j in range(max(1, common + 1), len(r.blocks) + 1):
            p = latest.get((j, keys[j]), -1)
            if p > parent:
                parent = p
        parents.append(parent)
        if len(r.blocks) >= 2:
            latest[(len(r.blocks) - 1, keys[len(r.blocks) - 1])] = i
    return parents


def import_mooncake(
    src: str | Path,
    *,
    common_fanout: int = 4,
    think_time: str = "cap",
    max_think_s: float = 5.0,
    seed: int = 0,
) -> list[Trajectory]:
    """Rebuild sessions from a Mooncake trace JSONL (see the module docstring for every rule).

    Args:
        src: the trace file (``.jsonl`` or ``.jsonl.gz``).
        common_fanout: a block prefix continued by at least this many different next blocks is a shared
            (common) prefix that does not link requests; >= 2.
        think_time: ``"cap"``, ``"keep"`` or ``"resample"`` (how the gap between linked requests becomes
            the tool delay).
        max_think_s: the cap in seconds for ``think_time="cap"``.
        seed: seed of the resampled delays.
    """
    if think_time not in THINK_TIME_MODES:
        raise ValueError(f"think_time must be one of {THINK_TIME_MODES}, got {think_time!r}")
    if common_fanout < 2:
        raise ValueError(f"common_fanout must be >= 2, got {common_fanout}")
    if not max_think_s >= 0:
        raise ValueError(f"max_think_s must be >= 0 seconds, got {max_think_s}")
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"Mooncake trace not found: {path}")
    reqs = _read(path)
    parents = _link(reqs, common_fanout)
    children: dict[int, int] = {}  # parent -> the latest child, which continues the session
    for i, p in enumerate(parents):
        if p >= 0:
            children[p] = i  # i increases, so the last assignment is the latest child
    continued = set(children.values())
    rng = random.Random(seed)
    out: list[Trajectory] = []
    for root in range(len(reqs)):
        if root in continued:
            continue
        chain = [root]
        while chain[-1] in children:
            chain.append(children[chain[-1]])
        out.append(_trajectory(path, reqs, chain, think_time, max_think_s, rng))
    return out


def _trajectory(
    path: Path, reqs: list[_Req], chain: list[int], think_time: str, max_think_s: float, rng: random.Random
) -> Trajectory:
    turns: list[Turn] = []
    warnings: list[str] = []
    for k, i in enumerate(chain):
        r = reqs[i]
        prefix = min(reqs[chain[k - 1]].inp, r.inp) if k else 0
        if k + 1 < len(chain):
            gap = max(0.0, (reqs[chain[k + 1]].ts - r.ts) / 1000.0)
            if think_time == "keep":
                delay = gap
            elif think_time == "cap":
                delay = min(gap, max_think_s)
            else:
                delay = sample_tool_delay(rng)
        else:
            delay = 0.0
        output = r.out
        if output < 1:
            warnings.append(f"line {r.line}: output_length 0 raised to 1 (a forced length must be >= 1)")
            output = 1
        turns.append(
            Turn(
                phase=0,
                prefix_tokens=prefix,
                new_tokens=r.inp - prefix,
                output_tokens=output,
                reasoning_tokens=None,
                tool_calls=False,
                tool_delay_s=round(delay, 6),
            )
        )
    first = reqs[chain[0]]
    meta: dict[str, Any] = {
        "format": "mooncake",
        "file": str(path),
        "lines": [reqs[i].line for i in chain],
        "start_ms": first.ts,
        "think_time": think_time if think_time != "cap" else f"cap at {max_think_s:g} s",
    }
    if warnings:
        meta["warnings"] = warnings
    return Trajectory(f"mooncake-L{first.line}", turns, source="mooncake", meta=meta)
