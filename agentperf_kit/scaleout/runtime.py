"""The Ray runtime of a scale-out run: importing Ray (an optional extra) and connecting to a cluster.

:func:`require_ray` imports Ray or raises a one-line :class:`~agentperf_kit.errors.ConfigError` that names
``pip install 'agentperf-kit[ray]'``. :func:`connect` uses the runtime this process already has
(``ray.init`` called by the caller, e.g. a notebook or a test), else joins ``address`` (``auto``: the
cluster ``ray start`` made on this host; ``ray://host:port``: a Ray client connection, e.g. to KubeRay's
head service), else starts a local runtime for this process (:func:`start_local_ray`: loopback only, no
dashboard, Ray's start-up waits raised and the start retried on a loaded host; no usage
statistics, token authentication off as nothing outside the host can reach it) that stays up until the
process exits, so that the levels of a sweep share it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from ..errors import ConfigError, TargetError

__all__ = ["connect", "require_ray", "start_local_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'agentperf-kit[ray]'"

#: the raylet waits this long for its agents to start; Ray's defaults (15 s) are too short on a loaded 2-core
#: machine, where the dashboard agent alone can take longer to start (the raylet then aborts)
_SLOW_START_ENV = {
    "RAY_" + "raylet_start_wait_time_s": "120",
    "RAY_" + "agent_register_timeout_ms": "120000",
}

#: Ray lowers its worker processes' scheduling priority by default (nice +15 over the raylet's): the load
#: generator's workers, and the level processes they start, would then get the CPU only when nothing
#: else wants it, and their event loops would wake late on a busy host (the send-delay self-check fails
#: first). The local runtime keeps them at the driver's priority; on a cluster set it on every node
#: (``RAY_worker_niceness=0 ray start ...``, docs/scale-out.md).
WORKER_NICENESS_ENV = {"RAY_" + "worker_niceness": "0"}


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


def start_local_ray(num_cpus: int, *, attempts: int = 3) -> None:
    """Start a private local Ray head in this process: ``num_cpus`` CPUs, bound to loopback, no dashboard,
    workers' output not forwarded, token authentication off (nothing outside the host reaches it), the
    raylet's waits for its agents raised (:data:`_SLOW_START_ENV`), the worker processes at this
    process's scheduling priority (:data:`WORKER_NICENESS_ENV`). Ray's own fixed limit (its raylet must
    register within 30 s) is sometimes missed on a loaded machine, so the start is tried ``attempts`` times
    before :class:`~agentperf_kit.errors.TargetError` is raised."""
    ray = require_ray(f"a local Ray runtime of {num_cpus} CPUs")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {**_SLOW_START_ENV, **WORKER_NICENESS_ENV}
    added = [k for k in env if k not in os.environ]
    os.environ.update({k: env[k] for k in added})  # the raylet inherits them
    try:
        for attempt in range(1, attempts + 1):
            try:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    _node_ip_address="127.0.0.1",
                )
                return
            except Exception as exc:  # Ray raises a bare Exception when its node misses a start-up limit
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if attempt == attempts:
                    raise TargetError(
                        f"a local Ray head did not start after {attempts} attempts ({exc}); the machine may "
                        "be overloaded: try again, or run in this process (workers=1, or a study's executor "
                        "'process')"
                    ) from None
                log.warning(
                    "a local Ray head did not start (%s); trying again (%d/%d)", exc, attempt + 1, attempts
                )
    finally:
        for k in added:
            os.environ.pop(k, None)
