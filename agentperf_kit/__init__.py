"""agentperf-kit: how many concurrent AI coding agents an inference system serves within SLOs."""

from ._version import __version__
from .agents import AgentFleet, RequestOutcome, RequestPlan, RunRules
from .trajectories import Trajectory, TrajectoryFormatError, Turn

__all__ = [
    "AgentFleet",
    "RequestOutcome",
    "RequestPlan",
    "RunRules",
    "Trajectory",
    "TrajectoryFormatError",
    "Turn",
    "__version__",
]
