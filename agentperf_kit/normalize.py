"""From max agents to agents per accelerator and per megawatt, with an explicit power scope.

- **Agents per accelerator** = max agents / number of accelerators serving (all of them: prefill and
  decode workers of a disaggregated deployment count).
- **Agents per MW** = max agents / (power in W / 1e6). Power is the whole system's, in watts, and always
  carries its scope:

  ``measured``     accelerator power sampled during the run (NVML), averaged over the steady window
                   (AA's convention; implies ~937 W per GB300, ~540 W per H200).
  ``declared``     a value the user states.
  ``modelled``     the simulator's power model (idle..TDP by utilization).
  ``provisioned``  all-in provisioned power per GPU (SemiAnalysis InferenceX: H100/H200 1.37 kW,
                   B200 1.71, B300 1.90, GB200 1.87, GB300 2.12, MI355X 2.09) x count.

Per-MW is None (never a guess) when power is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UnknownNameError

__all__ = [
    "POWER_SCOPES",
    "PROVISIONED_KW_PER_GPU",
    "PowerSpec",
    "agents_per_accelerator",
    "agents_per_mw",
    "provisioned_power_w",
]

POWER_SCOPES = ("measured", "declared", "modelled", "provisioned")

PROVISIONED_KW_PER_GPU: dict[str, float] = {
    "H100": 1.37,
    "H200": 1.37,
    "H800": 1.37,
    "B200": 1.71,
    "B300": 1.90,
    "GB200": 1.87,
    "GB300": 2.12,
    "MI355X": 2.09,
}


@dataclass(frozen=True, slots=True)
class PowerSpec:
    """Whole-system power in watts with its scope and where it came from."""

    watts: float | None
    scope: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.scope not in POWER_SCOPES:
            raise ValueError(f"power scope must be one of {', '.join(POWER_SCOPES)}, got {self.scope!r}")
        if self.watts is not None and not (self.watts > 0 and math.isfinite(self.watts)):
            raise ValueError(f"power must be a positive number of watts, got {self.watts!r}")


def provisioned_power_w(accelerator_type: str, count: int) -> float:
    """All-in provisioned power (W) of ``count`` accelerators of a type, from the InferenceX table."""
    key = accelerator_type.upper().replace(" ", "").replace("-", "")
    for name, kw in PROVISIONED_KW_PER_GPU.items():
        if key.startswith(name):
            return kw * 1000.0 * count
    raise UnknownNameError(
        f"no provisioned power for accelerator type {accelerator_type!r}; known: "
        f"{', '.join(PROVISIONED_KW_PER_GPU)} (or give --power-w with --power-scope declared)"
    )


def agents_per_accelerator(max_agents: float, accelerators: int | None) -> float | None:
    """max agents / accelerators (None when the count is unknown)."""
    if not accelerators:
        return None
    return max_agents / accelerators


def agents_per_mw(max_agents: float, power_w: float | None) -> float | None:
    """max agents per megawatt of whole-system power (None when power is unknown)."""
    if power_w is None or not power_w > 0:
        return None
    return max_agents / (power_w / 1e6)
