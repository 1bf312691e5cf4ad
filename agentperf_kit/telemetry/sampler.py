"""The telemetry sampler of a live run: server ``/metrics`` and accelerator power, on the run's clock.

:class:`TelemetrySampler` runs beside the agents of :func:`agentperf_kit.replay.run_live`. Every
``interval_s`` (default 1 s, ticks at k x interval on the run's clock, a tick missed while a slow read is
still running is skipped) each source is read once:

- ``metrics``: the target server's Prometheus ``/metrics`` (URL derived from the base URL by stripping
  ``/v1``, or set), fetched with the sampler's own small aiohttp session (4 connections, ``timeout_s``):
  the run's connection pool and its connection-wait self-check are untouched.
- the power source (``nvml``, ``amdsmi``: blocking library calls in a one-thread executor, never on the
  event loop; ``dcgm``: HTTP like ``metrics``).

Each read is one row (``source``, ``t_s`` = midpoint of the read in seconds since the run's clock origin,
the same clock as ``requests.parquet``). A failed read (HTTP error, timeout, garbage, library error) is a
row with ``ok = False`` and a ``note``: a gap, never an exception in the run. Rows are appended to
``telemetry.jsonl`` as they come (a killed run keeps what was sampled; :func:`load_telemetry` reads it),
and :meth:`TelemetrySampler.finalize` writes ``telemetry.parquet`` and returns the summary for the
manifest (mean power and energy over the steady window, queue and KV statistics). Columns:
:data:`TELEMETRY_COLUMNS` and ``docs/schema.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import aiohttp

from .power import PowerReading, PowerSource, PowerSourceUnavailable, parse_power_source
from .prometheus import PrometheusParseError, known_series_names, parse_prometheus_text, server_metrics

__all__ = [
    "TELEMETRY_COLUMNS",
    "TelemetryConfig",
    "TelemetrySampler",
    "derive_metrics_url",
    "load_telemetry",
    "summarize_telemetry",
]

TELEMETRY_JSONL = "telemetry.jsonl"
TELEMETRY_PARQUET = "telemetry.parquet"

#: column -> (dtype, unit, meaning); the order of ``telemetry.parquet``.
TELEMETRY_COLUMNS: dict[str, tuple[str, str, str]] = {
    "source": ("string", "-", "metrics (server /metrics), nvml, amdsmi or dcgm"),
    "t_s": ("float64", "s", "midpoint of the read, seconds since the run's clock origin"),
    "read_s": ("float64", "s", "how long the read took"),
    "ok": ("bool", "-", "the read succeeded; False = a gap (see note)"),
    "note": ("string", "-", "why a read failed (or a counter reset); empty when ok"),
    "engine": ("string", "-", "metrics: vllm, sglang or llamacpp (whose series were found)"),
    "running": ("float64", "requests", "metrics: requests running on the server (summed over engines)"),
    "waiting": ("float64", "requests", "metrics: requests queued on the server"),
    "kv_usage": ("float64", "fraction", "metrics: KV cache in use, 0-1 (mean over engines)"),
    "prefix_queries_delta": ("float64", "tokens", "metrics: prefix-cache queries since the previous read"),
    "prefix_hits_delta": ("float64", "tokens", "metrics: prefix-cache hits since the previous read"),
    "prefix_hit_rate": (
        "float64",
        "fraction",
        "metrics: hits/queries over the interval (counter deltas), else the server's hit-rate gauge",
    ),
    "power_w": ("float64", "W", "power: summed instantaneous power of the selected accelerators"),
    "energy_j": ("float64", "J", "power: summed energy counters since the source's first read"),
    "power_from_energy_w": ("float64", "W", "power: energy delta / time since the previous read"),
    "n_devices": ("Int64", "accelerators", "power: accelerators summed"),
    "raw": ("string", "-", "JSON: raw series of the read (metric{labels} -> value, or device -> W)"),
}


def derive_metrics_url(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000/metrics`` (vLLM, SGLang and llama.cpp serve it on the
    API port)."""
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base + "/metrics"


