"""Trajectories: the model, the on-disk format, the synthetic generator, importers and statistics."""

from .model import Trajectory, TrajectoryFormatError, Turn

__all__ = ["Trajectory", "TrajectoryFormatError", "Turn"]
