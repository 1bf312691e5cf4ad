"""The configuration of a sweep: :class:`SweepConfig` (flags or a TOML ``[sweep]`` table) and its hash.

Everything that changes what a sweep measures is a field here; :meth:`SweepConfig.config_hash` hashes those
fields (not ``out``) so that resuming a sweep directory with different settings is refused. Times are in
seconds, power in W. See ``docs/sweep.md`` for the meaning of each field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
    max_agents: int | None = None  # None: DEFAULT_MAX_AGENTS live, the model's estimate on the simulator
    band: bool = True  # simulator: measure the low-high band around each answer (sweep_band.py)
    # a level that only steers the search may end once its verdicts are decided (sweep_early.py)
    early_stop: bool = True
    resolution: int = 1
    # bisection stops within max(resolution, floor(lo x relative_resolution)) agents (docs/sweep.md)
    relative_resolution: float = 1 / 32
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
    public_headers: tuple[str, ...] = ()
    extra_body: str | None = None
    request_timeout_s: float = 600.0
    stall_timeout_s: float = 120.0
    first_token_timeout_s: float = 120.0
    abort_after_s: float = 30.0
    force_output: bool = True
    continuous_usage: bool = False
    failure_policy: str = "miss"
    ci_method: str = "agent+time"
    max_unmeasured_share: float = 0.05
    what_if: str | None = None
    workers: int = 1  # live: worker processes per level (Ray when > 1; docs/scale-out.md)
    ray_address: str | None = None  # live: a Ray cluster for the workers
    out: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        _check_ranges(self)
        for name in ("level_duration_s", "warmup_s", "max_level_duration_s", "confidence", "drain_timeout_s"):
            object.__setattr__(self, name, float(getattr(self, name)))  # 60 and 60.0 hash alike
        if self.power_w is not None:
            object.__setattr__(self, "power_w", float(self.power_w))
        if self.power_w is not None and self.power_scope is None:
            raise SweepConfigError(
                f"power_w {self.power_w:g} needs power_scope (measured, declared or provisioned)"
            )
        self._check_client()  # headers, body, telemetry first: a live target is built from them
        self._normalize_telemetry()
        self._set_target()
        if self.power_scope is not None:
            PowerSpec(self.power_w, self.power_scope)  # validates the scope
            needs_type = self.power_scope == "provisioned" and self.power_w is None
            if needs_type and not self.target_object.accelerator_type:
                raise SweepConfigError("power_scope 'provisioned' needs accelerator_type (e.g. H200)")
        if not self.target_object.accelerators:
            raise SweepConfigError(f"a live target ({self.target}) needs accelerators (--accelerators N)")
        if self.metrics_url:
            from .client.preflight import check_base_url

            check_base_url(self.metrics_url, "metrics_url")
        get_tier_preset(self.tiers)
        self._check_stats()
        self._check_what_if()
        self._check_telemetry()

    def _set_target(self) -> None:
        """The :class:`~agentperf_kit.targets.Target` the spec names (``targets.parse_target``, the only
        place a spec is read): an unknown ``sim:NAME`` or a URL without ``model`` is refused here, not
        mid-sweep."""
        from .targets import parse_target

        try:
            target = parse_target(
                self.target,
                model=self.model,
                accelerators=self.accelerators,
                accelerator_type=self.accelerator_type,
                efficiency=self.efficiency,
                endpoint_options=self._endpoint_options(),
                telemetry=self._telemetry_config(),
                workers=self.workers,
                ray_address=self.ray_address,
            )
        except ConfigError as exc:
            if type(exc) is not ConfigError:
                raise  # UnknownNameError, SweepConfigError keep their class
            raise SweepConfigError(str(exc)) from None
        object.__setattr__(self, "_target", target)

    @property
    def target_object(self) -> Any:
        """The :class:`~agentperf_kit.targets.Target` of this sweep (built and checked with the config)."""
        return self.__dict__["_target"]

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

    def _check_what_if(self) -> None:
        """Canonical what-if knobs (docs/frontier.md); the deployment/trajectories knobs set those fields."""
        if self.what_if is None:
            return
        from .whatif import parse_what_if, what_if_string

        try:
            knobs = parse_what_if(self.what_if)
        except ConfigError as exc:
            raise SweepConfigError(str(exc)) from None
        if not knobs:
            object.__setattr__(self, "what_if", None)
            return
        if not self.is_sim:
            raise SweepConfigError(f"what_if={self.what_if!r}: what-if knobs apply to simulated targets only")
        if "deployment" in knobs:
            from .sim.presets import get_deployment

            try:
                get_deployment(str(knobs["deployment"]))
            except KeyError as exc:
                raise SweepConfigError(f"what_if deployment: {exc.args[0]}") from None
            object.__setattr__(self, "target", f"sim:{knobs['deployment']}")
            self._set_target()
        if "trajectories" in knobs:
            object.__setattr__(self, "trajectories", str(knobs["trajectories"]))
        object.__setattr__(self, "what_if", what_if_string(knobs))

    def _check_client(self) -> None:
        from .credentials import merge_headers

        for name in ("headers", "public_headers"):
            headers = getattr(self, name)
            if isinstance(headers, str):
                headers = (headers,)
            object.__setattr__(self, name, tuple(str(h) for h in headers or ()))
        if isinstance(self.extra_body, dict):  # a TOML table
            object.__setattr__(self, "extra_body", json.dumps(self.extra_body, sort_keys=True))
        for name in ("request_timeout_s", "stall_timeout_s", "first_token_timeout_s", "abort_after_s"):
            object.__setattr__(self, name, float(getattr(self, name)))
        try:
            merge_headers(self.headers, self.public_headers)
            if self.extra_body is not None:  # the HTTP client's module (aiohttp) only when there is one
                from .client.http import parse_extra_body

                parse_extra_body(self.extra_body)
        except ValueError as exc:
            raise SweepConfigError(str(exc)) from None

    def _endpoint_options(self) -> dict[str, Any]:
        """Keyword arguments of a live target's :class:`~agentperf_kit.client.http.Endpoint` (every header
        a secret except ``public_headers``; an ``Authorization`` header yields to ``api_key_env``, with a
        warning)."""
        from .credentials import dedupe_auth, merge_headers

        extra: dict[str, Any] = {}
        if self.extra_body is not None:  # the HTTP client's module (aiohttp) only when there is one
            from .client.http import parse_extra_body

            extra = parse_extra_body(self.extra_body)

        headers, public = merge_headers(self.headers, self.public_headers)
        return dict(
            api=self.endpoint,
            api_key_env=self.api_key_env,
            force_output_fields=self.force_output,
            continuous_usage=self.continuous_usage,
            request_timeout_s=self.request_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
            first_token_timeout_s=self.first_token_timeout_s,
            headers=dedupe_auth(headers, self.api_key_env),
            public_header_names=public,
            extra_body=extra,
        )

    def endpoint_for(self) -> Any:
        """The :class:`~agentperf_kit.client.http.Endpoint` of a live target."""
        return self.target_object.endpoint

    def _normalize_telemetry(self) -> None:
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

    def _check_telemetry(self) -> None:
        if self.is_sim and self.power_source != "none":
            raise SweepConfigError(
                f"--power-source {self.power_source} measures a live target; the simulator's power is "
                "modelled (drop --power-source, or sweep a URL)"
            )
        if self.gpu_indices is not None and self.power_source in ("none",):
            raise SweepConfigError("--gpu-indices needs --power-source nvml, amdsmi or dcgm:URL")

    def telemetry(self):
        """The :class:`~agentperf_kit.telemetry.TelemetryConfig` of a live level (None when nothing is
        sampled, or for a simulated target)."""
        return None if self.is_sim else self._telemetry_config()

    def _telemetry_config(self):
        from .telemetry import TelemetryConfig, parse_gpu_indices

        if not self.scrape_metrics and self.power_source == "none":
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
        """Whether the target runs in virtual time (the simulator)."""
        return bool(self.target_object.virtual_time)

    @property
    def deployment(self) -> str:
        """The simulated deployment's name (sim targets)."""
        return self.target_object.deployment.name

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
            abort_after_s=self.abort_after_s,
        )

    def measurement_dict(self) -> dict[str, Any]:
        """The fields that change what is measured (``out`` excluded): hashed for resume checks."""
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("workers")  # how the load is generated, not what is measured: a sweep may resume with
        d.pop("ray_address")  # more workers or on another cluster
        if d.get("band", True):
            d.pop("band", None)  # at its default: left out, so older sweeps' hashes still match
        # which levels may stop early, not what a level measures: a sweep may resume with it switched (with
        # it off, the stopped levels are measured again in full; with it on, full levels are reused)
        d.pop("early_stop")
        if d.get("what_if") is None:
            d.pop("what_if", None)  # absent when unused, so older sweeps' hashes still match
        for name, default in (_TELEMETRY_DEFAULTS | _CLIENT_DEFAULTS | _STATS_DEFAULTS).items():
            if d[name] == default:  # at their defaults: left out, so older sweeps' hashes still match
                d.pop(name)
        if "headers" in d:  # header values are secrets: only their names reach a file or the hash
            from .credentials import masked_header_lines

            d["headers"] = masked_header_lines(d["headers"])
        if "public_headers" in d:  # recorded as given (as a JSON file holds them)
            d["public_headers"] = list(d["public_headers"])
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
        if not isinstance(data, dict):
            raise SweepConfigError(f"{path}: [sweep] must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepConfigError(
                f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        from_file = set(data) - {k for k, v in overrides.items() if v is not None}
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except SweepConfigError as exc:
            name = str(exc).split(" ", 1)[0]
            if name in from_file:  # the file's value: say which file
                raise SweepConfigError(f"{path}: {exc}") from None
            raise


_CLIENT_DEFAULTS: dict[str, Any] = {
    "headers": (),
    "public_headers": (),
    "extra_body": None,
    "request_timeout_s": 600.0,
    "stall_timeout_s": 120.0,
    "first_token_timeout_s": 120.0,
    "abort_after_s": 30.0,
    "force_output": True,
    "continuous_usage": False,
}

_STATS_DEFAULTS: dict[str, Any] = {
    "failure_policy": "miss",
    "ci_method": "agent+time",
    "max_unmeasured_share": 0.05,
    "relative_resolution": 1 / 32,
}

_TELEMETRY_DEFAULTS: dict[str, Any] = {
    "power_source": "none",
    "gpu_indices": None,
    "scrape_metrics": True,
    "metrics_url": None,
    "telemetry_interval_s": 1.0,
}


# -- type and range checks (run before anything else, so --dry-run refuses what a run would) ------------


def _check_types(cfg: SweepConfig) -> None:
    """Every field has the type its annotation names (a TOML value of another type is refused by name)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ann = str(f.type)
        if value is None:
            if "None" in ann:
                continue
            raise SweepConfigError(f"{f.name} must be set (got nothing); see docs/sweep.md")
        base = ann.replace(" | None", "").strip()
        if base == "bool":
            ok, want = isinstance(value, bool), "true or false"
        elif base == "int":
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif base == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        elif f.name == "gpu_indices":
            ok = isinstance(value, str) or (
                isinstance(value, list | tuple)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            )
            want = "a list of integers or a string like '0,1'"
        elif f.name == "extra_body":  # before "str": a TOML table is a dict
            ok, want = isinstance(value, str | dict), "a JSON object (a TOML table, or a JSON string)"
        elif base == "str":
            ok, want = isinstance(value, str), "a string"
        elif base.startswith("tuple"):
            items = (value,) if isinstance(value, str) else value
            ok = isinstance(items, list | tuple) and all(isinstance(v, str) for v in items)
            want = "a list of 'Name: value' strings"
        else:  # pragma: no cover - a new field type: teach this function about it
            continue
        if not ok:
            raise SweepConfigError(f"{f.name} must be {want}, got {value!r} ({type(value).__name__})")


# (name, lowest allowed, whether the lowest value itself is allowed)
_RANGES: tuple[tuple[str, float, bool], ...] = (
    ("level_duration_s", 0.0, False),
    ("warmup_s", 0.0, True),
    ("min_trajectories", 0, True),
    ("min_trajectories_per_agent", 0, True),
    ("max_level_duration_s", 0.0, False),
    ("drain_timeout_s", 0.0, True),
    ("max_agents", 1, True),
    ("resolution", 1, True),
    ("seed", 0, True),
    ("max_extensions", 0, True),
    ("accelerators", 1, True),
    ("power_w", 0.0, False),
    ("max_context", 1, True),
    ("request_timeout_s", 0.0, False),
    ("stall_timeout_s", 0.0, False),
    ("first_token_timeout_s", 0.0, False),
    ("abort_after_s", 0.0, True),
    ("telemetry_interval_s", 0.0, False),
    ("workers", 1, True),
)


def _check_ranges(cfg: SweepConfig) -> None:
    for name, lo, inclusive in _RANGES:
        v = getattr(cfg, name)
        if v is None:
            continue
        if v < lo or (v == lo and not inclusive):
            raise SweepConfigError(f"{name} must be {'>=' if inclusive else '>'} {lo:g}, got {v!r}")
    if not 0 <= cfg.relative_resolution < 1:
        raise SweepConfigError(f"relative_resolution must be in [0, 1), got {cfg.relative_resolution!r}")
    if not 0 < cfg.confidence < 1:
        raise SweepConfigError(f"confidence must be in (0, 1), got {cfg.confidence!r}")
    if cfg.efficiency not in ("low", "mid", "high"):
        raise SweepConfigError(f"efficiency must be low, mid or high, got {cfg.efficiency!r}")
    if cfg.endpoint not in ("chat", "completions"):
        raise SweepConfigError(f"endpoint must be chat or completions, got {cfg.endpoint!r}")
    scopes = ("measured", "declared", "modelled", "provisioned")
    if cfg.power_scope is not None and cfg.power_scope not in scopes:
        raise SweepConfigError(f"power_scope must be one of {', '.join(scopes)}, got {cfg.power_scope!r}")
    if not cfg.target.strip():
        raise SweepConfigError("target must be sim, sim:PRESET or a URL, got an empty string")
