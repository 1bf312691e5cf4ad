"""Prometheus text exposition for the simulated server: gauges, counters and vLLM's latency histograms.

:class:`Histogram` keeps cumulative bucket counts, a sum and a count, rendered as ``NAME_bucket{le=...}``,
``NAME_sum`` and ``NAME_count`` lines (Prometheus text format 0.0.4). Bucket bounds are vLLM's, so
dashboards and ``histogram_quantile`` queries written for vLLM read the simulator unchanged.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["E2E_BUCKETS", "ITL_BUCKETS", "TTFT_BUCKETS", "Histogram", "render_scalar"]

# vLLM's bucket bounds (seconds), vllm/v1/metrics/loggers.py
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class Histogram:
    """A Prometheus histogram of values in seconds with upper bounds ``buckets`` (``+Inf`` added)."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``value`` (seconds) ``times`` times."""
        self._counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def render(self, labels: str) -> list[str]:
        """Lines of the exposition; ``labels`` is the inside of the braces, e.g. ``model_name="m"``."""
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            acc += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{self.name}_bucket{{{labels},le="{le}"}} {float(acc)!r}')
        lines.append(f"{self.name}_sum{{{labels}}} {self.sum!r}")
        lines.append(f"{self.name}_count{{{labels}}} {float(self.count)!r}")
        return lines


def render_scalar(name: str, kind: str, doc: str, labels: str, value: float) -> list[str]:
    """The three lines of a gauge or counter."""
    return [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {float(value)!r}"]
