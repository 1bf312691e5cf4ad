"""The Ray runtime of a scale-out run: importing Ray (an optional extra) and connecting to a cluster.

:func:`require_ray` imports Ray or raises a one-line :class:`~agentperf_kit.errors.ConfigError` that names
``pip install 'agentperf-kit[ray]'``. :func:`connect` uses the runtime this process already has
(``ray.init`` called by the caller, e.g. a notebook or a test), else joins ``address`` (``auto``: the
cluster ``ray start`` made on this host; ``ray://host:port``: a Ray client connection, e.g. to KubeRay's
head service), else starts a local runtime for this process (:func:`agentperf_kit.study_exec.start_local_ray`:
loopback only, no dashboard, Ray's start-up waits raised and the start retried on a loaded host; no usage
statistics, token authentication off as nothing outside the host can reach it) that stays up until the
process exits, so that the levels of a sweep share it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ConfigError, TargetError

__all__ = ["connect", "require_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'agentperf-kit[ray]'"


def require_ray(why: str) -> Any:
    """The ``ray`` module; ConfigError naming the extra when it is not installed (``why``: what needed it,
    e.g. ``workers=2``)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{why} needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None, workers: int) -> Any:
    """A connected ``ray`` module (module docstring). ``workers`` sizes a local runtime (CPUs for the
    workers, at least 1 each). Raises TargetError when the cluster cannot be reached."""
    ray = require_ray(f"workers={workers}" if address is None else f"ray_address={address!r}")
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address is None:
            from ..study_exec import start_local_ray  # the study's local head: start-up waits raised, retried

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local runtime on loopback
            start_local_ray(max(workers, os.cpu_count() or 1))
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, Exception...
        if address is None:
            raise TargetError(
                f"a local Ray runtime for workers={workers} did not start (Ray's node must register within "
                "its fixed start-up limits; the machine may be overloaded): try again, or use workers=1 "
                "(in-process)"
            ) from None
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise TargetError(
            f"could not join the Ray cluster at {address!r}: {type(exc).__name__}: {first}; check the "
            "address (ray status on the head node shows it)"
        ) from None
    return ray
