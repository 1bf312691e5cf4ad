"""The configuration of a sweep: :class:`SweepConfig` (flags or a TOML ``[sweep]`` table) and its hash.

Everything that changes what a sweep measures is a field here; :meth:`SweepConfig.config_hash` hashes those
fields (not ``out``) so that resuming a sweep directory with different settings is refused. Times are in
seconds, power in W. See ``docs/sweep.md`` for the meaning of each field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agents import RunRules
from .errors import ConfigError
from .normalize import PowerSpec
from .slo import get_tier_preset

__all__ = ["SweepConfig", "SweepConfigError"]


class SweepConfigError(ConfigError):
    """A sweep configuration is invalid, or does not match the one of the directory being resumed."""


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep (times in seconds, power in W). See ``docs/sweep.md``."""

    target: str = "sim"
    model: str | None = None
    trajectories: str | None = None
    tiers: str = "aa-dsv4pro"
    accelerators: int | None = None
    accelerator_type: str | None = None
    power_w: float | None = None
    power_scope: str | None = None
    level_duration_s: float = 600.0
    warmup_s: float = 60.0
    min_trajectories: int = 30
    min_trajectories_per_agent: int = 3
    max_level_duration_s: float = 4 * 3600.0
    drain_timeout_s: float = 120.0
    max_agents: int = 4096
    resolution: int = 1
    seed: int = 0
    confidence: float = 0.95
    max_extensions: int = 2
    efficiency: str = "mid"
    endpoint: str = "chat"
    api_key_env: str | None = None
    max_context: int | None = None
    power_source: str = "none"
    gpu_indices: str | None = None
    scrape_metrics: bool = True
    metrics_url: str | None = None
    telemetry_interval_s: float = 1.0
    headers: tuple[str, ...] = ()
    extra_body: str | None = None
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0
    force_output: bool = True
    continuous_usage: bool = False
    failure_policy: str = "miss"
    ci_method: str = "agent+time"
    max_unmeasured_share: float = 0.05
    out: str | None = None

    def __post_init__(self) -> None:
        for name in ("level_duration_s", "warmup_s", "max_level_duration_s", "confidence", "drain_timeout_s"):
            object.__setattr__(self, name, float(getattr(self, name)))  # 60 and 60.0 hash alike
        if self.power_w is not None:
            object.__setattr__(self, "power_w", float(self.power_w))
        if self.max_agents < 1:
            raise SweepConfigError(f"max_agents must be >= 1, got {self.max_agents}")
        if self.resolution < 1:
            raise SweepConfigError(f"resolution must be >= 1 agent, got {self.resolution}")
        if self.power_w is not None and self.power_scope is None:
            raise SweepConfigError("--power-w needs --power-scope (measured, declared or provisioned)")
        if self.power_scope is not None:
            PowerSpec(self.power_w, self.power_scope)  # validates the scope
            needs_type = self.power_scope == "provisioned" and self.power_w is None
            if needs_type and not self.accelerator_type and not self.is_sim:
                raise SweepConfigError("--power-scope provisioned needs --accelerator-type")
        if not self.is_sim and not self.model:
            raise SweepConfigError(f"a live target ({self.target}) needs --model")
        if not self.is_sim and not self.accelerators:
            raise SweepConfigError(f"a live target ({self.target}) needs --accelerators N")
        get_tier_preset(self.tiers)
        self._check_stats()
        self._check_telemetry()
        self._check_client()

    def _check_stats(self) -> None:
        from .slo import CI_METHODS, FAILURE_POLICIES

        if self.failure_policy not in FAILURE_POLICIES:
            raise SweepConfigError(
                f"failure_policy must be one of {', '.join(FAILURE_POLICIES)}, got {self.failure_policy!r}"
            )
        if self.ci_method not in CI_METHODS:
            raise SweepConfigError(
                f"ci_method must be one of {', '.join(CI_METHODS)}, got {self.ci_method!r}"
            )
        object.__setattr__(self, "max_unmeasured_share", float(self.max_unmeasured_share))
        if not 0 <= self.max_unmeasured_share <= 1:
            raise SweepConfigError(f"max_unmeasured_share must be in [0, 1], got {self.max_unmeasured_share}")

    def _check_client(self) -> None:
        from .client.http import parse_extra_body, parse_headers

        headers = self.headers
        if isinstance(headers, str):
            headers = (headers,)
        object.__setattr__(self, "headers", tuple(str(h) for h in headers or ()))
        if isinstance(self.extra_body, dict):  # a TOML table
            object.__setattr__(self, "extra_body", json.dumps(self.extra_body, sort_keys=True))
        for name in ("request_timeout_s", "stall_timeout_s"):
            object.__setattr__(self, name, float(getattr(self, name)))
        try:
            parse_headers(self.headers)
            parse_extra_body(self.extra_body)
        except ValueError as exc:
            raise SweepConfigError(str(exc)) from None

    def endpoint_for(self) -> Any:
        """The :class:`~agentperf_kit.client.http.Endpoint` of a live level."""
        from .client.http import Endpoint, parse_extra_body, parse_headers

        return Endpoint(
            self.target,
            str(self.model),
            api=self.endpoint,
            api_key_env=self.api_key_env,
            force_output_fields=self.force_output,
            continuous_usage=self.continuous_usage,
            request_timeout_s=self.request_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
            headers=parse_headers(self.headers),
            extra_body=parse_extra_body(self.extra_body),
        )

    def _check_telemetry(self) -> None:
        from .telemetry import parse_gpu_indices, parse_power_source

        gi = self.gpu_indices
        if gi is not None and not isinstance(gi, str):  # a TOML list
            gi = ",".join(str(int(i)) for i in gi)
        try:
            idx = parse_gpu_indices(gi)
            parse_power_source(self.power_source or "none", idx)
        except ValueError as exc:
            raise SweepConfigError(str(exc)) from None
        object.__setattr__(self, "gpu_indices", None if idx is None else ",".join(map(str, idx)))
        object.__setattr__(self, "power_source", (self.power_source or "none").strip())
        object.__setattr__(self, "telemetry_interval_s", float(self.telemetry_interval_s))
        if not self.telemetry_interval_s > 0:
            raise SweepConfigError(f"telemetry_interval_s must be > 0 s, got {self.telemetry_interval_s}")
        if self.is_sim and self.power_source != "none":
            raise SweepConfigError(
                f"--power-source {self.power_source} measures a live target; the simulator's power is "
                "modelled (drop --power-source, or sweep a URL)"
            )
        if self.gpu_indices is not None and self.power_source in ("none",):
            raise SweepConfigError("--gpu-indices needs --power-source nvml, amdsmi or dcgm:URL")

    def telemetry(self):
        """The :class:`~agentperf_kit.telemetry.TelemetryConfig` of a live level (None when nothing is
        sampled)."""
        from .telemetry import TelemetryConfig, parse_gpu_indices

        if self.is_sim or (not self.scrape_metrics and self.power_source == "none"):
            return None
        return TelemetryConfig(
            interval_s=self.telemetry_interval_s,
            scrape_metrics=self.scrape_metrics,
            metrics_url=self.metrics_url,
            power=self.power_source,
            gpu_indices=parse_gpu_indices(self.gpu_indices),
        )

    @property
    def is_sim(self) -> bool:
        return self.target == "sim" or self.target.startswith("sim:")

    @property
    def deployment(self) -> str:
        from .sim.presets import DEFAULT_DEPLOYMENT

        return self.target.split(":", 1)[1] if ":" in self.target and self.is_sim else DEFAULT_DEPLOYMENT

    def rules(self, extension: int = 0) -> RunRules:
        """Run rules of a level (the window doubles with each extension)."""
        dur = self.level_duration_s * 2**extension
        return RunRules(
            warmup_s=self.warmup_s,
            duration_s=dur,
            min_trajectories=self.min_trajectories,
            min_trajectories_per_agent=self.min_trajectories_per_agent,
            max_duration_s=max(dur, self.max_level_duration_s),
            drain_timeout_s=self.drain_timeout_s,
        )

    def measurement_dict(self) -> dict[str, Any]:
        """The fields that change what is measured (``out`` excluded): hashed for resume checks."""
        d = dataclasses.asdict(self)
        d.pop("out")
        for name, default in (_TELEMETRY_DEFAULTS | _CLIENT_DEFAULTS | _STATS_DEFAULTS).items():
            if d[name] == default:  # at their defaults: left out, so older sweeps' hashes still match
                d.pop(name)
        if "headers" in d:  # credentials never reach a file (keys belong in api_key_env)
            from .client.http import parse_headers, public_headers

            d["headers"] = [f"{k}: {v}" for k, v in public_headers(parse_headers(d["headers"])).items()]
        return d

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.measurement_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def measures_power(self) -> bool:
        """A live sweep with a power source (nvml, amdsmi, dcgm)."""
        return not self.is_sim and self.power_source != "none"

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> SweepConfig:
        """Load a ``[sweep]`` table (or top-level keys) from a TOML file; ``overrides`` win."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SweepConfigError(f"{path}: cannot read the sweep config: {exc}") from exc
        data = data.get("sweep", data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepConfigError(
                f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


_CLIENT_DEFAULTS: dict[str, Any] = {
    "headers": (),
    "extra_body": None,
    "request_timeout_s": 600.0,
    "stall_timeout_s": 120.0,
    "force_output": True,
    "continuous_usage": False,
}

_STATS_DEFAULTS: dict[str, Any] = {
    "failure_policy": "miss",
    "ci_method": "agent+time",
    "max_unmeasured_share": 0.05,
}

_TELEMETRY_DEFAULTS: dict[str, Any] = {
    "power_source": "none",
    "gpu_indices": None,
    "scrape_metrics": True,
    "metrics_url": None,
    "telemetry_interval_s": 1.0,
}
