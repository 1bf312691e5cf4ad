"""Request bodies as bytes, built without a Python list of prompt ids or words and without ``json.dumps``
of the prompt.

:func:`body_bytes` gives the JSON of :meth:`Endpoint.body <agentperf_kit.client.http.Endpoint.body>` for a
plan: ``json.loads(body_bytes(ep, plan)) == ep.body(plan)`` (same keys in the same order, same values;
``tests/test_bodies.py``). Token-count-only turns take the prompt from :func:`.prompts.completion_prompt_json`
or :func:`.prompts.chat_filler_json` and splice it between the small encoded head and tail of the body;
recorded ``messages`` and an ``extra_body`` that replaces one of the head keys or the prompt go the plain
way (``encode_body(ep.body(plan))``). At the AA shape (~26K-token prompts) this is ~0.2 ms per request
instead of ~3 ms, time the event loop is blocked before each send (``benchmarks/client_outside.py``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .prompts import MARKER_TOKENS, chat_filler_json, completion_prompt_json, prepare_streams

if TYPE_CHECKING:
    from ..agents import RequestPlan
    from .http import Endpoint

__all__ = ["body_bytes", "prepare", "target_prompt_tokens"]

_HEAD_KEYS = frozenset({"model", "stream", "max_tokens", "stream_options", "prompt", "messages"})


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def body_bytes(endpoint: Endpoint, plan: RequestPlan) -> bytes:
    """The encoded request body for ``plan`` (the JSON of ``endpoint.body(plan)``)."""
    turn = plan.turn
    chat = endpoint.api == "chat"
    if (chat and turn.messages is not None) or not _HEAD_KEYS.isdisjoint(endpoint.extra_body):
        from .http import encode_body

        return encode_body(endpoint.body(plan))
    if chat:
        prompt = chat_filler_json(
            plan, tokens_per_word=endpoint.tokens_per_word, overhead_tokens=endpoint.overhead_tokens
        )
        key = b',"messages":'
    else:
        prompt = completion_prompt_json(plan, token_id_range=endpoint.token_id_range)
        key = b',"prompt":'
    n = turn.output_tokens
    options: dict[str, Any] = {"include_usage": True}
    if endpoint.continuous_usage:
        options["continuous_usage_stats"] = True
    head = _encode({"model": endpoint.model, "stream": True, "max_tokens": n, "stream_options": options})
    tail: dict[str, Any] = {}
    if chat:
        tail["max_completion_tokens"] = n
        if turn.tools is not None:
            tail["tools"] = turn.tools
    if endpoint.force_output_fields:
        tail["ignore_eos"] = True
        tail["min_tokens"] = n
    tail.update(endpoint.extra_body)
    end = b"," + _encode(tail)[1:] if tail else b"}"
    return b"".join((memoryview(head)[:-1], key, prompt, end))  # type: ignore[arg-type]


def prepare(endpoint: Endpoint) -> None:
    """Build the shared prompt stream this endpoint's bodies read (tens of ms, once per process), so that
    the first request of a run does not block the event loop for it: call before the agents start."""
    prepare_streams(chat=endpoint.api == "chat", token_id_range=endpoint.token_id_range)


def target_prompt_tokens(endpoint: Endpoint, plan: RequestPlan) -> int | None:
    """The prompt size a body from :func:`body_bytes` asks for (marker included): the completion prompt's
    ids, or the filler's target on chat; None for recorded ``messages`` (unknown until the server says)."""
    if endpoint.api == "completions":
        if "prompt" in endpoint.extra_body:
            prompt = endpoint.extra_body["prompt"]
            return len(prompt) if isinstance(prompt, list) else None
        return plan.turn.input_tokens + MARKER_TOKENS
    if plan.turn.messages is None:
        return plan.turn.input_tokens + MARKER_TOKENS
    return None
