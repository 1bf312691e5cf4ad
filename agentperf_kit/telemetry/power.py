"""Accelerator power sources: NVIDIA NVML, AMD SMI, and a DCGM-exporter style Prometheus URL.

Each source reads, for the chosen accelerators, the **summed** instantaneous power (W) and, where the
hardware keeps one, the summed cumulative **energy counter** (J). Energy-counter deltas give the exact
mean power between two reads, whatever happens in between; the instantaneous reading is a sample (NVML's
``nvmlDeviceGetPowerUsage`` is itself averaged over about 1 s on recent GPUs). The sampler prefers energy
deltas when every chosen accelerator has a counter.

- :class:`NvmlPower`: ``pynvml`` (``pip install nvidia-ml-py``), local NVIDIA GPUs.
  ``nvmlDeviceGetPowerUsage`` (mW) and ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver was
  loaded; Volta and newer). The blocking NVML calls run in the sampler's thread executor, never on the
  event loop.
- :class:`AmdSmiPower`: ``amdsmi`` (ROCm's Python package), local AMD GPUs. ``amdsmi_get_power_info``
  (W; key names vary by ROCm version) and ``amdsmi_get_energy_count`` (accumulator x resolution in uJ).
- :class:`DcgmPower`: one or more DCGM-exporter ``/metrics`` URLs (what a user measuring a *remote*
  server uses): ``DCGM_FI_DEV_POWER_USAGE`` (W) summed over GPUs, ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``
  (mJ) when exported.

A source that cannot start (library missing, no GPU, bad index) raises :class:`PowerSourceUnavailable`
with a message that says why and what would fix it; the sampler records it as a note and the run goes on
without measured power.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AmdSmiPower",
    "DcgmPower",
    "NvmlPower",
    "PowerReading",
    "PowerSource",
    "PowerSourceUnavailable",
    "parse_gpu_indices",
    "parse_power_source",
]


class PowerSourceUnavailable(RuntimeError):
    """A power source cannot be used here (the message says why and how to fix it)."""


@dataclass
class PowerReading:
    """One read of a source: summed power (W) and summed cumulative energy (J, None without counters)."""

    power_w: float | None
    energy_j: float | None
    n_devices: int
    per_device: dict[str, float] = field(default_factory=dict)  # device id -> W


class PowerSource:
    """Base class. ``kind`` names the source; ``blocking`` sources are read in a thread executor
    (:meth:`open_blocking` / :meth:`read_blocking` / :meth:`close_blocking`); HTTP sources implement
    :meth:`read_http` with the sampler's session."""

    kind = "power"
    blocking = True

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def open_blocking(self) -> None:  # pragma: no cover - overridden
        pass

    def read_blocking(self) -> PowerReading:  # pragma: no cover - overridden
        raise NotImplementedError

    def close_blocking(self) -> None:
        pass

    async def read_http(self, session: Any, timeout_s: float) -> PowerReading:  # pragma: no cover
        raise NotImplementedError


def _select(handles: Sequence[Any], indices: Sequence[int] | None, what: str) -> list[tuple[int, Any]]:
    if indices is None:
        return list(enumerate(handles))
    bad = [i for i in indices if not 0 <= i < len(handles)]
    if bad:
        raise PowerSourceUnavailable(
            f"{what}: GPU index {bad[0]} does not exist (this machine has {len(handles)}: "
            f"0..{len(handles) - 1}); fix --gpu-indices"
        )
    return [(i, handles[i]) for i in indices]


