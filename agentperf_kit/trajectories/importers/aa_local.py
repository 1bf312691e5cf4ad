"""Import an ``aa-agentperf-local`` replay directory (Artificial Analysis's open local harness).

Layout: ``manifest.json`` (``name``, ``source``, ``mode``, ``version`` 1, ``tasks``: each with ``task_id``,
``trace`` (a path relative to the manifest), ``model_calls``, ``tool_calls``...) and, per task, a JSONL
trace with one object per model turn: ``turn_id``, ``task_id``, ``conversation_id``, ``conversation_idx``,
OpenAI ``messages`` and ``tools``, ``target_output_tokens``, ``simulated_tool_delay_ms_after``,
``recorded_tool_calls_after`` and, where the recording has them, ``recorded_prompt_tokens`` /
``recorded_completion_tokens``.

Mapping (one trajectory per task, one turn per trace line, in file order):

- ``messages``/``tools`` are kept as recorded (the replay sends them).
- ``output_tokens`` = ``target_output_tokens``, else ``recorded_completion_tokens``, else
  ``max_output_tokens``.
- input tokens = ``recorded_prompt_tokens``; where absent (AA's bundled mini replay has none) they are
  *estimated* as ceil(characters of the JSON of messages + tools / 4), and the trajectory's meta says how
  many turns were estimated (``prompt_tokens_estimated``).
- phases: a turn continues the phase when it is in the same ``conversation_id`` and its messages start
  with the previous turn's messages; its ``prefix_tokens`` is then the previous prompt (capped at its own
  prompt). A partial message overlap keeps the phase with a prefix proportional to the shared characters;
  no overlap, a new conversation or a changed ``tools`` list (chat templates render tools at the start of
  the prompt, so the cached prefix breaks) starts a new phase.
- ``tool_delay_s`` = ``simulated_tool_delay_ms_after`` / 1000; ``tool_calls`` = the turn has
  ``recorded_tool_calls_after``.
- Lost: ``recorded_tool_calls_after`` outputs/actions (the benchmark waits, it does not run tools),
  ``recorded_model_duration_ms``, ``tool_environment``; reasoning tokens are unknown (null).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..model import Trajectory, TrajectoryFormatError, Turn
from ._common import bad, is_count, is_seconds, iter_jsonl, read_json

__all__ = ["import_aa_local"]

_SUPPORTED_VERSION = 1


def _find_manifest(src: Path) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"aa-local source not found: {src}")
    if (src / "manifest.json").is_file():
        return src / "manifest.json"
    found = sorted(src.glob("manifest*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise TrajectoryFormatError(
            "no manifest.json in this directory; pass an aa-agentperf-local replay directory "
            "(manifest.json + traces/TASK.jsonl) or the manifest file itself",
            path=str(src),
        )
    names = ", ".join(p.name for p in found)
    raise TrajectoryFormatError(f"several manifests ({names}); pass the one to import as SRC", path=str(src))


def _estimate_tokens(messages: list[dict[str, Any]], tools: list[Any] | None) -> int:
    chars = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(tools or [], ensure_ascii=False))
    return max(1, math.ceil(chars / 4))


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False, sort_keys=True)) for m in messages)


def _shared_messages(prev: list[dict[str, Any]], cur: list[dict[str, Any]]) -> int:
    n = 0
    for a, b in zip(prev, cur):
        if a != b:
            break
        n += 1
    return n


def import_aa_local(src: str | Path) -> list[Trajectory]:
    """Read an aa-agentperf-local replay (directory or manifest file) into trajectories.

    Raises:
        TrajectoryFormatError: a malformed manifest or trace line (file, line, field, value, fix).
        FileNotFoundError: ``src`` or a trace named by the manifest does not exist.
    """
    manifest_path = _find_manifest(Path(src))
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise bad(manifest_path, None, "manifest", type(manifest).__name__, "must be a JSON object")
    version = manifest.get("version")
    if version != _SUPPORTED_VERSION:
        raise bad(
            manifest_path,
            None,
            "version",
            version,
            f"must be {_SUPPORTED_VERSION} (the format this importer reads)",
        )
    tasks = manifest.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise bad(manifest_path, None, "tasks", tasks, "must be a non-empty list of task objects")
    out: list[Trajectory] = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("task_id"), str) or not task["task_id"]:
            raise bad(manifest_path, None, f"tasks[{i}].task_id", task, "must be a non-empty string")
        trace_rel = task.get("trace")
        if (
            not isinstance(trace_rel, str)
            or not trace_rel
            or Path(trace_rel).is_absolute()
            or ".." in Path(trace_rel).parts
        ):
            raise bad(
                manifest_path,
                None,
                f"tasks[{i}].trace",
                trace_rel,
                "must be a path inside the manifest's directory",
            )
        trace = manifest_path.parent / trace_rel
        if not trace.is_file():
            raise FileNotFoundError(f"{manifest_path}: tasks[{i}].trace names a missing file: {trace}")
        out.append(_import_task(trace, task, manifest, manifest_path))
    return out


def _import_task(
    trace: Path, task: dict[str, Any], manifest: dict[str, Any], manifest_path: Path
) -> Trajectory:
    turns: list[Turn] = []
    estimated = 0
    warnings: list[str] = []
    prev_msgs: list[dict[str, Any]] | None = None
    prev_tools: list[Any] | None = None
    prev_conv: str | None = None
    prev_idx = -1
    prev_prompt = 0
    phase = -1
    for line, row in iter_jsonl(trace):
        for key in ("turn_id", "conversation_id"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise bad(trace, line, key, row.get(key), "must be a non-empty string")
        if row.get("task_id") != task["task_id"]:
            raise bad(
                trace, line, "task_id", row.get("task_id"), f"must be the manifest's {task['task_id']!r}"
            )
        if row.get("version", _SUPPORTED_VERSION) != _SUPPORTED_VERSION:
            raise bad(trace, line, "version", row.get("version"), f"must be {_SUPPORTED_VERSION}")
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise bad(trace, line, "messages", msgs, "must be a non-empty list of OpenAI message objects")
        tools = row.get("tools", [])
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise bad(trace, line, "tools", tools, "must be a list of OpenAI tool objects")
        delay_ms = row.get("simulated_tool_delay_ms_after")
        if not is_seconds(delay_ms):
            raise bad(trace, line, "simulated_tool_delay_ms_after", delay_ms, "must be a number of ms >= 0")
        output = None
        for key in ("target_output_tokens", "recorded_completion_tokens", "max_output_tokens"):
            if row.get(key) is not None:
                if not is_count(row[key]):
                    raise bad(trace, line, key, row[key], "must be a non-negative integer")
                output = row[key]
                break
        if output is None:
            raise bad(
                trace,
                line,
                "target_output_tokens",
                None,
                "is needed (or recorded_completion_tokens / max_output_tokens): "
                "the replay forces this length",
            )
        if output < 1:
            warnings.append(
                f"line {line}: output of {output} tokens raised to 1 (a forced length must be >= 1)"
            )
            output = 1
        prompt = row.get("recorded_prompt_tokens")
        if prompt is None:
            prompt = _estimate_tokens(msgs, tools)
            estimated += 1
        elif not is_count(prompt, 1):
            raise bad(trace, line, "recorded_prompt_tokens", prompt, "must be a positive integer or absent")
        conv, idx = row["conversation_id"], row.get("conversation_idx")
        if not is_count(idx):
            raise bad(trace, line, "conversation_idx", idx, "must be a non-negative integer")
        if conv == prev_conv and idx <= prev_idx:
            raise bad(
                trace, line, "conversation_idx", idx, f"must increase within a conversation (was {prev_idx})"
            )
        same_context = prev_msgs is not None and conv == prev_conv and tools == prev_tools
        prev = prev_msgs if prev_msgs is not None else []
        shared = _shared_messages(prev, msgs) if same_context else 0
        if shared == 0:
            phase, prefix = phase + 1, 0
        elif shared == len(prev):
            prefix = min(prev_prompt, prompt)
        else:
            share = _chars(prev[:shared]) / max(1, _chars(prev))
            prefix = min(prev_prompt, prompt, round(prev_prompt * share))
        calls_after = row.get("recorded_tool_calls_after") or []
        turns.append(
            Turn(
                phase=phase,
                prefix_tokens=prefix,
                new_tokens=prompt - prefix,
                output_tokens=output,
                reasoning_tokens=None,
                tool_calls=bool(calls_after),
                tool_delay_s=round(delay_ms / 1000.0, 6),
                messages=msgs,
                tools=tools,
            )
        )
        prev_msgs, prev_tools, prev_conv, prev_idx, prev_prompt = msgs, tools, conv, idx, prompt
    if not turns:
        raise TrajectoryFormatError("the trace has no turns", path=str(trace))
    declared = task.get("model_calls")
    if is_count(declared) and declared != len(turns):
        warnings.append(f"manifest declares model_calls={declared}, the trace has {len(turns)} turns")
    meta: dict[str, Any] = {
        "format": "aa-local",
        "manifest": str(manifest_path),
        "replay_name": manifest.get("name"),
        "task_id": task["task_id"],
        "trace": str(trace),
        "family": task.get("family"),
        "adapter": task.get("adapter"),
        "required_context_tokens": task.get("required_context_tokens"),
        "prompt_tokens_estimated": estimated,
    }
    if estimated:
        meta["prompt_tokens_estimate"] = "ceil(characters of JSON(messages) + JSON(tools) / 4)"
    if warnings:
        meta["warnings"] = warnings
    return Trajectory(task["task_id"], turns, source="aa-local", meta=meta)
