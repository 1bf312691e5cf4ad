"""One streamed request against an OpenAI-compatible endpoint -> a raw :class:`RequestOutcome`.

Error classes (``RequestOutcome.error``), one per fault, never retried:

| class | when |
|---|---|
| ``http_error`` | non-2xx status other than 429 (detail: status and a body excerpt) |
| ``rate_limited`` | HTTP 429 (detail: ``Retry-After``) |
| ``connect_error`` | the connection could not be made or broke before a response |
| ``stream_cut`` | the stream ended before ``[DONE]`` and before a finish reason |
| ``stall_timeout`` | no bytes for ``stall_timeout_s`` mid-stream |
| ``request_timeout`` | the whole request took longer than ``request_timeout_s`` |
| ``malformed_json`` | a ``data:`` payload that is not JSON |
| ``stream_error`` | an error object inside the stream |
| ``empty_response`` | a finished stream with no visible token |
| ``cancelled_at_end`` | still running when the drain after the steady window expired (set by the driver) |

Timestamps: ``time.perf_counter_ns`` converted to seconds since the run's clock origin.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..agents import RequestOutcome, RequestPlan
from .prompts import MARKER_TOKENS, chat_messages, completion_prompt
from .sse import DONE, MalformedChunk, parse_event

__all__ = ["Endpoint", "scrub", "send_request"]

_NAN = float("nan")
_SECRET = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+|sk-)[A-Za-z0-9._\-]{6,}")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys (given ones and anything that looks like a bearer token or ``sk-...`` key)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


@dataclass
class Endpoint:
    """An OpenAI-compatible endpoint and how to call it.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: model name sent in every request.
        api: ``chat`` (``/chat/completions``) or ``completions`` (``/completions``, token-id prompts).
        api_key_env: name of the environment variable holding the API key (the key itself is never
            written anywhere; the manifest records only this name).
        force_output_fields: send ``ignore_eos`` and ``min_tokens`` (turn off for hosted APIs that reject
            unknown fields); ``max_tokens`` (and ``max_completion_tokens`` for chat) are always sent.
        headers, extra_body: added to every request.
        request_timeout_s: whole-request limit; stall_timeout_s: limit on silence mid-stream.
        tokens_per_word: calibration of chat filler text (see :mod:`.prompts`).
    """

    base_url: str
    model: str
    api: str = "chat"
    api_key_env: str | None = None
    force_output_fields: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0
    tokens_per_word: float = 1.0
    token_id_range: tuple[int, int] = (100, 4000)

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {self.api!r}")
        self.base_url = self.base_url.rstrip("/")

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def public_dict(self) -> dict[str, Any]:
        """The endpoint for the manifest: no key, header values that look secret masked."""
        headers = {
            k: ("***" if k.lower() in ("authorization", "api-key", "x-api-key") else v)
            for k, v in self.headers.items()
        }
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api": self.api,
            "api_key_env": self.api_key_env,
            "force_output_fields": self.force_output_fields,
            "headers": headers,
            "extra_body_keys": sorted(self.extra_body),
            "request_timeout_s": self.request_timeout_s,
            "stall_timeout_s": self.stall_timeout_s,
            "tokens_per_word": self.tokens_per_word,
        }

    def body(self, plan: RequestPlan) -> dict[str, Any]:
        """The JSON body of the request for ``plan`` (streaming, usage requested, output forced)."""
        n = plan.turn.output_tokens
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "max_tokens": n,
            "stream_options": {"include_usage": True},
        }
        if self.api == "chat":
            body["messages"] = chat_messages(plan, tokens_per_word=self.tokens_per_word)
            body["max_completion_tokens"] = n
            if plan.turn.tools is not None:
                body["tools"] = plan.turn.tools
        else:
            body["prompt"] = completion_prompt(plan, token_id_range=self.token_id_range)
        if self.force_output_fields:
            body["ignore_eos"] = True
            body["min_tokens"] = n
        body.update(self.extra_body)
        return body


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


async def send_request(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    plan: RequestPlan,
    body: dict[str, Any],
    origin_ns: int,
    *,
    secrets: tuple[str, ...] = (),
) -> RequestOutcome:
    """Send one streaming request and measure it. Never raises for a server or network fault."""
    clock = time.perf_counter_ns
    t_send = (clock() - origin_ns) / 1e9
    out = RequestOutcome(t_send_s=t_send, t_end_s=_NAN)
    if endpoint.api == "completions":
        out.target_prompt_tokens = len(body["prompt"])
    elif plan.turn.messages is None:
        out.target_prompt_tokens = plan.turn.input_tokens + MARKER_TOKENS
    t_first = t_first_answer = t_last = t_finish = 0
    n_chunks = 0
    finished = done = False
    usage: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(endpoint.request_timeout_s):
            async with session.post(endpoint.url, json=body) as resp:
                out.http_status = resp.status
                if resp.status != 200:
                    text = scrub((await resp.text())[:300], secrets)
                    if resp.status == 429:
                        out.error = "rate_limited"
                        out.error_detail = f"429 Retry-After={resp.headers.get('Retry-After')}: {text}"
                    else:
                        out.error = "http_error"
                        out.error_detail = f"{resp.status}: {text}"
                    out.ok = False
                    return out
                content = resp.content
                stall = endpoint.stall_timeout_s
                while True:
                    try:
                        async with asyncio.timeout(stall):
                            line = await content.readline()
                    except TimeoutError:
                        out.ok, out.error = False, "stall_timeout"
                        out.error_detail = f"no data for {stall:g} s"
                        break
                    if not line:
                        break
                    if not line.startswith(b"data:"):
                        continue  # comments (': keep-alive'), event:, id:, blank lines
                    now = clock()
                    info = parse_event(line[5:])
                    if info is DONE:
                        done = True
                        break
                    if info.error is not None:
                        out.ok, out.error = False, "stream_error"
                        out.error_detail = scrub(info.error[:300], secrets)
                        break
                    if info.visible:
                        n_chunks += 1
                        t_last = now
                        if not t_first:
                            t_first = now
                        if info.answer and not t_first_answer:
                            t_first_answer = now
                        if info.tool_call:
                            out.has_tool_calls = True
                    if info.finish_reason:
                        if not finished:
                            t_finish = now
                        finished = True
                        out.finish_reason = info.finish_reason
                    if info.usage is not None:
                        usage = info.usage
    except MalformedChunk as exc:
        out.ok, out.error, out.error_detail = False, "malformed_json", scrub(str(exc), secrets)
    except TimeoutError:
        out.ok, out.error = False, "request_timeout"
        out.error_detail = f"longer than {endpoint.request_timeout_s:g} s"
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
        out.ok = False
        out.error = "connect_error" if not n_chunks else "stream_cut"
        out.error_detail = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
    except aiohttp.ClientError as exc:
        out.ok, out.error = False, "stream_cut"
        out.error_detail = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
    end = clock()
    out.t_end_s = (end - origin_ns) / 1e9
    if t_first:
        out.t_first_s = (t_first - origin_ns) / 1e9
        out.t_last_s = (t_last - origin_ns) / 1e9
    if t_first_answer:
        out.t_first_answer_s = (t_first_answer - origin_ns) / 1e9
    out.n_chunks = n_chunks
    if usage:
        out.prompt_tokens = _int(usage.get("prompt_tokens"))
        out.output_tokens = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details") or {}
        out.cached_prompt_tokens = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
        cdetails = usage.get("completion_tokens_details") or {}
        if isinstance(cdetails, dict):
            out.reasoning_tokens = _int(cdetails.get("reasoning_tokens"))
    if out.output_tokens is None and out.ok and n_chunks:
        out.output_tokens = n_chunks  # fallback: visible deltas (a lower bound with multi-token chunks)
    if out.ok and finished and not n_chunks and (out.output_tokens or 0) > 0 and t_finish:
        # tokens whose text is empty (e.g. llama.cpp holds back a token that ends mid-UTF-8 character):
        # the server produced them, so the finish chunk marks the first and last token
        out.t_first_s = out.t_last_s = out.t_first_answer_s = (t_finish - origin_ns) / 1e9
        n_chunks = 1
    if out.ok:
        if not (done or finished):
            out.ok, out.error = False, "stream_cut"
            out.error_detail = "stream ended before [DONE] and before a finish_reason"
        elif not n_chunks:
            out.ok, out.error = False, "empty_response"
            out.error_detail = "the stream finished without a visible token"
    return out
