"""Import mini-swe-agent trajectories (``*.traj.json``, SWE-agent/mini-swe-agent).

A ``.traj.json`` holds ``info`` (``model_stats.api_calls``, ``config``, ``mini_version``, ``exit_status``),
``messages`` (OpenAI chat messages with an extra ``extra`` object) and ``trajectory_format``. Every
assistant message is one model call; its ``extra.response`` is the provider response with ``usage``
(``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details.cached_tokens``,
``completion_tokens_details.reasoning_tokens``) and ``created`` (unix seconds).

Mapping (one trajectory per file, one turn per assistant message, token counts as recorded):

- input = ``usage.prompt_tokens``; output = ``usage.completion_tokens`` (reasoning included; 0 is raised
  to 1 and counted in the meta warnings); ``reasoning_tokens`` from ``completion_tokens_details``.
- phases: the history only grows, so each turn's prefix is the previous prompt; a prompt smaller than the
  previous one (the history was cut) starts a new phase.
- ``tool_calls``: the message has ``tool_calls`` or parsed ``extra.actions``.
- tool delay: ``created`` has 1 s resolution, so it cannot give tool times. With ``tool_delay="auto"``
  (default) the delay after a call is the latest ``extra.timestamp`` of the observation messages before
  the next call minus the call's own ``extra.timestamp`` (both written with ``time.time()`` by
  mini-swe-agent 2.x); where those are missing the delay is *sampled* (lognormal, median 1 s, 0.1-5 s,
  seeded per file). ``tool_delay="sample"`` always samples. The meta says which
  (``tool_delay_source``: ``timestamps``, ``sampled`` or ``mixed``).
- recorded ``cached_tokens`` are summed into the meta (``recorded_cached_tokens``) for comparison.
- ``messages`` are not kept unless ``with_messages=True`` (the full history per turn grows
  quadratically); the recorded ``tools`` list is not in the file.

Lost: the message texts (by default), costs, the model's own timings. A model call that mini-swe-agent
did not keep as an assistant message (e.g. a format error) cannot be imported; ``info.model_stats.api_calls``
is copied into the meta as ``api_calls_reported`` so a difference shows.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

from ..model import Trajectory, TrajectoryFormatError, Turn
from ._common import bad, is_count, read_json, sample_tool_delay

__all__ = ["TOOL_DELAY_MODES", "import_mini_swe_agent"]

TOOL_DELAY_MODES = ("auto", "sample")
_CHAT_ROLES = ("system", "user", "assistant", "tool", "developer", "function")


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"mini-swe-agent source not found: {src}")
    files = sorted(p for p in src.rglob("*.traj.json") if p.is_file())
    if not files:
        raise TrajectoryFormatError("no *.traj.json files under this directory", path=str(src))
    return files


def import_mini_swe_agent(
    src: str | Path, *, tool_delay: str = "auto", seed: int = 0, with_messages: bool = False
) -> list[Trajectory]:
    """Read one ``.traj.json`` or every ``*.traj.json`` under a directory (sorted by path).

    Raises:
        TrajectoryFormatError: naming the file, the message index and field, the value and the fix.
    """
    if tool_delay not in TOOL_DELAY_MODES:
        raise ValueError(f"tool_delay must be one of {TOOL_DELAY_MODES}, got {tool_delay!r}")
    root = Path(src)
    files = _files(root)
    out: list[Trajectory] = []
    seen: set[str] = set()
    for path in files:
        tid = path.name.removesuffix(".traj.json")
        if tid in seen:
            tid = path.relative_to(root).as_posix().removesuffix(".traj.json")
        seen.add(tid)
        out.append(_import_file(path, tid, tool_delay, seed, with_messages))
    return out


def _usage_field(path: Path, i: int, usage: dict[str, Any], key: str, minimum: int) -> int:
    v = usage.get(key)
    if not is_count(v, minimum):
        raise bad(
            path,
            None,
            f"messages[{i}].extra.response.usage.{key}",
            v,
            f"must be an integer >= {minimum}; import needs the recorded usage of every model call "
            "(run mini-swe-agent with a model that reports usage)",
        )
    return v


def _import_file(path: Path, tid: str, tool_delay: str, seed: int, with_messages: bool) -> Trajectory:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
        raise bad(
            path,
            None,
            "messages",
            None if not isinstance(doc, dict) else doc.get("messages"),
            "must be the list of chat messages of a mini-swe-agent .traj.json",
        )
    messages = doc["messages"]
    rng = random.Random(seed * 1_000_003 + zlib.crc32(tid.encode()))
    calls: list[int] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(path, None, f"messages[{i}]", m, "must be a JSON object")
        if m.get("role") == "assistant":
            calls.append(i)
    if not calls:
        raise TrajectoryFormatError("no assistant messages (model calls) in this trajectory", path=str(path))
    turns: list[Turn] = []
    warnings: list[str] = []
    sources: set[str] = set()
    cached_total = 0
    phase, prev_prompt = 0, 0
    for k, i in enumerate(calls):
        m = messages[i]
        extra = m.get("extra")
        response = extra.get("response") if isinstance(extra, dict) else None
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            raise bad(
                path,
                None,
                f"messages[{i}].extra.response.usage",
                usage,
                "must be the provider's usage object; import needs the recorded usage of every model call",
            )
        prompt = _usage_field(path, i, usage, "prompt_tokens", 1)
        output = _usage_field(path, i, usage, "completion_tokens", 0)
        if output < 1:
            warnings.append(f"messages[{i}]: completion_tokens 0 raised to 1 (a forced length must be >= 1)")
            output = 1
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        reasoning = min(reasoning, output) if is_count(reasoning) else None
        pdetails = usage.get("prompt_tokens_details")
        cached = pdetails.get("cached_tokens") if isinstance(pdetails, dict) else None
        cached_total += cached if is_count(cached) else 0
        if k and prompt >= prev_prompt:
            prefix = prev_prompt
        else:
            phase, prefix = (phase + 1 if k else 0), 0
        last = k + 1 == len(calls)
        delay = 0.0
        if not last:
            measured = _measured_delay(messages, i, calls[k + 1]) if tool_delay == "auto" else None
            if measured is None:
                delay = sample_tool_delay(rng)
                sources.add("sampled")
            else:
                delay = measured
                sources.add("timestamps")
        turn_messages = None
        if with_messages:
            turn_messages = [
                {key: v for key, v in msg.items() if key != "extra"}
                for msg in messages[:i]
                if isinstance(msg, dict) and msg.get("role") in _CHAT_ROLES
            ]
        turns.append(
            Turn(
                phase=phase,
                prefix_tokens=prefix,
                new_tokens=prompt - prefix,
                output_tokens=output,
                reasoning_tokens=reasoning,
                tool_calls=bool(m.get("tool_calls")) or bool(extra.get("actions")),
                tool_delay_s=round(delay, 6),
                messages=turn_messages,
            )
        )
        prev_prompt = prompt
    info = doc["info"] if isinstance(doc.get("info"), dict) else {}
    model_cfg = (
        ((info.get("config") or {}).get("model") or {}) if isinstance(info.get("config"), dict) else {}
    )
    stats = info["model_stats"] if isinstance(info.get("model_stats"), dict) else {}
    meta: dict[str, Any] = {
        "format": "mini-swe-agent",
        "file": str(path),
        "trajectory_format": doc.get("trajectory_format"),
        "mini_version": info.get("mini_version"),
        "model_name": model_cfg.get("model_name") if isinstance(model_cfg, dict) else None,
        "exit_status": info.get("exit_status"),
        "api_calls_reported": stats.get("api_calls"),
        "recorded_cached_tokens": cached_total,
        "tool_delay_source": "none" if not sources else sources.pop() if len(sources) == 1 else "mixed",
    }
    if meta["tool_delay_source"] in ("sampled", "mixed"):
        meta["tool_delay_sampling"] = (
            "lognormal, median 1 s, sigma 0.75, clipped to 0.1-5 s (created has 1 s resolution)"
        )
    if warnings:
        meta["warnings"] = warnings
    return Trajectory(tid, turns, source="mini-swe-agent", meta=meta)


def _timestamp(msg: Any) -> float | None:
    extra = msg.get("extra") if isinstance(msg, dict) else None
    ts = extra.get("timestamp") if isinstance(extra, dict) else None
    return float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None


def _measured_delay(messages: list[Any], call: int, next_call: int) -> float | None:
    """Seconds from a call's response to its last observation, from ``extra.timestamp``; None if unknown."""
    start = _timestamp(messages[call])
    ends = [t for t in (_timestamp(m) for m in messages[call + 1 : next_call]) if t is not None]
    if start is None or not ends:
        return None
    return max(0.0, max(ends) - start)
