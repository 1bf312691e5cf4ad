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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..agents import RequestPlan

__all__ = ["MARKER_TOKENS", "chat_messages", "chat_probe_messages", "completion_prompt", "phase_token_ids"]

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
    lo, hi = token_id_range
    head = [lo + (int(d) * 37 + i * 11) % (hi - lo) for i, d in enumerate(marker[:MARKER_TOKENS])]
    if n <= len(head):
        return head[:n]
    rest = np.random.Generator(np.random.PCG64(_seed(marker))).integers(lo, hi, size=n - len(head))
    return head + rest.tolist()


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
    if overhead_tokens is None:
        n_words = max(1, round(turn.input_tokens / tokens_per_word))
    else:
        n_words = max(1, round((turn.input_tokens + MARKER_TOKENS - overhead_tokens) / tokens_per_word))
    return [{"role": "user", "content": _filler(plan.marker, n_words)}]


def _filler(marker: str, n_words: int) -> str:
    return f"namespace: {marker}\n" + _text(marker, n_words)


def chat_probe_messages(marker: str, n_words: int) -> list[dict[str, Any]]:
    """A probe prompt shaped like a filler turn (its own marker, ``n_words`` words), for measuring how
    many tokens the server counts for it."""
    return [{"role": "user", "content": _filler(marker, n_words)}]
