"""agentperf-kit: how many concurrent AI coding agents an inference system serves within SLOs.

The short public API (everything else lives in its module: ``agentperf_kit.metrics``, ``.slo``...)::

    from agentperf_kit import SweepConfig, run_sweep, load_sweep
    result = run_sweep(SweepConfig(target="sim:h200x8-dsv4pro"))
    result.summary["tiers"]

    from agentperf_kit import run_study
    table = run_study("study.toml", out="runs/study")   # a grid of sweeps: one row per sweep and tier

Names are imported on first use (PEP 562), so ``import agentperf_kit`` stays cheap: pandas, scipy and
aiohttp load only when a name that needs them is touched (``benchmarks/import_time.py`` measures it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _compiled
from ._version import __version__
from .errors import AgentperfError, ConfigError, InputFormatError, MeasurementError, OutputError, TargetError

_compiled._choose()  # the simulator core compiled, or from source if its sources changed since the build

# public name -> module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "AgentFleet": ".agents",
    "RequestOutcome": ".agents",
    "RequestPlan": ".agents",
    "RunRules": ".agents",
    "derive_request_metrics": ".metrics",
    "level_stats": ".metrics",
    "percentile": ".percentiles",
    "percentile_ci": ".percentiles",
    "RunResult": ".results",
    "load_run": ".results",
    "run_live": ".replay",
    "run_sim_level": ".sim.virtual",
    "list_deployments": ".sim.presets",
    "Tier": ".slo",
    "TierPreset": ".slo",
    "evaluate_level": ".slo",
    "get_tier_preset": ".slo",
    "level_verdicts": ".slo",
    "max_agents": ".slo",
    "tier_preset_names": ".slo",
    "SweepConfig": ".sweep",
    "SweepResult": ".sweep",
    "load_sweep": ".sweep",
    "run_sweep": ".sweep",
    "StudyConfig": ".study_config",
    "load_study": ".study",
    "run_study": ".study",
    "Target": ".targets",
    "parse_target": ".targets",
    "SynthConfig": ".trajectories",
    "Trajectory": ".trajectories",
    "TrajectoryFormatError": ".trajectories",
    "Turn": ".trajectories",
    "default_trajectories": ".trajectories",
    "load_trajectories": ".trajectories",
    "save_trajectories": ".trajectories",
    "synthesize": ".trajectories",
    "trajectory_stats": ".trajectories",
}

__all__ = [
    "AgentFleet",
    "AgentperfError",
    "ConfigError",
    "InputFormatError",
    "MeasurementError",
    "OutputError",
    "RequestOutcome",
    "RequestPlan",
    "RunResult",
    "RunRules",
    "StudyConfig",
    "SweepConfig",
    "SweepResult",
    "SynthConfig",
    "Target",
    "TargetError",
    "Tier",
    "TierPreset",
    "Trajectory",
    "TrajectoryFormatError",
    "Turn",
    "__version__",
    "default_trajectories",
    "derive_request_metrics",
    "evaluate_level",
    "get_tier_preset",
    "level_stats",
    "level_verdicts",
    "list_deployments",
    "load_run",
    "load_study",
    "load_sweep",
    "load_trajectories",
    "max_agents",
    "parse_target",
    "percentile",
    "percentile_ci",
    "run_live",
    "run_sim_level",
    "run_study",
    "run_sweep",
    "save_trajectories",
    "synthesize",
    "tier_preset_names",
    "trajectory_stats",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentperf_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from .agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
    from .metrics import derive_request_metrics, level_stats
    from .percentiles import percentile, percentile_ci
    from .replay import run_live
    from .results import RunResult, load_run
    from .sim.presets import list_deployments
    from .sim.virtual import run_sim_level
    from .slo import (
        Tier,
        TierPreset,
        evaluate_level,
        get_tier_preset,
        level_verdicts,
        max_agents,
        tier_preset_names,
    )
    from .study import load_study, run_study
    from .study_config import StudyConfig
    from .sweep import SweepConfig, SweepResult, load_sweep, run_sweep
    from .trajectories import (
        SynthConfig,
        Trajectory,
        TrajectoryFormatError,
        Turn,
        default_trajectories,
        load_trajectories,
        save_trajectories,
        synthesize,
        trajectory_stats,
    )
