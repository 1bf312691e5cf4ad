"""Parsing OpenAI-style SSE chunks (chat and completions) from vLLM, SGLang, TensorRT-LLM, llama.cpp...

One ``data:`` payload at a time, as bytes. :func:`parse_event` decodes it and says what it carries:
visible output (non-empty ``content``/``text``, ``reasoning_content``/``reasoning``, or a tool-call delta
with a non-empty function name or arguments; an id/type-only tool-call delta is not visible), whether the
visible part is an *answer* (not reasoning), the finish reason, ``usage`` (in a ``choices: []`` chunk as
vLLM sends it, or inside the finish chunk as llama.cpp does), and an error object (``{"error": ...}``, or
``{"object": "error", "message": ...}`` as TensorRT-LLM and older vLLM send it). Tolerated: role-only
first chunks, empty-text chunks (no visible token), ``data: null``, ``[DONE]``; comment lines (``:``) and
``\\r\\n`` line ends are handled by the reader before this function.

**Fast path** (:class:`FastScanner`, one per stream): the chunks of one stream are byte-for-byte the same
apart from the text of their visible fields (same id, model, created, keys, order). The first visible
chunk of each shape is decoded in full and becomes a *template*: its bytes cut at the string values of
``content``/``text``/``reasoning_content``/``reasoning``/``arguments``. A later payload that equals the
template's literal bytes with valid JSON string bodies in the cuts (checked by a regex with JSON's own
string grammar, and UTF-8 validity where not ASCII) has, by construction, the same JSON structure, so its
:class:`ChunkInfo` depends only on which bodies are empty; that answer is taken from decoding the template
with ``"x"``/``""`` in the cuts (once per combination). Templates are kept only for chunks without a
finish reason, usage or error, so everything else (first chunk, finish chunk, usage, errors, ``[DONE]``,
malformed data) goes through :func:`parse_event`. The answers are identical to :func:`parse_event` on
every payload (``tests/test_sse_fastpath.py`` checks both paths against each other).
"""

from __future__ import annotations

import enum
import json
import operator
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "BODY_MATCH",
    "DONE",
    "ChunkInfo",
    "FastScanner",
    "MalformedChunk",
    "parse_event",
    "text_bytes",
    "utf8_ok",
]


class _Done(enum.Enum):
    """The type of :data:`DONE` (an enum member, so ``info is DONE`` narrows the type for the checker)."""

    DONE = "[DONE]"


DONE: Final = _Done.DONE


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


def _text(value: Any, limit: int = 300) -> str:
    """A server-sent value as short text for a row: strings as they are, anything else as compact JSON
    (its type name where even that fails, e.g. a structure too deep to print)."""
    if isinstance(value, str):
        return value[:limit]
    try:
        return json.dumps(value, separators=(",", ":"))[:limit]
    except (ValueError, TypeError, RecursionError):
        return type(value).__name__


def parse_event(payload: bytes) -> ChunkInfo | Literal[_Done.DONE]:
    """Parse one ``data:`` payload (without the ``data:`` prefix). Returns :data:`DONE` for ``[DONE]``.

    Any bytes give an answer or :class:`MalformedChunk`, never another exception: JSON too deep for the
    decoder (``RecursionError``) is malformed; a shape other than expected (``"choices": 5``, a choice
    that is not an object, an error message that is a number, an object as finish reason) is read for
    what it can say: non-list ``choices`` carry nothing, non-string error messages and finish reasons are
    kept as compact JSON text (:func:`_text`)."""
    payload = payload.strip()
    if payload == b"[DONE]":
        return DONE
    if payload in (b"null", b""):
        return _EMPTY
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        why = "nested too deep to decode" if isinstance(exc, RecursionError) else "not JSON"
        raise MalformedChunk(f"{why}: {payload[:120]!r}") from None
    if not isinstance(obj, dict):
        return _EMPTY
    info = ChunkInfo()
    err = obj.get("error")
    if not err and obj.get("object") == "error":  # TensorRT-LLM / older vLLM ErrorResponse
        err = {"message": obj.get("message")}
    if err:
        msg = err.get("message") if isinstance(err, dict) else err
        info.error = (_text(msg) if msg else "") or "error"
        return info
    usage = obj.get("usage")
    if isinstance(usage, dict):
        info.usage = usage
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return info
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        fr = choice.get("finish_reason")
        if fr:
            info.finish_reason = fr if isinstance(fr, str) else _text(fr, 64)
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat
            if delta.get("content"):
                info.visible = info.answer = True
            if delta.get("reasoning_content") or delta.get("reasoning"):
                info.visible = info.reasoning = True
            if _visible_tool_call(delta.get("tool_calls")):
                info.visible = info.answer = info.tool_call = True
        elif choice.get("text"):  # completions
            info.visible = info.answer = True
    return info


