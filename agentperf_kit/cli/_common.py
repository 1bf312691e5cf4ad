"""What ``run`` and ``sweep`` share: typed flag parsers (type and range checked while parsing, so a bad
value is one line and exit 2 before anything runs) and the checks that turn library exceptions from a
user's input into :class:`~agentperf_kit.errors.AgentperfError`."""

from __future__ import annotations

import argparse
import gzip
import math
import zlib
from collections.abc import Callable
from typing import Any

from ..errors import AgentperfError, ConfigError, InputFormatError

__all__ = [
    "count",
    "load_trajectory_set",
    "nonneg_float",
    "positive_float",
    "positive_int",
]


def _number(kind: type, lo: float, inclusive: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if v < lo or (v == lo and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {lo:g}, got {text}")
        return v

    parse.__name__ = f"{kind.__name__}{'>=' if inclusive else '>'}{lo:g}"
    return parse


positive_int = _number(int, 1, True)  # >= 1
count = _number(int, 0, True)  # >= 0
positive_float = _number(float, 0.0, False)  # > 0
nonneg_float = _number(float, 0.0, True)  # >= 0


def as_error(exc: BaseException) -> AgentperfError:
    """A library exception caused by the user's input as an :class:`AgentperfError` (itself when it is
    one): a missing or unreadable file is an :class:`InputFormatError`, a bad value a :class:`ConfigError`."""
    if isinstance(exc, AgentperfError):
        return exc
    if isinstance(exc, KeyError):
        return ConfigError(str(exc.args[0]) if exc.args else "unknown name")
    if isinstance(exc, OSError):
        return InputFormatError(str(exc))
    return ConfigError(str(exc))


def load_trajectory_set(path: str | None, max_context: int | None) -> list:
    """The trajectory set of a run or sweep (the built-in set when ``path`` is None), fitted to
    ``max_context`` tokens; any problem with the file or the fit is an AgentperfError naming it."""
    from ..trajectories import default_trajectories, fit_context, load_trajectories

    try:
        trajs = load_trajectories(path) if path else default_trajectories()
    except AgentperfError:
        raise
    except FileNotFoundError as exc:
        raise InputFormatError(f"trajectories: {exc}") from None
    except IsADirectoryError:
        raise InputFormatError(
            f"trajectories {path} is a directory; give a .jsonl, .jsonl.gz or .parquet file"
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputFormatError(
            f"trajectories {path}: the compressed file is truncated or corrupt ({exc}); write it again"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputFormatError(f"trajectories {path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputFormatError(f"trajectories {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. a parquet file cut short
        raise InputFormatError(f"trajectories {path}: cannot read it ({exc})") from None
    if not trajs:
        raise InputFormatError(
            f"trajectories {path}: the file holds no trajectory (a header only?); a run needs at least one"
        )
    if max_context is not None:
        try:
            trajs = fit_context(trajs, max_context)
        except ValueError as exc:
            raise ConfigError(f"max_context {max_context}: {exc}") from None
    return trajs