@dataclass(frozen=True)
class TelemetryConfig:
    """What to sample during a live run.

    Attributes:
        interval_s: seconds between reads of each source.
        scrape_metrics: read the server's Prometheus ``/metrics``.
        metrics_url: where; default: the base URL without ``/v1``, plus ``/metrics``.
        power: ``"nvml"``, ``"amdsmi"``, ``"dcgm:URL[,URL]"``, ``"none"``/None, or a
            :class:`~agentperf_kit.telemetry.power.PowerSource` (tests inject fakes this way).
        gpu_indices: accelerators to sum (None: all the source sees).
        timeout_s: limit on one read.
    """

    interval_s: float = 1.0
    scrape_metrics: bool = True
    metrics_url: str | None = None
    power: Any = None
    gpu_indices: Sequence[int] | None = None
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"telemetry interval_s must be > 0 seconds, got {self.interval_s!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"telemetry timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        if isinstance(self.power, str):
            parse_power_source(self.power, self.gpu_indices)  # validates the spec early

    @property
    def active(self) -> bool:
        return self.scrape_metrics or self.power_spec != "none"

    @property
    def power_spec(self) -> str:
        if self.power is None:
            return "none"
        if isinstance(self.power, PowerSource):
            return self.power.kind
        return self.power

    def public_dict(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "scrape_metrics": self.scrape_metrics,
            "metrics_url": self.metrics_url,
            "power_source": self.power_spec,
            "gpu_indices": list(self.gpu_indices) if self.gpu_indices is not None else None,
            "timeout_s": self.timeout_s,
        }


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class TelemetrySampler:
    """Samples the configured sources on a run's clock; use ``await start()`` ... ``await stop()``,
    then :meth:`finalize`.

    ``now`` returns seconds since the run's clock origin (default: since the sampler was made);
    ``base_url`` is the target (for the derived ``/metrics`` URL); ``headers`` go with the metrics scrape
    (same origin as the API); ``secrets`` are removed from notes.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        now: Callable[[], float] | None = None,
        base_url: str | None = None,
        out_dir: str | os.PathLike | None = None,
        headers: dict[str, str] | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.config = config
        if now is None:
            t0 = time.perf_counter()
            now = lambda: time.perf_counter() - t0  # noqa: E731
        self.now = now
        self.metrics_url = config.metrics_url or (derive_metrics_url(base_url) if base_url else None)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # the API's headers (a key) go only to a /metrics URL of the same origin as the API
        same = config.metrics_url is None or (
            base_url is not None and _origin(config.metrics_url) == _origin(base_url)
        )
        self.headers = dict(headers or {}) if same else {}
        self.secrets = tuple(s for s in secrets if s)
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.sources: list[dict[str, Any]] = []
        self.power: PowerSource | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._fh: TextIO | None = None
        self._t_start = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> TelemetrySampler:
        """Start sampling (returns at once: a power library is opened in the executor by the power task,
        so a slow ``nvmlInit`` never delays the run's first requests)."""
        import aiohttp

        cfg = self.config
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.out_dir / TELEMETRY_JSONL, "a", encoding="utf-8")  # noqa: SIM115
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
        )
        self._t_start = self.now()
        if cfg.scrape_metrics and self.metrics_url:
            self.sources.append({"kind": "metrics", "url": self.metrics_url})
            self._tasks.append(asyncio.create_task(self._loop("metrics", self._read_metrics)))
        elif cfg.scrape_metrics:
            self.notes.append("metrics not scraped: no base URL or metrics_url given")
        try:
            power = parse_power_source(cfg.power, cfg.gpu_indices)
        except ValueError as exc:
            self.notes.append(str(exc))
            power = None
        if power is not None:
            self._tasks.append(asyncio.create_task(self._power_task(power)))
        return self

    async def _power_task(self, power: PowerSource) -> None:
        if power.blocking:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentperf-power")
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, power.open_blocking)
            except PowerSourceUnavailable as exc:
                self.notes.append(f"power not measured: {exc}")
                return
            except Exception as exc:  # an unexpected library failure is a note, not a crashed run
                self.notes.append(f"power not measured: {power.kind}: {type(exc).__name__}: {exc}")
                return
        self.power = power
        self.sources.append(power.describe())
        await self._loop(power.kind, self._read_power)

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._executor is not None:
            if self.power is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self.power.close_blocking)
            self._executor.shutdown(wait=False)
            self._executor = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def __aenter__(self) -> TelemetrySampler:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- reading --------------------------------------------------------------------------------------

    async def _loop(self, source: str, read: Callable[[dict[str, Any]], Any]) -> None:
        interval = self.config.interval_s
        state: dict[str, Any] = {}
        k = 0
        while not self._stop.is_set():
            delay = self._t_start + k * interval - self.now()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break  # stopped while waiting
                except TimeoutError:
                    pass
            t0 = self.now()
            row: dict[str, Any] = {"source": source, "ok": True, "note": ""}
            try:
                row.update(await read(state))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                row["ok"] = False
                row["note"] = self._scrub(_describe_error(exc))
            t1 = self.now()
            row["t_s"] = (t0 + t1) / 2
            row["read_s"] = t1 - t0
            self._emit(row)
            k = max(k + 1, math.floor((self.now() - self._t_start) / interval) + 1)

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text[:300]

    def _emit(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._fh is not None:
            self._fh.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")
            self._fh.flush()

    async def _read_metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None and self.metrics_url is not None, "only polled with a metrics URL"
        async with asyncio.timeout(self.config.timeout_s):
            async with self._session.get(self.metrics_url, headers=self.headers) as resp:
                body = await resp.text(errors="replace")
                if resp.status != 200:
                    raise _Gap(f"HTTP {resp.status} from {self.metrics_url}: {body[:120]!r}")
        try:
            page = parse_prometheus_text(body, names=known_series_names())
        except PrometheusParseError as exc:
            raise _Gap(f"unparseable /metrics: {exc}") from None
        m = server_metrics(page)
        if m["engine"] is None:
            raise _Gap(
                f"no known vLLM/SGLang/llama.cpp series in {self.metrics_url} ({len(body)} bytes; "
                "is the server's metrics endpoint enabled?)"
            )
        out = {k: m[k] for k in ("engine", "running", "waiting", "kv_usage")}
        out["raw"] = json.dumps(m["raw"], sort_keys=True)
        q, h = m["prefix_queries"], m["prefix_hits"]
        out["prefix_hit_rate"] = m["prefix_hit_rate_gauge"]
        if math.isfinite(q) and math.isfinite(h):
            pq, ph = state.get("q"), state.get("h")
            state["q"], state["h"] = q, h
            if pq is not None:
                dq, dh = q - pq, h - ph
                if dq < 0 or dh < 0:
                    out["note"] = "prefix-cache counters went backwards (server restart?): no delta"
                else:
                    out["prefix_queries_delta"], out["prefix_hits_delta"] = dq, dh
                    out["prefix_hit_rate"] = dh / dq if dq > 0 else math.nan
            else:
                out["prefix_hit_rate"] = math.nan
        return out

    async def _read_power(self, state: dict[str, Any]) -> dict[str, Any]:
        p = self.power
        assert p is not None
        if p.blocking:
            loop = asyncio.get_running_loop()
            reading: PowerReading = await asyncio.wait_for(
                loop.run_in_executor(self._executor, p.read_blocking), self.config.timeout_s
            )
        else:
            assert self._session is not None
            reading = await p.read_http(self._session, self.config.timeout_s)
        t = self.now()
        out: dict[str, Any] = {
            "power_w": reading.power_w,
            "n_devices": reading.n_devices,
            "raw": json.dumps(reading.per_device, sort_keys=True),
        }
        if reading.energy_j is not None:
            if "e0" not in state:
                state["e0"] = reading.energy_j
            e = reading.energy_j - state["e0"]
            prev = state.get("prev")
            if prev is not None and e < prev[1]:
                out["note"] = "energy counter went backwards (reset?): restarted from this read"
                state["e0"] = reading.energy_j
                e = 0.0
                state["prev"] = None
                prev = None
            out["energy_j"] = e
            if prev is not None and t > prev[0]:
                out["power_from_energy_w"] = (e - prev[1]) / (t - prev[0])
            state["prev"] = (t, e)
        return out

    # -- results --------------------------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """The rows so far as the tidy telemetry table."""
        return _frame(self.rows)

    def finalize(self, window_start_s: float | None, window_end_s: float | None) -> dict[str, Any]:
        """Write ``telemetry.parquet`` (when the sampler has an ``out_dir``) and return the summary."""
        df = self.frame()
        if self.out_dir is not None:
            tmp = self.out_dir / (TELEMETRY_PARQUET + ".tmp")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, self.out_dir / TELEMETRY_PARQUET)
        summary = summarize_telemetry(df, window_start_s, window_end_s)
        summary.update(
            {
                "file": TELEMETRY_PARQUET if self.out_dir is not None else None,
                "config": self.config.public_dict(),
                "sources": self.sources,
                "notes": self.notes + summary.pop("notes"),
            }
        )
        return summary


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return (u.scheme, u.hostname or "", u.port)


