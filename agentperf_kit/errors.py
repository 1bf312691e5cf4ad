"""The library's exception tree: one root, a few branches, each speaking the library's language.

Every error the library raises on purpose derives from :class:`AgentperfError`, so a notebook can write
``except agentperf_kit.AgentperfError`` and a CLI can map any of them to one line and an exit code
(``agentperf_kit.cli``: 2 for bad input or a failed preflight, 3 for a run that could not be measured
validly). Messages name the argument (not a CLI flag), the value seen and what would work.

::

    AgentperfError
    |- ConfigError            a parameter or configuration value is invalid (type, range, unknown name)
    |   |- UnknownNameError   an unknown preset or set name (also a KeyError, for older callers)
    |   |- SweepConfigError   a sweep configuration, or a resume that does not match the directory
    |- InputFormatError       a file the user gave is malformed (names file, line, field and the fix)
    |   |- TrajectoryFormatError, ImportFormatError
    |- TargetError            the target cannot be used: unreachable, invalid URL, unknown model (preflight)
    |- OutputError            results cannot be written (directory not empty, unwritable, disk full)
    |- MeasurementError       a run ended but could not be measured validly (the reason is in the message)

Classes that existed before the tree keep their old base (``ValueError``) as a second base, so code that
caught ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "AgentperfError",
    "ConfigError",
    "InputFormatError",
    "MeasurementError",
    "OutputError",
    "SimulatorInvariantError",
    "TargetError",
    "UnknownNameError",
]


class AgentperfError(Exception):
    """Root of every error agentperf-kit raises on purpose."""

    #: exit code the CLI uses for this error (2: bad usage or preflight; 3: not validly measured)
    exit_code: int = 2


class ConfigError(AgentperfError, ValueError):
    """A parameter or configuration value is invalid: wrong type, out of range, or an unknown name."""


class UnknownNameError(ConfigError, KeyError):
    """An unknown preset or set name; the message lists the known ones. Also a ``KeyError`` so code that
    caught the old ``KeyError`` keeps working; unlike ``KeyError`` its text carries no extra quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputFormatError(AgentperfError, ValueError):
    """A file the user supplied is malformed; the message names the file, line, field and fix."""


class TargetError(AgentperfError):
    """The target cannot be used (unreachable, invalid URL, unknown model); found before any agent runs."""


class OutputError(AgentperfError):
    """Results cannot be written where asked (directory not empty, not writable, disk full)."""


class MeasurementError(AgentperfError):
    """A run ended but could not be measured validly; the message says why."""

    exit_code = 3


class SimulatorInvariantError(AgentperfError, RuntimeError):
    """An internal invariant of the simulated engine broke (a bug in the simulator, not in the input):
    e.g. a submitted request that was neither finished, rejected nor cancelled at the end of a run.
    (Defined here, outside the compiled simulator core, because an exception class cannot be compiled.)"""
