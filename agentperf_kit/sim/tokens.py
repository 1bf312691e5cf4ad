"""How the simulated server turns a request body into tokens, and recognizes a repeated prefix.

**Token counting (an approximation, documented in docs/simulator.md).** Token-id prompts
(``/v1/completions`` with a list of ints) are exact. Text is split by :func:`text_tokens`: a line break
with the indentation that follows it, a run of up to 8 letters, a run of up to 3 digits, or any other
non-space character is one token; other whitespace is free. Common short English words are therefore one
token each (as in most BPE vocabularies), long words two or more. Against a byte-level BPE with a 32K
vocabulary (``python benchmarks/sim_token_counts.py``) this counts 0.97x the tokenizer on the toolkit's
chat filler text and 1.00x on Python source. A chat request adds one token per message for its role
header; tool calls count their function name and arguments as text. With a local Hugging Face
tokenizer (:func:`load_tokenizer`, ``serve-sim --tokenizer PATH``) text is counted by that tokenizer
instead (role headers stay one token each).

**Prefix recognition.** Like vLLM's block hashing, a prompt is cut into full 16-token blocks and each
block's hash is chained to the previous one. :class:`PrefixIndex` remembers, for each conversation
("phase"), the chained hash of the last full block of its latest prompt; a new prompt whose chain contains
that hash continues the phase, and the matched blocks are its reusable prefix. One entry per phase, so
memory is bounded by the number of conversations, not by their length.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BLOCK_TOKENS", "PrefixIndex", "block_chain", "chat_tokens", "load_tokenizer", "text_tokens"]

BLOCK_TOKENS = 16
_TOKEN_RE = re.compile(r"\n[ \t]*|[^\W\d_]{1,8}|\d{1,3}|[^\w\s]|_")


def text_tokens(text: str) -> list[str]:
    """The simulated tokenizer: a line break with the indentation after it, letters in runs of <= 8,
    digits in runs of <= 3, other symbols singly; other whitespace is free."""
    return _TOKEN_RE.findall(text)


class _HFCounter:
    """Text -> token ids with a local Hugging Face tokenizer (no special tokens added)."""

    def __init__(self, encode: Callable[[str], list[int]], name: str) -> None:
        self._encode = encode
        self.name = name

    def __call__(self, text: str) -> list[int]:
        return self._encode(text) if text else []


def load_tokenizer(path: str | os.PathLike) -> Callable[[str], list[int]]:
    """A prompt counter (text -> token ids) from a local Hugging Face tokenizer: ``path`` is a
    ``tokenizer.json`` file or a directory holding one (read with the ``tokenizers`` package), or a
    directory that ``transformers.AutoTokenizer`` loads with ``local_files_only=True``. Nothing is
    downloaded. Raises :class:`~agentperf_kit.errors.ConfigError` for a missing path or package."""
    from ..errors import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"tokenizer path {str(p)!r} does not exist; give a tokenizer.json or its directory")
    file = p / "tokenizer.json" if p.is_dir() else p
    if file.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            pass  # fall through to transformers below
        else:
            try:
                tok = Tokenizer.from_file(str(file))
            except Exception as exc:  # the library raises a plain Exception for a malformed file
                raise ConfigError(f"cannot read tokenizer {str(file)!r}: {exc}") from None
            return _HFCounter(lambda t: tok.encode(t, add_special_tokens=False).ids, f"tokenizer {file}")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            f"counting prompt tokens with {str(p)!r} needs a Hugging Face tokenizer library: "
            "pip install tokenizers (for a tokenizer.json) or pip install transformers"
        ) from None
    try:
        hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/... for a directory it cannot load
        raise ConfigError(f"cannot load a tokenizer from {str(p)!r}: {exc}") from None
    return _HFCounter(lambda t: hf.encode(t, add_special_tokens=False), f"tokenizer {p}")


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