class NvmlPower(PowerSource):
    """Local NVIDIA GPUs through NVML. ``nvml`` injects an NVML-like module (tests); by default
    ``pynvml`` is imported."""

    kind = "nvml"

    def __init__(self, gpu_indices: Sequence[int] | None = None, *, nvml: Any = None) -> None:
        self.gpu_indices = list(gpu_indices) if gpu_indices is not None else None
        self._nvml = nvml
        self._devices: list[tuple[int, Any]] = []
        self.energy_supported = False
        self.names: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "gpu_indices": [i for i, _ in self._devices] or self.gpu_indices,
            "gpu_names": self.names,
            "energy_counter": self.energy_supported,
        }

    def open_blocking(self) -> None:
        nv = self._nvml
        if nv is None:
            try:
                import pynvml
            except ImportError:
                raise PowerSourceUnavailable(
                    "nvml: pynvml is not installed (pip install nvidia-ml-py); no measured power"
                ) from None
            nv = pynvml
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
            raise PowerSourceUnavailable(
                f"nvml: cannot initialise NVML ({type(exc).__name__}: {exc}); is there an NVIDIA GPU and "
                "driver on this machine? no measured power"
            ) from None
        self._nvml = nv
        try:
            count = nv.nvmlDeviceGetCount()
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            if not handles:
                raise PowerSourceUnavailable("nvml: NVML sees no GPU; no measured power")
            self._devices = _select(handles, self.gpu_indices, "nvml")
            names = []
            for _, h in self._devices:
                try:
                    name = nv.nvmlDeviceGetName(h)
                    names.append(name.decode() if isinstance(name, bytes) else str(name))
                except Exception:
                    names.append("?")
            self.names = names
            supported = True
            for _, h in self._devices:
                try:
                    nv.nvmlDeviceGetTotalEnergyConsumption(h)
                except Exception:
                    supported = False
            self.energy_supported = supported
        except PowerSourceUnavailable:
            self.close_blocking()
            raise

    def read_blocking(self) -> PowerReading:
        nv = self._nvml
        total_w = 0.0
        total_j = 0.0 if self.energy_supported else None
        per: dict[str, float] = {}
        for i, h in self._devices:
            w = nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # mW -> W
            per[f"gpu{i}"] = w
            total_w += w
            if total_j is not None:
                total_j += nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0  # mJ -> J
        return PowerReading(total_w, total_j, len(self._devices), per)

    def close_blocking(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None  # amdsmi reports "N/A" for unsupported fields
    return f if math.isfinite(f) else None


class AmdSmiPower(PowerSource):
    """Local AMD GPUs through ``amdsmi`` (``amdsmi`` injects a module-like object for tests)."""

    kind = "amdsmi"
    _POWER_KEYS = ("average_socket_power", "socket_power", "current_socket_power")

    def __init__(self, gpu_indices: Sequence[int] | None = None, *, amdsmi: Any = None) -> None:
        self.gpu_indices = list(gpu_indices) if gpu_indices is not None else None
        self._amd = amdsmi
        self._devices: list[tuple[int, Any]] = []
        self.energy_supported = False

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "gpu_indices": [i for i, _ in self._devices] or self.gpu_indices,
            "energy_counter": self.energy_supported,
        }

    def open_blocking(self) -> None:
        amd = self._amd
        if amd is None:
            try:
                import amdsmi
            except ImportError:
                raise PowerSourceUnavailable(
                    "amdsmi: the amdsmi package is not installed (it ships with ROCm: "
                    "pip install /opt/rocm/share/amd_smi); no measured power"
                ) from None
            amd = amdsmi
        try:
            amd.amdsmi_init()
            handles = list(amd.amdsmi_get_processor_handles())
        except Exception as exc:
            raise PowerSourceUnavailable(
                f"amdsmi: cannot initialise ({type(exc).__name__}: {exc}); no measured power"
            ) from None
        self._amd = amd
        if not handles:
            self.close_blocking()
            raise PowerSourceUnavailable("amdsmi: no AMD GPU found; no measured power")
        try:
            self._devices = _select(handles, self.gpu_indices, "amdsmi")
        except PowerSourceUnavailable:
            self.close_blocking()
            raise
        self.energy_supported = all(self._energy(h) is not None for _, h in self._devices)

    def _energy(self, h: Any) -> float | None:
        try:
            e = self._amd.amdsmi_get_energy_count(h)
        except Exception:
            return None
        acc = _num(e.get("energy_accumulator", e.get("power")))
        res = _num(e.get("counter_resolution"))
        if acc is None or res is None:
            return None
        return acc * res / 1e6  # uJ -> J

    def read_blocking(self) -> PowerReading:
        total_w = 0.0
        total_j = 0.0 if self.energy_supported else None
        per: dict[str, float] = {}
        for i, h in self._devices:
            info = self._amd.amdsmi_get_power_info(h)
            w = next((v for k in self._POWER_KEYS if (v := _num(info.get(k))) is not None), None)
            if w is None:
                raise RuntimeError(f"amdsmi: GPU {i} reports no socket power ({sorted(info)})")
            per[f"gpu{i}"] = w
            total_w += w
            if total_j is not None:
                e = self._energy(h)
                if e is None:
                    raise RuntimeError(f"amdsmi: GPU {i} energy counter unreadable")
                total_j += e
        return PowerReading(total_w, total_j, len(self._devices), per)

    def close_blocking(self) -> None:
        if self._amd is not None:
            with contextlib.suppress(Exception):
                self._amd.amdsmi_shut_down()


