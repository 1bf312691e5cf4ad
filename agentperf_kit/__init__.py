"""agentperf-kit: how many concurrent AI coding agents an inference system serves within SLOs.

The short public API (everything else lives in its module: ``agentperf_kit.metrics``, ``.slo``...)::

    from agentperf_kit import SweepConfig, run_sweep
    result = run_sweep(SweepConfig(target="sim:h200x8-dsv4pro"))
    result.summary["tiers"]
"""

from ._version import __version__
from .agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
from .errors import AgentperfError, ConfigError, InputFormatError, MeasurementError, OutputError, TargetError
from .metrics import derive_request_metrics, level_stats
from .percentiles import percentile, percentile_ci
from .results import RunResult, load_run
from .sim.virtual import run_sim_level
from .slo import Tier, TierPreset, evaluate_level, get_tier_preset, level_verdicts, max_agents
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
    "SweepConfig",
    "SweepResult",
    "SynthConfig",
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
    "load_run",
    "load_sweep",
    "load_trajectories",
    "max_agents",
    "percentile",
    "percentile_ci",
    "run_sim_level",
    "run_sweep",
    "save_trajectories",
    "synthesize",
    "trajectory_stats",
]
