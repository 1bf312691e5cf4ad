"""The configuration of a study: a grid of simulated sweeps (:class:`StudyConfig`, ``study.toml``).

A study crosses five axes, each a list: simulated ``deployments`` (presets, ``agentperf presets``, or twin
``PATH.toml`` files), tier presets (``tiers``), trajectory sets (``trajectories``: ``"default"`` for the
built-in set, or a file), efficiency sets (``efficiency``: ``low``, ``mid``, ``high``) and what-if knob sets
(``what_if``: ``"none"`` or a knob string such as ``"tool_delay=0.5,output=2"``, docs/frontier.md). Every
combination is one grid point, one sweep; the ``[sweep]`` table holds the :class:`~agentperf_kit.sweep.
SweepConfig` fields all points share (``level_duration_s``, ``max_agents``, ``seed``...). The band of each
sweep (``band``) is off by default in a study: the efficiency axis measures the low and high sets as points
of their own. Relative paths in the file are relative to the file's directory. See ``docs/study.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["AXES", "StudyConfig", "StudyConfigError", "StudyPoint"]

#: the grid axes, in the order points are numbered (the last one varies fastest)
AXES = ("deployments", "tiers", "trajectories", "efficiency", "what_if")

#: ``[sweep]`` keys a study sets per point (an axis) or itself (``out``)
_AXIS_FIELDS = {
    "target": "deployments",
    "tiers": "tiers",
    "trajectories": "trajectories",
    "efficiency": "efficiency",
    "what_if": "what_if",
}


class StudyConfigError(ConfigError):
    """A study configuration is invalid, or does not match the one of the directory being resumed."""


@dataclass(frozen=True)
class StudyPoint:
    """One grid point: its coordinates and the keyword arguments of its
    :class:`~agentperf_kit.sweep.SweepConfig` (without ``out``)."""

    index: int
    deployment: str
    tiers: str
    trajectories: str
    efficiency: str
    what_if: str
    sweep: dict[str, Any]

    @property
    def point_id(self) -> str:
        """``p0000``, ``p0001``...: the grid index (stable for one configuration, which resume checks)."""
        return f"p{self.index:04d}"

    def coordinates(self) -> dict[str, Any]:
        return {
            "point": self.point_id,
            "deployment": self.deployment,
            "tier_preset": self.tiers,
            "trajectories": self.trajectories,
            "efficiency": self.efficiency,
            "what_if": self.what_if,
        }


@dataclass(frozen=True)
class StudyConfig:
    """A grid of simulated sweeps (see the module docstring and ``docs/study.md``).

    Each axis is a tuple of strings (a single string is taken as a one-item list); ``sweep`` holds the
    shared :class:`~agentperf_kit.sweep.SweepConfig` fields; ``base_dir`` is where relative paths
    (trajectory files, twin presets) are resolved from (the TOML file's directory; not hashed)."""

    deployments: tuple[str, ...] = ("h200x8-dsv4pro",)
    tiers: tuple[str, ...] = ("aa-dsv4pro",)
    trajectories: tuple[str, ...] = ("default",)
    efficiency: tuple[str, ...] = ("mid",)
    what_if: tuple[str, ...] = ("none",)
    sweep: dict[str, Any] = field(default_factory=dict)
    base_dir: str | None = None
    source: str | None = None  # the TOML file, for messages (not hashed)

    def __post_init__(self) -> None:
        for axis in AXES:
            object.__setattr__(self, axis, self._axis(axis, getattr(self, axis)))
        if not isinstance(self.sweep, dict):
            raise self._error(f"[sweep] must be a table, got {type(self.sweep).__name__}")
        object.__setattr__(self, "sweep", {"band": False, **self.sweep})
        self._check_sweep_keys()
        object.__setattr__(self, "what_if", tuple(self._canonical_what_if(w) for w in self.what_if))
        for e in self.efficiency:
            if e not in ("low", "mid", "high"):
                raise self._error(f"[study] efficiency: {e!r} is not an efficiency set; use low, mid or high")
        object.__setattr__(self, "_points", self._build_points())  # every point's SweepConfig: errors now

    # -- checks ------------------------------------------------------------------------------------------

    def _error(self, msg: str) -> StudyConfigError:
        return StudyConfigError(f"{self.source}: {msg}" if self.source else msg)

    def _axis(self, name: str, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise self._error(
                f"[study] {name} must be a list of strings (e.g. {name} = [{_EXAMPLES[name]}]), got {value!r}"
            )
        items = [v.strip() for v in items]
        if not items:
            raise self._error(f"[study] {name} is empty; give at least one value (e.g. [{_EXAMPLES[name]}])")
        dup = sorted({v for v in items if items.count(v) > 1})
        if dup:
            raise self._error(f"[study] {name} lists {', '.join(map(repr, dup))} twice; list each value once")
        if "" in items and name != "what_if":
            raise self._error(f"[study] {name} has an empty string; remove it")
        return tuple(items)

    def _check_sweep_keys(self) -> None:
        from .sweep_config import SweepConfig

        known = {f.name for f in dataclasses.fields(SweepConfig)}
        for key in self.sweep:
            if key in _AXIS_FIELDS:
                raise self._error(
                    f"[sweep] {key}: a study sets it per grid point; list the values in [study] "
                    f"{_AXIS_FIELDS[key]} instead"
                )
            if key == "out":
                raise self._error("[sweep] out: a study writes each sweep under its own directory; remove it")
            if key not in known:
                raise self._error(
                    f"[sweep] unknown key {key!r}; known: {', '.join(sorted(known - set(_AXIS_FIELDS)))}"
                )

    def _canonical_what_if(self, spec: str) -> str:
        from .whatif import parse_what_if, what_if_string

        if spec in ("", "none"):
            return "none"
        try:
            knobs = parse_what_if(spec)
        except ConfigError as exc:
            raise self._error(f"[study] what_if {spec!r}: {exc}") from None
        for k in ("deployment", "trajectories"):
            if k in knobs:
                raise self._error(
                    f"[study] what_if {spec!r}: the {k} knob is an axis of the study; list it in [study] "
                    f"{'deployments' if k == 'deployment' else 'trajectories'} instead"
                )
        return what_if_string(knobs) if knobs else "none"

    def _path(self, p: str) -> str:
        """A path of the file, resolved from ``base_dir`` when relative."""
        if self.base_dir and not Path(p).is_absolute():
            return str(Path(self.base_dir) / p)
        return p

    def _build_points(self) -> list[StudyPoint]:
        import itertools

        from .sim.presets import get_deployment
        from .slo import get_tier_preset
        from .sweep_config import SweepConfig, SweepConfigError

        for dep in self.deployments:
            try:
                get_deployment(self._path(dep) if dep.lower().endswith(".toml") else dep)
            except (ConfigError, KeyError, OSError, ValueError) as exc:
                why = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                raise self._error(
                    f"[study] deployments {dep!r}: {why} (a preset name, agentperf presets, or a twin "
                    "PATH.toml relative to the study file)"
                ) from None
        for tiers in self.tiers:
            try:
                get_tier_preset(tiers)
            except (ConfigError, KeyError, ValueError) as exc:
                why = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                raise self._error(f"[study] tiers {tiers!r}: {why}") from None
        points = []
        for i, (dep, tiers, traj, eff, wi) in enumerate(
            itertools.product(self.deployments, self.tiers, self.trajectories, self.efficiency, self.what_if)
        ):
            target = f"sim:{self._path(dep) if dep.lower().endswith('.toml') else dep}"
            kwargs = dict(
                self.sweep,
                target=target,
                tiers=tiers,
                trajectories=None if traj == "default" else self._path(traj),
                efficiency=eff,
                what_if=None if wi == "none" else wi,
            )
            try:
                SweepConfig(**kwargs)
            except (SweepConfigError, ConfigError) as exc:  # the axes are checked: a [sweep] value
                raise self._error(f"[sweep] {exc}") from None
            points.append(StudyPoint(i, dep, tiers, traj, eff, wi, kwargs))
        return points

    # -- the grid -----------------------------------------------------------------------------------------

    def points(self) -> list[StudyPoint]:
        """Every grid point, in order (deployments outermost, what-if innermost)."""
        return list(self.__dict__["_points"])

    def trajectory_files(self) -> dict[str, str]:
        """Each trajectory set given as a file: its label (as written) -> its resolved path."""
        return {t: self._path(t) for t in self.trajectories if t != "default"}

    def measurement_dict(self) -> dict[str, Any]:
        """What the study measures (axes and the shared sweep fields; paths as written): hashed for resume
        checks."""
        axes = {axis: list(getattr(self, axis)) for axis in AXES}
        return {**axes, "sweep": dict(sorted(self.sweep.items()))}

    def config_hash(self) -> str:
        from .schema import strict_json_dumps

        text = strict_json_dumps(self.measurement_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> StudyConfig:
        """Load ``[study]`` (the axes) and ``[sweep]`` (shared sweep fields) from a TOML file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise StudyConfigError(f"{path}: cannot read the study config: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise StudyConfigError(f"{path}: not valid TOML ({exc}); see docs/study.md") from None
        unknown = sorted(set(data) - {"study", "sweep"})
        if unknown:
            raise StudyConfigError(
                f"{path}: unknown table or key(s) {', '.join(unknown)}; a study file has [study] (the grid "
                "axes) and [sweep] (settings every sweep shares), docs/study.md"
            )
        study = data.get("study", {})
        if not isinstance(study, dict):
            raise StudyConfigError(f"{path}: [study] must be a table, got {type(study).__name__}")
        bad = sorted(set(study) - set(AXES))
        if bad:
            raise StudyConfigError(
                f"{path}: [study] unknown key(s) {', '.join(bad)}; known: {', '.join(AXES)} (other sweep "
                "settings go in [sweep])"
            )
        return cls(
            **study,
            sweep=data.get("sweep", {}),
            base_dir=str(path.resolve().parent),
            source=str(path),
        )


_EXAMPLES = {
    "deployments": '"h200x8-dsv4pro", "b300x8-dsv4pro"',
    "tiers": '"aa-dsv4pro"',
    "trajectories": '"default"',
    "efficiency": '"low", "mid", "high"',
    "what_if": '"none", "tool_delay=0.5"',
}
