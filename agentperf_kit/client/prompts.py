"""Prompt materialization: what the server sees for a turn.

Turns with recorded ``messages`` are sent as recorded, with the phase marker line put in front (as the
first system message), so the prefix structure of the recording is kept.

Token-count-only turns (synthetic, Mooncake) become prompts of the target size whose beginning is exactly
the previous turn's prompt of the same phase, so the server's prefix cache behaves as in production:

- ``token_ids`` (``/v1/completions``): the phase's token stream is a deterministic function of the phase
  marker (a seeded generator over ``token_id_range``): turn k sends its first ``input_tokens + marker``
  ids, and since the stream does not depend on the length asked for, turn k's prompt starts with turn
  k-1's. The first ``MARKER_TOKENS`` ids encode the marker. Exact sizes; nothing stored per phase.
- ``text`` (chat): the same idea with words from a fixed list of common short English words (a marker line,
  then the phase's deterministic word stream; turn k sends a longer prefix of the same stream). How many
  tokens a word costs depends on the model's tokenizer, and the chat template adds tokens of its own, so a
  live run first measures both on the server (:func:`chat_probe_messages`: two prompts of known word
  counts, read back from ``usage.prompt_tokens``: ``tokens_per_word`` and ``overhead_tokens``), then asks
  for ``(target - overhead) / tokens_per_word`` words. The run reports the deviation from
  ``usage.prompt_tokens``.

Sending them: :func:`completion_prompt_json` and :func:`chat_filler_json` give the same prompts as JSON text
directly (no Python list of ids or words, no ``json.dumps``): one gather from a table of pre-encoded ids or
words. At the AA shape (~26K-token prompts) that is ~0.2 ms per request instead of ~3 ms, time the event
loop is blocked before every send. The id table right-aligns every id to the widest id's digits with
leading spaces (JSON whitespace), so the array text is a fixed-width gather: same ids, a few more bytes.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..agents import RequestPlan

__all__ = [
    "MARKER_TOKENS",
    "chat_filler_json",
    "chat_messages",
    "chat_probe_messages",
    "completion_prompt",
    "completion_prompt_json",
    "phase_token_ids",
]

MARKER_TOKENS = 16
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
]


def _seed(marker: str) -> int:
    return int(marker) % (2**63)


def phase_token_ids(marker: str, n: int, token_id_range: tuple[int, int] = (100, 4000)) -> list[int]:
    """The first ``n`` token ids of the phase whose marker is ``marker`` (32 digits)."""
    return _phase_ids(marker, n, token_id_range).tolist()


def _phase_ids(marker: str, n: int, token_id_range: tuple[int, int]) -> np.ndarray:
    lo, hi = token_id_range
    head = [lo + (int(d) * 37 + i * 11) % (hi - lo) for i, d in enumerate(marker[:MARKER_TOKENS])]
    if n <= len(head):
        return np.array(head[:n], dtype=np.int64)
    rest = np.random.Generator(np.random.PCG64(_seed(marker))).integers(lo, hi, size=n - len(head))
    return np.concatenate([np.array(head, dtype=np.int64), rest])


@functools.lru_cache(maxsize=4)
def _id_table(lo: int, hi: int) -> np.ndarray:
    """``id,`` for every id in ``[lo, hi)``, right-aligned to the widest id (leading spaces), as ``S<w>``."""
    width = len(str(hi - 1))
    return np.array([f"{i:>{width}},".encode() for i in range(lo, hi)], dtype=f"S{width + 1}")


def completion_prompt_json(plan: RequestPlan, *, token_id_range: tuple[int, int] = (100, 4000)) -> bytes:
    """:func:`completion_prompt` as JSON array text (``json.loads`` gives the same list); ids padded with
    leading spaces to one width."""
    lo, hi = token_id_range
    ids = _phase_ids(plan.marker, plan.turn.input_tokens + MARKER_TOKENS, token_id_range)
    text = _id_table(lo, hi)[ids - lo].tobytes()
    return b"".join((b"[", memoryview(text)[:-1], b"]"))


def completion_prompt(plan: RequestPlan, *, token_id_range: tuple[int, int] = (100, 4000)) -> list[int]:
    """Token-id prompt of ``turn.input_tokens + MARKER_TOKENS`` ids for ``/v1/completions``."""
    return phase_token_ids(plan.marker, plan.turn.input_tokens + MARKER_TOKENS, token_id_range)


def _text(marker: str, n_words: int) -> str:
    idx = np.random.Generator(np.random.PCG64(_seed(marker))).integers(0, len(_WORDS), size=n_words)
    words = _WORDS
    return " ".join(words[i] for i in idx)


def chat_messages(
    plan: RequestPlan, *, tokens_per_word: float = 1.0, overhead_tokens: float | None = None
) -> list[dict[str, Any]]:
    """Chat ``messages`` for a turn: recorded ones with the marker in front, or filler text.

    Filler size: with ``overhead_tokens`` (measured: template + marker line), ``(input_tokens + MARKER_TOKENS
    - overhead_tokens) / tokens_per_word`` words, so that the server counts ``input_tokens +
    MARKER_TOKENS``; without it, ``input_tokens / tokens_per_word`` words.
    """
    marker_line = f"namespace: {plan.marker}"
    turn = plan.turn
    if turn.messages is not None:
        return [{"role": "system", "content": marker_line}, *turn.messages]
    return [
        {
            "role": "user",
            "content": _filler(plan.marker, _filler_words(plan, tokens_per_word, overhead_tokens)),
        }
    ]


def _filler_words(plan: RequestPlan, tokens_per_word: float, overhead_tokens: float | None) -> int:
    turn = plan.turn
    if overhead_tokens is None:
        return max(1, round(turn.input_tokens / tokens_per_word))
    return max(1, round((turn.input_tokens + MARKER_TOKENS - overhead_tokens) / tokens_per_word))


@functools.cache
def _word_table() -> tuple[np.ndarray, np.ndarray]:
    """Every filler word followed by a space, as rows of a byte table, and which bytes of a row count."""
    words = [w.encode() + b" " for w in _WORDS]
    width = max(map(len, words))
    table = np.zeros((len(words), width), dtype=np.uint8)
    used = np.zeros((len(words), width), dtype=bool)
    for i, w in enumerate(words):
        table[i, : len(w)] = np.frombuffer(w, dtype=np.uint8)
        used[i, : len(w)] = True
    return table, used


def chat_filler_json(
    plan: RequestPlan, *, tokens_per_word: float = 1.0, overhead_tokens: float | None = None
) -> bytes | None:
    """:func:`chat_messages` of a token-count-only turn as JSON text (``json.loads`` gives the same list),
    or None for a turn with recorded ``messages``."""
    if plan.turn.messages is not None:
        return None
    n_words = _filler_words(plan, tokens_per_word, overhead_tokens)
    idx = np.random.Generator(np.random.PCG64(_seed(plan.marker))).integers(0, len(_WORDS), size=n_words)
    table, used = _word_table()
    words = table[idx][used[idx]].tobytes()  # markers are digits and the words ASCII letters: no escapes
    head = b'[{"role":"user","content":"namespace: ' + plan.marker.encode() + b"\\n"
    return b"".join((head, memoryview(words)[:-1], b'"}]'))


def _filler(marker: str, n_words: int) -> str:
    return f"namespace: {marker}\n" + _text(marker, n_words)


def chat_probe_messages(marker: str, n_words: int) -> list[dict[str, Any]]:
    """A probe prompt shaped like a filler turn (its own marker, ``n_words`` words), for measuring how
    many tokens the server counts for it."""
    return [{"role": "user", "content": _filler(marker, n_words)}]