def _visible_tool_call(calls: Any) -> bool:
    """A tool-call delta is visible output only with a non-empty function name or arguments (a delta
    with only an id/type/index is not a token; the public reference harness counts it the same way)."""
    if not isinstance(calls, list):
        return False
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and (fn.get("name") or fn.get("arguments")):
            return True
    return False


# a JSON string body (between the quotes) as json.loads(strict=True) accepts it
_BODY = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+')
# where a visible string value starts: "key" : "
_SLOT = re.compile(rb'"(?:content|text|reasoning_content|reasoning|arguments)"[ \t\r\n]*:[ \t\r\n]*"')
_MAX_SLOTS = 3
_MAX_TEMPLATES = 4
_MAX_LEARN = 8  # templates learned per stream before giving up (a server whose chunks never repeat)


def _string_end(s: bytes, pos: int) -> int:
    """Index of the first unescaped ``"`` at or after ``pos``, or -1."""
    q = s.find(b'"', pos)
    while q > 0 and s[q - 1] == 92:  # a backslash before it: escaped if the run of backslashes is odd
        j = q - 1
        while j >= pos and s[j] == 92:
            j -= 1
        if (q - 1 - j) % 2 == 0:
            break
        q = s.find(b'"', q + 1)
    return q


def text_bytes(line: bytes) -> int:
    """Bytes of visible text in a ``data:`` line, as sent (JSON escapes included): the raw string bodies of
    every ``content``/``text``/``reasoning_content``/``reasoning``/``arguments`` value, the same cuts a
    template makes, so a line answered from a template has ``len(line) - template literal bytes``."""
    total = pos = 0
    for m in _SLOT.finditer(line):
        start = m.end()
        if start <= pos:
            continue
        end = _string_end(line, start)
        if end < 0:
            break
        total += end - start
        pos = end
    return total


class _Template:
    __slots__ = ("infos", "lit", "n0", "segs")

    def __init__(self, segs: tuple[bytes, ...]) -> None:
        self.segs = segs
        self.lit = sum(len(seg) for seg in segs)
        self.n0 = len(segs[0])
        self.infos: list[ChunkInfo | None] = [None] * (1 << (len(segs) - 1))

    def info(self, bits: int) -> ChunkInfo | None:
        """ChunkInfo of a line with non-empty bodies where ``bits`` says; None if not templatable."""
        info = self.infos[bits]
        if info is None:
            segs = self.segs
            probe = [segs[0]]
            for i in range(1, len(segs)):
                probe.append(b"x" if bits >> (i - 1) & 1 else b"")
                probe.append(segs[i])
            try:
                got = parse_event(b"".join(probe)[5:])
            except MalformedChunk:
                return None
            if got is DONE or got.finish_reason is not None or got.usage is not None or got.error is not None:
                return None
            info = self.infos[bits] = got
        return info

    def fit(self, s: bytes) -> int:
        """``bits`` of the non-empty bodies if line ``s`` fits the template, else -1."""
        segs = self.segs
        if not s.startswith(segs[0]):
            return -1
        pos = self.n0
        bits = 0
        body_ok = _BODY.fullmatch
        for i in range(1, len(segs)):
            q = _string_end(s, pos)
            if q < 0:
                return -1
            if q > pos:
                if body_ok(s, pos, q) is None:
                    return -1
                bits |= 1 << (i - 1)
            seg = segs[i]
            if not s.startswith(seg, q):
                return -1
            pos = q + len(seg)
        if pos != len(s):
            return -1
        if not s.isascii() and not utf8_ok(s):
            return -1
        return bits


