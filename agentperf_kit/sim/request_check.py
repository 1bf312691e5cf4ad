"""Type checks of an OpenAI request body for the simulated server, before any answer is started.

:func:`check_body` raises :class:`BadRequest` naming the first field whose value has the wrong type (a
dotted path such as ``messages[2].content``), so a client sending ``"stream_options": 5`` or
``"max_tokens": "x"`` gets status 400 instead of a 200 that breaks mid-stream. Fields the simulator does
not know are ignored (as vLLM ignores extra fields). Range checks that depend on the server (context
length, ``n``) stay in :mod:`agentperf_kit.sim.server`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BadRequest", "check_body"]


class BadRequest(Exception):
    """A request the server answers with ``status`` (400, or 404 for an unknown model); ``param`` names
    the offending field."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS = {
    "int": (_is_int, "an integer"),
    "num": (_is_num, "a number"),
    "bool": (lambda v: isinstance(v, bool), "a boolean"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "an array"),
}

# optional top-level fields (None is allowed for each) -> expected kind
_COMMON = {
    "model": "str",
    "stream": "bool",
    "stream_options": "dict",
    "max_tokens": "int",
    "max_completion_tokens": "int",
    "min_tokens": "int",
    "n": "int",
    "seed": "int",
    "top_k": "int",
    "temperature": "num",
    "top_p": "num",
    "min_p": "num",
    "presence_penalty": "num",
    "frequency_penalty": "num",
    "repetition_penalty": "num",
    "ignore_eos": "bool",
    "user": "str",
    "logit_bias": "dict",
}
_CHAT = {
    "logprobs": "bool",
    "top_logprobs": "int",
    "tools": "list",
    "response_format": "dict",
    "parallel_tool_calls": "bool",
}
_COMPLETIONS = {"logprobs": "int", "echo": "bool", "suffix": "str"}


def _describe(v: Any) -> str:
    text = repr(v)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(v).__name__})"


def _expect(value: Any, kind: str, path: str) -> None:
    ok, what = _KINDS[kind]
    if value is not None and not ok(value):
        raise BadRequest(f"'{path}' must be {what}, got {_describe(value)}", param=path)


def _check_stop(value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return
    raise BadRequest(f"'stop' must be a string or an array of strings, got {_describe(value)}", param="stop")


def _check_message(m: Any, i: int) -> None:
    path = f"messages[{i}]"
    if not isinstance(m, dict):
        raise BadRequest(f"'{path}' must be an object, got {_describe(m)}", param=path)
    role = m.get("role")
    if not isinstance(role, str):
        raise BadRequest(f"'{path}.role' must be a string, got {_describe(role)}", param=f"{path}.role")
    content = m.get("content")
    if isinstance(content, list):
        for k, part in enumerate(content):
            ppath = f"{path}.content[{k}]"
            if not isinstance(part, dict):
                raise BadRequest(f"'{ppath}' must be an object, got {_describe(part)}", param=ppath)
            _expect(part.get("type"), "str", f"{ppath}.type")
            _expect(part.get("text"), "str", f"{ppath}.text")
    elif content is not None and not isinstance(content, str):
        raise BadRequest(
            f"'{path}.content' must be a string or an array of content parts, got {_describe(content)}",
            param=f"{path}.content",
        )
    for key in ("name", "tool_call_id", "reasoning_content"):
        _expect(m.get(key), "str", f"{path}.{key}")
    calls = m.get("tool_calls")
    _expect(calls, "list", f"{path}.tool_calls")
    for k, call in enumerate(calls or ()):
        cpath = f"{path}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise BadRequest(f"'{cpath}' must be an object, got {_describe(call)}", param=cpath)
        fn = call.get("function")
        _expect(fn, "dict", f"{cpath}.function")
        if fn is not None:
            _expect(fn.get("name"), "str", f"{cpath}.function.name")
            _expect(fn.get("arguments"), "str", f"{cpath}.function.arguments")


def check_body(body: Any, *, chat: bool) -> None:
    """Raise :class:`BadRequest` unless ``body`` is an object whose known fields have the right types.
    ``chat``: a ``/v1/chat/completions`` body (``messages``) rather than ``/v1/completions`` (``prompt``)."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    for fields in (_COMMON, _CHAT if chat else _COMPLETIONS):
        for key, kind in fields.items():
            _expect(body.get(key), kind, key)
    opts = body.get("stream_options")
    if opts is not None:
        for key in ("include_usage", "continuous_usage_stats"):
            _expect(opts.get(key), "bool", f"stream_options.{key}")
    _check_stop(body.get("stop"))
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, (str, dict)):
        raise BadRequest(
            f"'tool_choice' must be a string or an object, got {_describe(choice)}", param="tool_choice"
        )
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(
                f"'messages' must be a non-empty array of message objects, got {_describe(messages)}",
                param="messages",
            )
        for i, m in enumerate(messages):
            _check_message(m, i)
