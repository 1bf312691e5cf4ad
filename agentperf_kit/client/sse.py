"""Parsing OpenAI-style SSE chunks (chat and completions) from vLLM, SGLang, TensorRT-LLM, llama.cpp...

One ``data:`` payload at a time, as bytes. :func:`parse_event` decodes it and says what it carries:
visible output (``content``/``text``, ``reasoning_content``/``reasoning``, tool-call deltas), whether the
visible part is an *answer* (not reasoning), the finish reason, ``usage`` (in a ``choices: []`` chunk as
vLLM sends it, or inside the finish chunk as llama.cpp does), and an error object. Tolerated: role-only
first chunks, empty-text chunks (no visible token), ``data: null``, ``[DONE]``; comment lines (``:``) and
``\\r\\n`` line ends are handled by the reader before this function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "ChunkInfo", "MalformedChunk", "parse_event"]

DONE = object()


class MalformedChunk(ValueError):
    """A ``data:`` payload that is not valid JSON."""


@dataclass(slots=True)
class ChunkInfo:
    """What one SSE event carries."""

    visible: bool = False
    answer: bool = False  # visible and not reasoning
    reasoning: bool = False
    tool_call: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None


_EMPTY = ChunkInfo()


def parse_event(payload: bytes) -> ChunkInfo | object:
    """Parse one ``data:`` payload (without the ``data:`` prefix). Returns :data:`DONE` for ``[DONE]``."""
    payload = payload.strip()
    if payload == b"[DONE]":
        return DONE
    if payload in (b"null", b""):
        return _EMPTY
    try:
        obj = json.loads(payload)
    except ValueError as exc:
        raise MalformedChunk(f"not JSON: {payload[:120]!r}") from exc
    if not isinstance(obj, dict):
        return _EMPTY
    info = ChunkInfo()
    err = obj.get("error")
    if err:
        info.error = (err.get("message") if isinstance(err, dict) else str(err)) or "error"
        return info
    usage = obj.get("usage")
    if isinstance(usage, dict):
        info.usage = usage
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        fr = choice.get("finish_reason")
        if fr:
            info.finish_reason = fr
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat
            if delta.get("content"):
                info.visible = info.answer = True
            if delta.get("reasoning_content") or delta.get("reasoning"):
                info.visible = info.reasoning = True
            if delta.get("tool_calls"):
                info.visible = info.answer = info.tool_call = True
        elif choice.get("text"):  # completions
            info.visible = info.answer = True
    return info