class DcgmPower(PowerSource):
    """One or more DCGM-exporter ``/metrics`` URLs (e.g. ``http://node:9400/metrics``).

    Sums ``DCGM_FI_DEV_POWER_USAGE`` (W) over the GPUs (``gpu`` label, filtered by ``gpu_indices``) of
    every URL, and ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ) when every selected GPU exports it.
    """

    kind = "dcgm"
    blocking = False
    POWER = "DCGM_FI_DEV_POWER_USAGE"
    ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"

    def __init__(self, urls: str | Sequence[str], gpu_indices: Sequence[int] | None = None) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls or not all(u.startswith(("http://", "https://")) for u in self.urls):
            raise ValueError(f"dcgm: expected http(s) URLs of DCGM-exporter /metrics, got {self.urls!r}")
        self.gpu_indices = list(gpu_indices) if gpu_indices is not None else None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "urls": self.urls, "gpu_indices": self.gpu_indices}

    async def read_http(self, session: Any, timeout_s: float) -> PowerReading:
        import asyncio

        from .prometheus import parse_prometheus_text

        texts = []
        for url in self.urls:
            async with asyncio.timeout(timeout_s):
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: HTTP {resp.status}")
                    texts.append((url, await resp.text()))
        total_w = 0.0
        total_j: float | None = 0.0
        per: dict[str, float] = {}
        n = 0
        for url, text in texts:
            page = parse_prometheus_text(text, names=(self.POWER, self.ENERGY))
            energy = {}
            for s in page.by_name(self.ENERGY):
                energy[_gpu_id(s.labels)] = s.value
            power = page.by_name(self.POWER)
            if not power:
                raise RuntimeError(f"{url}: no {self.POWER} series (is this a DCGM exporter?)")
            for s in power:
                gid = _gpu_id(s.labels)
                if self.gpu_indices is not None and _gpu_index(s.labels) not in self.gpu_indices:
                    continue
                if not math.isfinite(s.value):
                    raise RuntimeError(f"{url}: {self.POWER}{{gpu={gid!r}}} is {s.value}")
                key = f"{url}#{gid}" if len(self.urls) > 1 else f"gpu{gid[0]}"
                per[key] = s.value
                total_w += s.value
                n += 1
                if total_j is not None:
                    e = energy.get(gid)
                    total_j = None if e is None or not math.isfinite(e) else total_j + e / 1000.0
        if n == 0:
            raise RuntimeError(f"none of GPUs {self.gpu_indices} in {self.POWER} of {self.urls}")
        return PowerReading(total_w, total_j, n, per)


def _gpu_index(labels: Any) -> int | None:
    try:
        return int(labels.get("gpu", labels.get("device", "").removeprefix("nvidia")))
    except (TypeError, ValueError):
        return None


def _gpu_id(labels: Any) -> tuple[str, str, str]:
    return (labels.get("gpu", labels.get("device", "?")), labels.get("UUID", ""), labels.get("Hostname", ""))


def parse_gpu_indices(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0,1,3"`` -> [0, 1, 3]; None or "" or "all" -> None (all GPUs)."""
    if text is None:
        return None
    if not isinstance(text, str):
        return [int(i) for i in text]
    text = text.strip()
    if text in ("", "all"):
        return None
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(
            f"--gpu-indices {text!r}: expected comma-separated GPU indices like 0,1,2,3 (or 'all')"
        ) from None
    if any(i < 0 for i in out) or len(set(out)) != len(out):
        raise ValueError(f"--gpu-indices {text!r}: indices must be distinct and >= 0")
    return out


def parse_power_source(
    spec: str | PowerSource | None, gpu_indices: Sequence[int] | None = None
) -> PowerSource | None:
    """``nvml`` | ``amdsmi`` | ``dcgm:URL[,URL...]`` | ``none`` (or None) -> a :class:`PowerSource`."""
    if spec is None or isinstance(spec, PowerSource):
        return spec
    s = spec.strip()
    if s in ("", "none"):
        return None
    if s == "nvml":
        return NvmlPower(gpu_indices)
    if s == "amdsmi":
        return AmdSmiPower(gpu_indices)
    if s.startswith("dcgm:"):
        return DcgmPower([u for u in s[5:].split(",") if u], gpu_indices)
    raise ValueError(
        f"--power-source {spec!r}: expected nvml, amdsmi, dcgm:URL (a DCGM exporter's /metrics, several "
        "separated by commas) or none"
    )