class _Gap(Exception):
    """A read that worked at the HTTP level but gave nothing usable (the message is the note)."""


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, _Gap):
        return str(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    data = {}
    for col, (dtype, _, _) in TELEMETRY_COLUMNS.items():
        if dtype == "float64":
            vals = [r.get(col) for r in rows]
            data[col] = pd.Series([math.nan if v is None else float(v) for v in vals], dtype="float64")
        elif dtype == "bool":
            data[col] = pd.Series([bool(r.get(col, False)) for r in rows], dtype="bool")
        elif dtype == "Int64":
            data[col] = pd.Series([r.get(col) for r in rows], dtype="Int64")
        else:
            data[col] = pd.Series([r.get(col) or "" for r in rows], dtype="string")
    return pd.DataFrame(data)


def load_telemetry(directory: str | os.PathLike) -> pd.DataFrame:
    """The telemetry of a run directory: ``telemetry.parquet``, or (interrupted run) the complete rows
    of ``telemetry.jsonl``; an empty table with the columns when the run sampled nothing."""
    directory = Path(directory)
    pq = directory / TELEMETRY_PARQUET
    if pq.exists():
        return pd.read_parquet(pq)
    rows = []
    path = directory / TELEMETRY_JSONL
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
    return _frame(rows)


def summarize_telemetry(
    df: pd.DataFrame, window_start_s: float | None, window_end_s: float | None
) -> dict[str, Any]:
    """Per source, over the steady window [start, end]: reads and gaps; server queue/KV statistics; and
    mean power (W) and energy (J).

    Power: with energy counters, the mean is (E(end) - E(start)) / (end - start), E linearly interpolated
    between reads (clipped to the first and last read); ``power_method = "energy_counter"``. Without
    counters, the mean of the instantaneous readings in the window (``"power_samples"``) and energy =
    mean x window length. None when no read falls in the window.
    """
    notes: list[str] = []
    ws = window_start_s if window_start_s is not None and math.isfinite(window_start_s) else None
    we = window_end_s if window_end_s is not None and math.isfinite(window_end_s) else None
    out: dict[str, Any] = {
        "window_start_s": ws,
        "window_end_s": we,
        "reads": {},
        "gaps": {},
        "metrics": None,
        "power": None,
    }
    if df.empty:
        return out | {"notes": notes}
    lo = ws if ws is not None else -np.inf
    hi = we if we is not None else np.inf
    inw = df["t_s"].between(lo, hi)
    for src, g in df.groupby("source", sort=True):
        out["reads"][str(src)] = int(g["ok"].sum())
        out["gaps"][str(src)] = int((~g["ok"]).sum())
    m = df[(df["source"] == "metrics") & df["ok"] & inw]
    n_metrics_w = int(((df["source"] == "metrics") & inw).sum())
    if n_metrics_w:
        dq = m["prefix_queries_delta"].sum(min_count=1)
        dh = m["prefix_hits_delta"].sum(min_count=1)
        if pd.notna(dq) and dq > 0:
            hit: float | None = float(dh / dq)
        else:
            hit = float(m["prefix_hit_rate"].mean()) if m["prefix_hit_rate"].notna().any() else None
        out["metrics"] = {
            "engine": m["engine"].mode().iloc[0] if len(m) else None,
            "reads_in_window": len(m),
            "gaps_in_window": n_metrics_w - len(m),
            "mean_running": _mean(m["running"]),
            "max_running": _max(m["running"]),
            "mean_waiting": _mean(m["waiting"]),
            "max_waiting": _max(m["waiting"]),
            "mean_kv_usage": _mean(m["kv_usage"]),
            "max_kv_usage": _max(m["kv_usage"]),
            "prefix_hit_rate": hit,
        }
        if n_metrics_w - len(m):
            notes.append(
                f"/metrics: {n_metrics_w - len(m)} of {n_metrics_w} reads in the window failed (gaps; "
                "see the note column of telemetry.parquet)"
            )
    power = df[df["source"].isin(["nvml", "amdsmi", "dcgm"])]
    if len(power):
        src = str(power["source"].iloc[0])
        ok = power[power["ok"]]
        n_in = int(ok["t_s"].between(lo, hi).sum())
        gaps_in = int(((~power["ok"]) & inw[power.index]).sum())
        mean_w = energy = None
        method = None
        span = None
        e_ok = ok[ok["energy_j"].notna()]
        t = e_ok["t_s"].to_numpy()
        e = e_ok["energy_j"].to_numpy()
        if len(e_ok) >= 2 and len(e_ok) == len(ok) and bool(np.all(np.diff(e) >= 0)):
            a = max(ws, t[0]) if ws is not None else t[0]
            b = min(we, t[-1]) if we is not None else t[-1]
            if b > a:
                de = float(np.interp(b, t, e) - np.interp(a, t, e))
                mean_w = de / (b - a)
                method = "energy_counter"
                span = b - a
        if mean_w is None:
            pw = ok.loc[ok["t_s"].between(lo, hi), "power_w"].dropna()
            if len(pw):
                mean_w = float(pw.mean())
                method = "power_samples"
                span = (we - ws) if ws is not None and we is not None else None
        if mean_w is not None:
            length = (we - ws) if ws is not None and we is not None else span
            energy = mean_w * length if length is not None else None
            if span is not None and length and span < 0.9 * length:
                notes.append(
                    f"power: reads cover {span:.1f} s of the {length:.1f} s window; the mean is over the "
                    "covered part"
                )
        else:
            notes.append(f"power ({src}): no successful read in the steady window; power not measured")
        out["power"] = {
            "source": src,
            "mean_power_w": mean_w,
            "energy_j": energy,
            "power_method": method,
            "covered_s": span,
            "reads_in_window": n_in,
            "gaps_in_window": gaps_in,
            "n_devices": int(ok["n_devices"].max()) if len(ok) and ok["n_devices"].notna().any() else None,
            "max_power_w": _max(ok["power_w"]),
        }
    return out | {"notes": notes}


def _mean(s: pd.Series) -> float | None:
    s = s.dropna()
    return float(s.mean()) if len(s) else None


def _max(s: pd.Series) -> float | None:
    s = s.dropna()
    return float(s.max()) if len(s) else None
