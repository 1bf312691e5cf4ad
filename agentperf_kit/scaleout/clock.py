"""One clock for a run whose agents live in several processes (possibly on several hosts).

Every time in ``requests.parquet`` is seconds since the run's origin on the driver's ``perf_counter_ns``
(``CLOCK_MONOTONIC`` on Linux). A worker stamps its rows with its own ``perf_counter_ns`` minus an origin
the driver gives it, chosen so that its stamps read the run's clock:

- **one host** (the worker's kernel boot id equals the driver's): the processes share ``CLOCK_MONOTONIC``
  and the worker gets the driver's origin unchanged. The offset is still measured (below) and recorded,
  as a check: it must be within its own uncertainty of zero.
- **another host**: the worker's origin is the driver's plus the measured offset.

**Offset measurement** (:func:`measure_offset`, the min-RTT method of NTP/Cristian): ``rounds`` times,
read the driver clock (``t0``), ask the worker for its clock (``w``), read the driver clock again (``t1``);
the sample with the smallest round trip ``t1 - t0`` gives ``offset = w - (t0 + t1) / 2`` with uncertainty
``(t1 - t0) / 2`` (the worker read its clock somewhere within the round trip). It is measured at the start
and at the end of a level; the difference is the drift over the level.

What an offset error does: TTFT, E2E and output speed are differences of two stamps of the *same* worker,
so an offset error does not enter them; it shifts the worker's requests against the window's bounds and
against other workers' requests (in-flight counts, the window's start and end). Rows are corrected for
the measured drift (linearly over the level) when it exceeds the uncertainty, and the run is flagged
(``client_ok`` false, a reason in ``client_check``) when a worker's offset uncertainty or drift exceeds
the client budget (``lag_budget_s``, 5 ms by default: the same budget as the event-loop lag and send
delay, and small against the tightest TTFT tiers in use).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClockOffset", "measure_offset"]


@dataclass(frozen=True)
class ClockOffset:
    """A worker's clock minus the driver's, in seconds, with its uncertainty (half the best round trip)
    and when it was measured (driver clock, ``perf_counter_ns``)."""

    offset_s: float
    uncertainty_s: float
    rtt_min_s: float
    rounds: int
    at_ns: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "offset_s": self.offset_s,
            "uncertainty_s": self.uncertainty_s,
            "rtt_min_s": self.rtt_min_s,
            "rounds": self.rounds,
        }


def measure_offset(remote_clock_ns: Callable[[], int], rounds: int = 16) -> ClockOffset:
    """The offset of the clock ``remote_clock_ns()`` reads (a blocking call that returns the worker's
    ``perf_counter_ns``) against this process's ``perf_counter_ns``, by the min-RTT method (module
    docstring)."""
    best: tuple[int, int, int] | None = None
    for _ in range(max(1, rounds)):
        t0 = time.perf_counter_ns()
        w = remote_clock_ns()
        t1 = time.perf_counter_ns()
        if best is None or t1 - t0 < best[1] - best[0]:
            best = (t0, t1, w)
    assert best is not None
    t0, t1, w = best
    return ClockOffset(
        offset_s=(w - (t0 + t1) / 2) / 1e9,
        uncertainty_s=(t1 - t0) / 2e9,
        rtt_min_s=(t1 - t0) / 1e9,
        rounds=max(1, rounds),
        at_ns=(t0 + t1) // 2,
    )
