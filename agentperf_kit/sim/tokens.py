"""How the simulated server turns a request body into tokens, and recognizes a repeated prefix.

**Token counting (an approximation, documented in docs/simulator.md).** Token-id prompts
(``/v1/completions`` with a list of ints) are exact. Text is split by :func:`text_tokens`: a run of up to
8 letters, a run of up to 3 digits, or any other non-space character is one token; whitespace is free.
Common short English words are therefore one token each (as in most BPE vocabularies), long words two or
more. A chat request adds one token per message for its role header; tool calls count their function name
and arguments as text.

**Prefix recognition.** Like vLLM's block hashing, a prompt is cut into full 16-token blocks and each
block's hash is chained to the previous one. :class:`PrefixIndex` remembers, for each conversation
("phase"), the chained hash of the last full block of its latest prompt; a new prompt whose chain contains
that hash continues the phase, and the matched blocks are its reusable prefix. One entry per phase, so
memory is bounded by the number of conversations, not by their length.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BLOCK_TOKENS", "PrefixIndex", "block_chain", "chat_tokens", "text_tokens"]

BLOCK_TOKENS = 16
_TOKEN_RE = re.compile(r"[^\W\d_]{1,8}|\d{1,3}|[^\w\s]|_")


def text_tokens(text: str) -> list[str]:
    """The simulated tokenizer: letters in runs of <= 8, digits in runs of <= 3, other symbols singly."""
    return _TOKEN_RE.findall(text)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def chat_tokens(
    messages: Sequence[dict[str, Any]], count: Callable[[str], Sequence[Any]] = text_tokens
) -> list[Any]:
    """Tokens of a chat prompt: per message a role header token, then its content and tool calls, each
    tokenized by ``count`` (text -> tokens)."""
    out: list[Any] = []
    for m in messages:
        out.append(f"<|{m.get('role', 'user')}|>")
        out.extend(count(_content_text(m.get("content"))))
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            out.extend(count(str(fn.get("name", ""))))
            args = fn.get("arguments", "")
            out.extend(count(args if isinstance(args, str) else json.dumps(args)))
    return out


def block_chain(tokens: Sequence[Any]) -> list[int]:
    """Chained hashes of the full ``BLOCK_TOKENS``-token blocks of ``tokens`` (a partial tail is ignored)."""
    chain: list[int] = []
    h = 0
    for i in range(0, len(tokens) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        h = hash((h, tuple(tokens[i : i + BLOCK_TOKENS])))
        chain.append(h)
    return chain


class PrefixIndex:
    """Which conversation a prompt continues, and how many of its tokens repeat that conversation's
    previous prompt (whole blocks). Keeps at most ``max_phases`` conversations (least recent dropped)."""

    def __init__(self, max_phases: int = 100_000) -> None:
        self.max_phases = max_phases
        self._by_hash: dict[int, int] = {}
        self._last: OrderedDict[int, int] = OrderedDict()  # phase -> hash of its latest prompt's last block
        self._next_phase = 0

    def __len__(self) -> int:
        return len(self._last)

    def match(self, chain: Sequence[int]) -> tuple[int, int]:
        """``(phase_id, prefix_tokens)`` for a prompt with block chain ``chain``; records the prompt as the
        phase's latest. A prompt that continues no known phase starts a new one with prefix 0."""
        phase, prefix = -1, 0
        for i in range(len(chain) - 1, -1, -1):
            p = self._by_hash.get(chain[i])
            if p is not None:
                phase, prefix = p, (i + 1) * BLOCK_TOKENS
                break
        if phase < 0:
            phase = self._next_phase
            self._next_phase += 1
        old = self._last.pop(phase, None)
        if old is not None and self._by_hash.get(old) == phase:
            del self._by_hash[old]
        if chain:
            self._by_hash[chain[-1]] = phase
            self._last[phase] = chain[-1]
        while len(self._last) > self.max_phases:
            _, h = self._last.popitem(last=False)
            self._by_hash.pop(h, None)
        return phase, prefix
