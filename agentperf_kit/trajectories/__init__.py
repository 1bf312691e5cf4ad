"""Trajectories: the model, the on-disk format, the synthetic generator and statistics."""

from .io import (
    DEFAULT_TRAJECTORIES_PATH,
    TRAJECTORY_SCHEMA_VERSION,
    default_trajectories,
    load_trajectories,
    save_trajectories,
)
from .model import Trajectory, TrajectoryFormatError, Turn
from .stats import format_stats, trajectory_stats
from .synth import DEFAULT_COUNT, DEFAULT_SEED, SynthConfig, synthesize
from .transform import fit_context

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_SEED",
    "DEFAULT_TRAJECTORIES_PATH",
    "TRAJECTORY_SCHEMA_VERSION",
    "SynthConfig",
    "Trajectory",
    "TrajectoryFormatError",
    "Turn",
    "default_trajectories",
    "fit_context",
    "format_stats",
    "load_trajectories",
    "save_trajectories",
    "synthesize",
    "trajectory_stats",
]
