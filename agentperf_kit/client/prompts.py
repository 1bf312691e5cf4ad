"""Prompt materialization: what the server sees for a turn.

Turns with recorded ``messages`` are sent as recorded, with the phase marker line put in front (as the
first system message), so the prefix structure of the recording is kept.

Token-count-only turns (synthetic, Mooncake) become prompts of the target size whose beginning is exactly
the previous turn's prompt of the same phase, so the server's prefix cache behaves as in production:

- ``token_ids`` (``/v1/completions``): the phase's token stream is a deterministic function of the phase
  marker (the marker's ``MARKER_TOKENS`` ids, then one shared random stream of ids over
  ``token_id_range``, :data:`STREAM_LEN` long and read cyclically from an offset drawn from the marker):
  turn k sends its first ``input_tokens + marker`` ids, and since the stream does not depend on the
  length asked for, turn k's prompt starts with turn k-1's. Exact sizes; nothing stored per phase. (The
  marker at the very start keeps phases apart in a prefix cache, although their later ids are windows of
  the same stream.)
- ``text`` (chat): the same idea with words from a fixed list of common short English words (a marker line,
  then the phase's deterministic word stream; turn k sends a longer prefix of the same stream). How many
  tokens a word costs depends on the model's tokenizer, and the chat template adds tokens of its own, so a
  live run first measures both on the server (:func:`chat_probe_messages`: two prompts of known word
  counts, read back from ``usage.prompt_tokens``: ``tokens_per_word`` and ``overhead_tokens``), then asks
  for ``(target - overhead) / tokens_per_word`` words. The run reports the deviation from
  ``usage.prompt_tokens``.

Sending them: :func:`completion_prompt_json` and :func:`chat_filler_json` give the same prompts as JSON text
directly (no Python list of ids or words, no ``json.dumps``): the shared streams are kept with their JSON
text, so a prompt is a copy of a slice of it. At the AA shape (~26K-token prompts) that is a few
hundredths of a millisecond per request instead of ~3 ms, time the event loop is blocked before every
send. The id text right-aligns every id to the widest id's digits with leading spaces (JSON whitespace),
so every id takes the same bytes: same ids, a few more bytes.
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
    "prepare_streams",
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


# The random part of every prompt is a window of one shared stream of STREAM_LEN ids (or words), read
# cyclically from an offset drawn from the phase marker: a longer prompt of the phase reads further from
# the same offset, so it starts with the shorter one. The stream is made once per run (fixed seed) with its
# JSON text, so a prompt's text is a copy of a slice, not a per-request draw and encoding.
STREAM_LEN = 1 << 18
_STREAM_SEED = 0x5EED_F111E5


def _offset(marker: str) -> int:
    return _seed(marker) % STREAM_LEN


def _cyclic(buf: Any, start: int, stop: int, period: int) -> list[Any]:
    """Pieces of ``buf`` (one period long, repeated) from ``start`` to ``stop`` (``stop`` may pass the
    end, several times)."""
    pieces = []
    while stop > period:
        pieces.append(buf[start:period])
        start, stop = 0, stop - period
    pieces.append(buf[start:stop])
    return pieces


@functools.lru_cache(maxsize=4)
def _id_stream(lo: int, hi: int) -> tuple[np.ndarray, bytes, int]:
    """The shared id stream over ``[lo, hi)``, its JSON text (``id,`` per id, right-aligned to the widest
    id with leading spaces, so every id takes ``width`` bytes) and that width."""
    ids = np.random.Generator(np.random.PCG64(_STREAM_SEED)).integers(lo, hi, size=STREAM_LEN)
    width = len(str(hi - 1)) + 1
    table = np.array([f"{i:>{width - 1}},".encode() for i in range(lo, hi)], dtype=f"S{width}")
    return ids, table[ids - lo].tobytes(), width


def _marker_ids(marker: str, lo: int, hi: int) -> list[int]:
    return [lo + (int(d) * 37 + i * 11) % (hi - lo) for i, d in enumerate(marker[:MARKER_TOKENS])]


def phase_token_ids(marker: str, n: int, token_id_range: tuple[int, int] = (100, 4000)) -> list[int]:
    """The first ``n`` token ids of the phase whose marker is ``marker`` (32 digits)."""
    lo, hi = token_id_range
    head = _marker_ids(marker, lo, hi)
    if n <= len(head):
        return head[:n]
    ids = _id_stream(lo, hi)[0]
    start = _offset(marker)
    rest = _cyclic(ids, start, start + n - len(head), STREAM_LEN)
    return head + np.concatenate(rest).tolist()


def completion_prompt_json(plan: RequestPlan, *, token_id_range: tuple[int, int] = (100, 4000)) -> bytes:
    """:func:`completion_prompt` as JSON array text (``json.loads`` gives the same list); ids padded with
    leading spaces to one width."""
    lo, hi = token_id_range
    n = plan.turn.input_tokens + MARKER_TOKENS
    head = _marker_ids(plan.marker, lo, hi)
    if n <= len(head):
        return ("[" + ",".join(map(str, head[:n])) + "]").encode()
    _, text, width = _id_stream(lo, hi)
    start = _offset(plan.marker) * width
    rest = _cyclic(memoryview(text), start, start + (n - len(head)) * width - 1, len(text))  # no last ","
    return b"".join([b"[", ",".join(map(str, head)).encode(), b",", *rest, b"]"])


def completion_prompt(plan: RequestPlan, *, token_id_range: tuple[int, int] = (100, 4000)) -> list[int]:
    """Token-id prompt of ``turn.input_tokens + MARKER_TOKENS`` ids for ``/v1/completions``."""
    return phase_token_ids(plan.marker, plan.turn.input_tokens + MARKER_TOKENS, token_id_range)


@functools.cache
def _word_stream() -> tuple[bytes, np.ndarray]:
    """The shared word stream as text (``word `` after word) and where each word starts (STREAM_LEN + 1
    offsets, the last one the text's length)."""
    idx = np.random.Generator(np.random.PCG64(_STREAM_SEED)).integers(0, len(_WORDS), size=STREAM_LEN)
    words = [w.encode() + b" " for w in _WORDS]
    lengths = np.array([len(w) for w in words], dtype=np.int64)[idx]
    starts = np.zeros(STREAM_LEN + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return b"".join([words[i] for i in idx.tolist()]), starts


def _words_bytes(marker: str, n_words: int) -> list[Any]:
    """Pieces of the phase's first ``n_words`` filler words, space-separated (no trailing space)."""
    text, starts = _word_stream()
    o = _offset(marker)
    cycles, end = divmod(o + n_words, STREAM_LEN)
    stop = cycles * len(text) + int(starts[end]) - 1  # drop the space after the last word
    return _cyclic(memoryview(text), int(starts[o]), stop, len(text))


def prepare_streams(*, chat: bool, token_id_range: tuple[int, int] = (100, 4000)) -> None:
    """Build the shared stream (and its text) that chat filler (``chat``) or token-id prompts read."""
    if chat:
        _word_stream()
    else:
        _id_stream(*token_id_range)


def _text(marker: str, n_words: int) -> str:
    return b"".join(_words_bytes(marker, n_words)).decode("ascii")


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


def chat_filler_json(
    plan: RequestPlan, *, tokens_per_word: float = 1.0, overhead_tokens: float | None = None
) -> bytes | None:
    """:func:`chat_messages` of a token-count-only turn as JSON text (``json.loads`` gives the same list),
    or None for a turn with recorded ``messages``."""
    if plan.turn.messages is not None:
        return None
    words = _words_bytes(plan.marker, _filler_words(plan, tokens_per_word, overhead_tokens))
    # markers are digits and the words ASCII letters: nothing to escape but the newline
    head = b'[{"role":"user","content":"namespace: ' + plan.marker.encode() + b"\\n"
    return b"".join([head, *words, b'"}]'])


def _filler(marker: str, n_words: int) -> str:
    return f"namespace: {marker}\n" + _text(marker, n_words)


def chat_probe_messages(marker: str, n_words: int) -> list[dict[str, Any]]:
    """A probe prompt shaped like a filler turn (its own marker, ``n_words`` words), for measuring how
    many tokens the server counts for it."""
    return [{"role": "user", "content": _filler(marker, n_words)}]
