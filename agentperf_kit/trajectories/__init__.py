"""Trajectories: the model, the on-disk format, the generator, statistics, context fitting, importers.

Everything public is re-exported here; ``docs/trajectories.md`` documents the format and each part.
"""

from .importers import (
    IMPORTERS,
    import_aa_local,
    import_mini_swe_agent,
    import_mooncake,
    import_trajectories,
)
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
from .transform import FIT_MODES, fit_context

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_SEED",
    "DEFAULT_TRAJECTORIES_PATH",
    "FIT_MODES",
    "IMPORTERS",
    "TRAJECTORY_SCHEMA_VERSION",
    "SynthConfig",
    "Trajectory",
    "TrajectoryFormatError",
    "Turn",
    "default_trajectories",
    "fit_context",
    "format_stats",
    "import_aa_local",
    "import_mini_swe_agent",
    "import_mooncake",
    "import_trajectories",
    "load_trajectories",
    "save_trajectories",
    "synthesize",
    "trajectory_stats",
]