def utf8_ok(s: bytes) -> bool:
    """Whether ``json.loads`` can decode these bytes (it decodes UTF-8 with ``surrogatepass``)."""
    try:
        s.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def _learn(s: bytes) -> _Template | None:
    """A template from a fully decoded visible ``data:`` line ``s``, or None."""
    segs = []
    pos = 0
    for m in _SLOT.finditer(s):
        start = m.end()
        if start <= pos:
            continue
        end = _string_end(s, start)
        if end < 0:
            return None
        segs.append(s[pos:start])
        pos = end
        if len(segs) > _MAX_SLOTS:
            return None
    if not segs:
        return None
    segs.append(s[pos:])
    tpl = _Template(tuple(segs))
    bits = tpl.fit(s)
    if bits < 0 or tpl.info(bits) is None:
        return None
    return tpl


BODY_MATCH = _BODY.fullmatch


class FastScanner:
    """Per-stream scanner of ``data:`` lines with the answers of :func:`parse_event` (module docstring).

    ``scan(line)`` takes a whole line that starts with ``data:`` (line end not needed; a ``\\r`` or
    spaces after the JSON are fine) and returns what ``parse_event(line[5:])`` returns (:data:`DONE`, or
    a :class:`ChunkInfo` to be read, not modified), or raises :class:`MalformedChunk` where it does.

    ``hot`` is ``(head, tail, len(head), len(tail), info_if_empty, info_if_not_empty, tail + b"\\n\\n",
    len(tail) + 2, body_of, tail + b"\\n\\n" + head, chunk_heads, tail + b"\\n\\n\\r\\n")`` of the
    newest one-cut template (``body_of(event)``: ``event[len(head):-len(tail) - 2]``, the body of an event
    ``head + body + tail + b"\\n\\n"``; ``chunk_heads``: a cache for a reader of HTTP chunks, see
    ``StreamState.feed_chunk``), for a caller's inline check: a line ``head + body + tail`` with
    ``BODY_MATCH(line, len(head), len(line) - len(tail))`` (and :func:`utf8_ok` when not ASCII) has that
    info; None when there is no such template. ``hits`` counts lines answered from a template by :meth:`scan`.
    ``last_bytes`` is :func:`text_bytes` of the last line scanned when it was visible (0 otherwise).
    """

    __slots__ = ("hits", "hot", "last_bytes", "learned", "templates")

    def __init__(self) -> None:
        self.templates: list[_Template] = []
        self.hits = 0
        self.last_bytes = 0
        self.learned = 0
        self.hot: tuple | None = None

    def scan(self, line: bytes) -> ChunkInfo | Literal[_Done.DONE]:
        tpl: _Template | None
        for tpl in self.templates:
            bits = tpl.fit(line)
            if bits >= 0:
                known = tpl.infos[bits] or tpl.info(bits)
                if known is not None:
                    self.hits += 1
                    self.last_bytes = len(line) - tpl.lit
                    return known
        info = parse_event(line[5:])
        self.last_bytes = text_bytes(line) if info is not DONE and info.visible else 0
        if (
            info is not DONE
            and info.visible
            and info.finish_reason is None
            and info.usage is None
            and self.learned < _MAX_LEARN
        ):
            tpl = _learn(line)
            if tpl is not None:
                self.learned += 1
                if len(self.templates) >= _MAX_TEMPLATES:
                    self.templates.pop()
                self.templates.insert(0, tpl)
                if len(tpl.segs) == 2:
                    empty, full = tpl.info(0), tpl.info(1)
                    if empty is not None and full is not None:
                        head, tail = tpl.segs
                        end = tail + b"\n\n"  # the line as a whole block (StreamState.feed)
                        body = operator.itemgetter(slice(len(head), -len(end)))
                        h, t = len(head), len(tail)
                        crlf = end + b"\r\n"  # how an HTTP chunk of the line ends (feed_chunk)
                        self.hot = (head, tail, h, t, empty, full, end, t + 2, body, end + head, {}, crlf)
        return info
