"""The Ray runtime of a scale-out run: importing Ray (an optional extra) and connecting to a cluster.

:func:`require_ray` imports Ray or raises a one-line :class:`~agentperf_kit.errors.ConfigError` that names
``pip install 'agentperf-kit[ray]'``. :func:`connect` uses the runtime this process already has
(``ray.init`` called by the caller, e.g. a notebook or a test), else joins ``address`` (``auto``: the
cluster ``ray start`` made on this host; ``ray://host:port``: a Ray client connection, e.g. to KubeRay's
head service), else starts a local runtime for this process (loopback only, no dashboard, no usage
statistics, token authentication off as nothing outside the host can reach it) that stays up until the
process exits, so that the levels of a sweep share it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from ..errors import ConfigError, TargetError

__all__ = ["connect", "require_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'agentperf-kit[ray]'"
LOCAL_ATTEMPTS = 3  # starts of a local runtime before giving up (Ray waits a fixed 30 s for its raylet)


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
    for name, value in (
        ("RAY_USAGE_STATS_ENABLED", "0"),
        # the raylet waits 15 s by default for its agent processes; a loaded machine needs longer
        ("RAY_agent_register_timeout_ms", "120000"),
    ):
        os.environ.setdefault(name, value)
    attempts = LOCAL_ATTEMPTS if address is None else 1
    for attempt in range(1, attempts + 1):
        try:
            _init(ray, address, workers)
            break
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, Exception...
            if attempt < attempts:  # a loaded host: the raylet missed Ray's fixed 30 s start-up wait
                log.warning("Ray did not start (%s); trying again (%d of %d)", exc, attempt + 1, attempts)
                with contextlib.suppress(Exception):
                    ray.shutdown()
                continue
            where = "a local Ray runtime" if address is None else f"the Ray cluster at {address!r}"
            raise TargetError(
                f"could not start or join {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                + ("" if address is None else "; check the address (ray status on the head node shows it)")
            ) from None
    return ray


def _init(ray: Any, address: str | None, workers: int) -> None:
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local runtime on loopback
        ray.init(
            num_cpus=max(workers, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
