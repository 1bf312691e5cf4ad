"""What a level runs against: the :class:`Target` protocol, its simulated and live implementations, and
:func:`parse_target`, the one place where a target spec (``sim``, ``sim:NAME``, ``sim:PATH.toml``, a URL)
is read.

A target runs one level of N closed-loop agents and returns a :class:`~agentperf_kit.results.RunResult`
with the files of docs/schema.md; it also says how many accelerators it has (for agents per accelerator),
what they are, how its power is known (``power_scope``: ``modelled`` for the simulator, ``measured`` with
a power source, else None: the sweep's declared/provisioned power applies) and describes itself in one
line. :func:`agentperf_kit.sweep.run_sweep` and ``agentperf run`` use nothing else of it, so any object
with these members is a target (e.g. a pool of remote workers driving one server together)::

    class Target(Protocol):
        accelerators: int | None
        accelerator_type: str | None
        description: str
        power_scope: str | None
        virtual_time: bool
        def run_level(self, trajectories, n_agents, rules, *, seed, out_dir, level, run_id,
                      progress) -> RunResult: ...

``virtual_time`` says whether the level runs on a simulated clock (wall time seconds, figures a model's
prediction): the sweep's notes and estimates depend on it, never on the spec string. A target whose
``supports_early_stop`` is true (the simulator; a live target in-process) also takes ``early_stop=`` in
``run_level``: interim looks that may close a level's window once the sweep's verdicts are decided
(:mod:`agentperf_kit.sweep_early`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import ConfigError

if TYPE_CHECKING:
    from .agents import RunRules
    from .client.http import Endpoint
    from .results import RunResult
    from .sim.presets import Deployment
    from .telemetry import TelemetryConfig
    from .trajectories.model import Trajectory

__all__ = ["LiveTarget", "SimTarget", "Target", "parse_target"]


@runtime_checkable
class Target(Protocol):
    """What a level runs against (module docstring). ``accelerators`` is None when unknown (a live
    target without ``accelerators``: a sweep refuses it, a single run does not need it)."""

    @property
    def accelerators(self) -> int | None: ...

    @property
    def accelerator_type(self) -> str | None: ...

    @property
    def description(self) -> str: ...

    @property
    def power_scope(self) -> str | None: ...

    @property
    def virtual_time(self) -> bool: ...

    def run_level(
        self,
        trajectories: Sequence[Trajectory],
        n_agents: int,
        rules: RunRules,
        *,
        seed: int,
        out_dir: str | os.PathLike | None,
        level: int,
        run_id: str | None,
        progress: bool,
    ) -> RunResult:
        """Run one level of ``n_agents`` agents; write it to ``out_dir`` (new or empty) and return it."""
        ...


@dataclass(frozen=True)
class SimTarget:
    """The simulated inference system (``sim``, ``sim:NAME`` or ``sim:PATH.toml``), in virtual time.

    Attributes:
        deployment: the resolved deployment (:func:`agentperf_kit.sim.presets.get_deployment`).
        efficiency: the efficiency set, ``low``, ``mid`` or ``high``.
        accelerator_count: overrides the deployment's accelerator count for per-accelerator figures.
        accelerator_type_override: overrides the deployment's accelerator name.
    """

    deployment: Deployment
    efficiency: str = "mid"
    accelerator_count: int | None = None
    accelerator_type_override: str | None = None
    virtual_time: bool = field(default=True, init=False)
    power_scope: str | None = field(default="modelled", init=False)
    # run_level takes ``early_stop`` (agentperf_kit.sweep_early); a target without this attribute does not
    supports_early_stop: bool = field(default=True, init=False)

    @property
    def spec(self) -> str:
        """The canonical target spec, ``sim:NAME``."""
        return f"sim:{self.deployment.name}"

    @property
    def model(self) -> str:
        return self.deployment.model

    @property
    def accelerators(self) -> int:
        return self.accelerator_count or self.deployment.accelerator_count

    @property
    def accelerator_type(self) -> str | None:
        return self.accelerator_type_override or self.deployment.accelerator

    @property
    def description(self) -> str:
        return (
            f"simulated {self.deployment.name} ({self.accelerators} x {self.accelerator_type}, "
            f"{self.model}, efficiency set {self.efficiency!r})"
        )

    def preflight(self, timeout_s: float = 60.0) -> str | None:
        """Nothing to check before a simulated run (the deployment resolved when the target was made)."""
        return None

    def run_level(
        self,
        trajectories: Sequence[Trajectory],
        n_agents: int,
        rules: RunRules,
        *,
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        level: int = 0,
        run_id: str | None = None,
        progress: bool = False,
        early_stop: Any = None,
    ) -> RunResult:
        """:func:`agentperf_kit.sim.virtual.run_sim_level` on this deployment (``early_stop``: its interim
        looks, :class:`agentperf_kit.sweep_early.EarlyStop`)."""
        from .sim.virtual import run_sim_level

        return run_sim_level(
            trajectories,
            n_agents,
            rules,
            deployment=self.deployment,
            seed=seed,
            out_dir=out_dir,
            level=level,
            run_id=run_id,
            efficiency=self.efficiency,
            early_stop=early_stop,
        )


@dataclass(frozen=True)
class LiveTarget:
    """An OpenAI-compatible endpoint measured in real time.

    Attributes:
        endpoint: URL, model and client settings (:class:`~agentperf_kit.client.http.Endpoint`).
        accelerator_count: accelerators behind the endpoint (None: unknown; a sweep needs it).
        accelerator_type: e.g. ``H200`` (for provisioned power).
        telemetry: what to sample during each level (None: nothing).
        api_key: the key itself (default: the variable ``endpoint.api_key_env`` names); never written.
        record_chunks: also write every chunk's time and token count (``chunks.parquet``).
        workers: worker processes that run each level's agents (1: in this process, no Ray; more: Ray
            actors, :mod:`agentperf_kit.scaleout`).
        ray_address: a Ray cluster to place the workers on (``auto``, ``ray://host:port``); None: a local
            Ray runtime when ``workers`` > 1. Given with ``workers=1``, the one worker runs on the cluster.

    On Ray the target keeps its workers from one level to the next (a sweep starts them once:
    :class:`agentperf_kit.scaleout.pool.WorkerPool`); :meth:`close` (or leaving ``with``) removes them, a
    sweep does when it ends, and they go with the process otherwise.
    """

    endpoint: Endpoint
    accelerator_count: int | None = None
    accelerator_type: str | None = None
    telemetry: TelemetryConfig | None = None
    api_key: str | None = field(default=None, repr=False)
    record_chunks: bool = False
    workers: int = 1
    ray_address: str | None = None
    virtual_time: bool = field(default=False, init=False)
    _pool: list = field(default_factory=list, init=False, repr=False, compare=False)  # the WorkerPool, once

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise ConfigError("ray_address must be 'auto', 'ray://HOST:PORT' or a head's HOST:PORT, got ''")
        if self.scale_out:
            if self.record_chunks:
                raise ConfigError(
                    f"record_chunks is not available with workers={self.workers} or a ray_address; "
                    "record chunks with workers=1 (in-process)"
                )
            from .scaleout.runtime import require_ray

            require_ray(f"workers={self.workers}" if self.ray_address is None else "ray_address")

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (or copied) without its workers: they belong to this process's Ray connection."""
        return {**self.__dict__, "_pool": []}

    def __enter__(self) -> LiveTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the Ray workers this target keeps between levels (none in-process); a next level places
        new ones."""
        while self._pool:
            self._pool.pop().close()

    @property
    def scale_out(self) -> bool:
        """True when the levels run on Ray workers (``workers`` > 1 or a ``ray_address``)."""
        return self.workers > 1 or self.ray_address is not None

    @property
    def spec(self) -> str:
        return self.endpoint.base_url

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def accelerators(self) -> int | None:
        return self.accelerator_count

    @property
    def power_scope(self) -> str | None:
        """``measured`` when a power source samples the accelerators, else None."""
        t = self.telemetry
        return "measured" if t is not None and (t.power or "none") != "none" else None

    @property
    def description(self) -> str:
        acc = f", {self.accelerators} x {self.accelerator_type or 'accelerator'}" if self.accelerators else ""
        return f"{self.endpoint.base_url} (model {self.model}{acc})"

    @property
    def supports_early_stop(self) -> bool:
        """Whether :meth:`run_level` takes ``early_stop``: in-process levels (``workers=1``, no Ray)."""
        return not self.scale_out

    def preflight(self, timeout_s: float = 60.0) -> str | None:
        """Check the endpoint answers before any agent starts (:mod:`agentperf_kit.client.preflight`);
        returns the line to show. Raises :class:`~agentperf_kit.errors.TargetError` when it does not."""
        from .client.preflight import preflight_sync
        from .credentials import api_key_from_env

        key = self.api_key or api_key_from_env(self.endpoint.api_key_env)
        preflight_sync(self.endpoint, key, timeout_s=timeout_s)
        return f"preflight: {self.endpoint.base_url} answered for model {self.model}"

    def run_level(
        self,
        trajectories: Sequence[Trajectory],
        n_agents: int,
        rules: RunRules,
        *,
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        level: int = 0,
        run_id: str | None = None,
        progress: bool = True,
        early_stop: Any = None,
    ) -> RunResult:
        """:func:`agentperf_kit.replay.run_live_sync` against this endpoint (a Jupyter cell included), or
        with ``workers``/``ray_address`` :func:`agentperf_kit.scaleout.run_live_workers` (``early_stop``,
        the sweep's interim looks, in-process only: :attr:`supports_early_stop`)."""
        telemetry = self.telemetry if self.telemetry is not None and self.telemetry.active else None
        args = (self.endpoint, trajectories, n_agents, rules)
        kwargs: dict[str, Any] = {
            "seed": seed,  # as a simulated target gets it: the same agents, turns and ramp
            "out_dir": out_dir,
            "level": level,
            "run_id": run_id,
            "progress": progress,
            "api_key": self.api_key,
            "telemetry": telemetry,
            "target_info": {"accelerators": self.accelerators, "accelerator_type": self.accelerator_type},
        }
        if self.scale_out:
            from .scaleout import run_live_workers
            from .scaleout.pool import WorkerPool

            if not self._pool:
                self._pool.append(WorkerPool(self.workers, self.ray_address))
            return run_live_workers(
                *args, workers=self.workers, ray_address=self.ray_address, pool=self._pool[0], **kwargs
            )
        from .replay import run_live_sync

        if early_stop is not None:
            kwargs["early_stop"] = early_stop
        return run_live_sync(*args, record_chunks=self.record_chunks, **kwargs)


def parse_target(
    spec: str | Target,
    *,
    model: str | None = None,
    accelerators: int | None = None,
    accelerator_type: str | None = None,
    efficiency: str = "mid",
    endpoint_options: dict[str, Any] | None = None,
    telemetry: TelemetryConfig | None = None,
    api_key: str | None = None,
    record_chunks: bool = False,
    workers: int = 1,
    ray_address: str | None = None,
) -> Target:
    """The target a spec names, the only place specs are read.

    ``spec``: ``sim`` (the default deployment), ``sim:NAME`` (a deployment preset, ``agentperf presets``),
    ``sim:PATH.toml`` (a preset file, e.g. a twin written by ``agentperf profile``, resolved by
    :func:`agentperf_kit.sim.presets.get_deployment`), or an ``http(s)://`` URL of an OpenAI-compatible
    API (e.g. ``http://127.0.0.1:8000/v1``), which needs ``model``. A :class:`Target` object is returned
    as it is. Options that do not apply to the kind of target named are ignored: ``efficiency`` (sim);
    ``endpoint_options`` (keyword arguments of :class:`~agentperf_kit.client.http.Endpoint`), ``telemetry``,
    ``api_key``, ``record_chunks``, ``workers``, ``ray_address`` (live; docs/scale-out.md).
    ``accelerators``/``accelerator_type`` override a preset's.

    Raises:
        ConfigError: an empty or unknown spec, an unknown preset (``UnknownNameError``, listing the known
            ones), a URL without ``model``, bad endpoint options.
        TargetError: a malformed URL.
    """
    if not isinstance(spec, str):
        if isinstance(spec, Target):
            return spec
        raise ConfigError(f"target must be a spec string or a Target, got {type(spec).__name__}")
    text = spec.strip()
    if text == "sim" or text.startswith("sim:"):
        from .sim.presets import DEFAULT_DEPLOYMENT, get_deployment

        name = text[4:].strip() or DEFAULT_DEPLOYMENT
        if efficiency not in ("low", "mid", "high"):
            raise ConfigError(f"efficiency must be low, mid or high, got {efficiency!r}")
        return SimTarget(get_deployment(name), efficiency, accelerators, accelerator_type)
    if not text:
        raise ConfigError("target must be sim, sim:NAME, sim:PATH.toml or a URL, got an empty string")
    from .client.http import Endpoint
    from .client.preflight import check_base_url

    check_base_url(text)  # anything else is a URL or a TargetError that names sim / sim:PRESET too
    if not model:
        raise ConfigError(f"a URL target ({text}) needs model (--model)")
    try:
        endpoint = Endpoint(text, model, **(endpoint_options or {}))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"target {text}: {exc}") from None
    return LiveTarget(
        endpoint, accelerators, accelerator_type, telemetry, api_key, record_chunks, workers, ray_address
    )
