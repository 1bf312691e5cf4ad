"""Scale-out of live load generation on Ray: one level's agents across K worker processes or hosts.

``agentperf run|sweep --workers K [--ray-address ADDR]`` and ``LiveTarget(workers=K, ray_address=...)``
use :func:`run_live_workers` (:mod:`.driver`); the modules, one job each:

- :mod:`.runtime`: importing Ray (the extra ``agentperf-kit[ray]``), joining or starting a runtime;
- :mod:`.fleets`: the fleet split in two: a worker's share of the agents, the driver's ledger of the rules;
- :mod:`.worker`: the Ray actor that runs a share of the agents with the live replay's own code;
- :mod:`.pool`: the workers kept from one level to the next (a sweep starts them once);
- :mod:`.clock`: worker clock offsets by the min-RTT method;
- :mod:`.driver`: the level: placement, start, polling, the window over all workers, failures, files.

Nothing here imports Ray until a run asks for workers (docs/scale-out.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_live_workers"]


def run_live_workers(*args: Any, **kwargs: Any) -> Any:
    """:func:`agentperf_kit.scaleout.driver.run_live_workers` (imported on first use)."""
    from .driver import run_live_workers as run

    return run(*args, **kwargs)
