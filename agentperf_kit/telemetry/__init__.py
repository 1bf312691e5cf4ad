"""Telemetry of live runs: the server's Prometheus ``/metrics`` and measured accelerator power.

See ``docs/telemetry.md``. :class:`TelemetryConfig` says what to sample; :func:`agentperf_kit.replay.run_live`
runs a :class:`TelemetrySampler` on its clock when given one, writes ``telemetry.parquet`` and puts the
summary (and, with a power source, ``power_w`` with ``power_scope = "measured"``) in the manifest.
"""

from .power import (
    AmdSmiPower,
    DcgmPower,
    NvmlPower,
    PowerReading,
    PowerSource,
    PowerSourceUnavailable,
    parse_gpu_indices,
    parse_power_source,
)
from .prometheus import (
    ENGINE_SERIES,
    PrometheusParseError,
    PrometheusText,
    Sample,
    parse_prometheus_text,
    server_metrics,
)
from .sampler import (
    TELEMETRY_COLUMNS,
    TelemetryConfig,
    TelemetrySampler,
    derive_metrics_url,
    load_telemetry,
    summarize_telemetry,
)

__all__ = [
    "ENGINE_SERIES",
    "TELEMETRY_COLUMNS",
    "AmdSmiPower",
    "DcgmPower",
    "NvmlPower",
    "PowerReading",
    "PowerSource",
    "PowerSourceUnavailable",
    "PrometheusParseError",
    "PrometheusText",
    "Sample",
    "TelemetryConfig",
    "TelemetrySampler",
    "derive_metrics_url",
    "load_telemetry",
    "parse_gpu_indices",
    "parse_power_source",
    "parse_prometheus_text",
    "server_metrics",
    "summarize_telemetry",
]
