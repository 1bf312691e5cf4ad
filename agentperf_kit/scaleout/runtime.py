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
import inspect
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError, TargetError

__all__ = ["connect", "require_ray", "start_local_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'agentperf-kit[ray]'"

#: Ray's adjustable start-up waits, raised: a loaded 2-core machine starts Ray's processes slowly. (The
#: raylet's fixed 15 s wait for its agents' port files is not one of them: :func:`_head_params` avoids it.)
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

#: A private local runtime that only hosts the load generator's workers needs none of Ray's bookkeeping for
#: its dashboard and state API, whose timers cost CPU every second beside the agents (with one idle actor on
#: the 2-core machine: 0.043 CPU-s/s for the whole runtime, 0.022 with these, :data:`NO_IDLE_WORKERS_ENV`
#: and :func:`_head_params`: benchmarks/ray_idle_cpu.py). No task events (the state API's task list) and
#: no metrics export; where Ray starts a log monitor (:func:`_head_params` asks it not to), it looks for
#: new log files every 5 s, not every 0.1 s (it forwards nothing: ``log_to_driver=False``); the raylet's
#: resource report, local disk, memory and collector checks every 1 s instead of every 0.1-0.25 s; the
#: dashboard agent's node statistics every 60 s.
QUIET_RUNTIME_ENV = {
    "RAY_" + "task_events_report_interval_ms": "0",
    "RAY_" + "enable_metrics_collection": "0",
    "RAY_" + "LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
    "RAY_" + "raylet_report_resources_period_milliseconds": "1000",
    "RAY_" + "local_fs_monitor_interval_ms": "1000",
    "RAY_" + "memory_monitor_refresh_ms": "1000",
    "RAY_" + "raylet_check_gc_period_milliseconds": "1000",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
}

#: Ray starts worker processes for tasks to come and keeps up to one idle per CPU (each took 0.01 CPU-s/s idle
#: on the 2-core machine); the scale-out workers are actors, each with a process of its own, so a runtime
#: started for them starts none ahead and keeps none idle (fewer processes starting beside its agents too). A
#: study's tasks, which reuse idle workers, keep Ray's default.
NO_IDLE_WORKERS_ENV = {
    "RAY_" + "enable_worker_prestart": "0",
    "RAY_" + "prestart_worker_first_driver": "0",  # else one is started when the driver connects, then killed
    "RAY_" + "num_workers_soft_limit": "0",
}


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
            start_local_ray(max(workers, os.cpu_count() or 1), idle_workers=False)
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


def start_local_ray(num_cpus: int, *, attempts: int = 3, idle_workers: bool = True) -> None:
    """Start a private local Ray head in this process: ``num_cpus`` CPUs, bound to loopback, no dashboard,
    workers' output not forwarded, token authentication off (nothing outside the host reaches it), the
    raylet's waits for its agents raised (:data:`_SLOW_START_ENV`), the worker processes at this
    process's scheduling priority (:data:`WORKER_NICENESS_ENV`), Ray's dashboard and state bookkeeping
    quietened (:data:`QUIET_RUNTIME_ENV`; ``idle_workers`` False: no idle worker processes kept,
    :data:`NO_IDLE_WORKERS_ENV`), its agents' ports given up front and no log monitor or
    autoscaler process (:func:`_head_params`). Ray's own fixed limit (its raylet must register within
    30 s) can still be missed on a loaded machine, so the start is tried ``attempts`` times before
    :class:`~agentperf_kit.errors.TargetError` is raised."""
    ray = require_ray(f"a local Ray runtime of {num_cpus} CPUs")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {**_SLOW_START_ENV, **WORKER_NICENESS_ENV, **QUIET_RUNTIME_ENV}
    if not idle_workers:
        env.update(NO_IDLE_WORKERS_ENV)
    added = [k for k in env if k not in os.environ]
    os.environ.update({k: env[k] for k in added})  # the raylet inherits them
    try:
        for attempt in range(1, attempts + 1):
            try:
                with _head_params(ray) as node:
                    ray.init(
                        num_cpus=num_cpus,
                        include_dashboard=False,
                        log_to_driver=False,
                        configure_logging=False,
                        _node_ip_address="127.0.0.1",
                    )
                _wait_for_agents(ray, node)
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


#: what :func:`_head_params` sets on the head's parameters: the agents' ports, and which optional processes
#: run (``ray start`` has these as options: ``--metrics-agent-port`` and the other agent ports,
#: ``--include-log-monitor``, ``--no-monitor``)
_AGENT_PORTS = (
    "metrics_agent_port",
    "metrics_export_port",
    "runtime_env_agent_port",
    "dashboard_agent_listen_port",
)


@contextlib.contextmanager
def _head_params(ray: Any) -> Iterator[dict[str, str]]:
    """During ``ray.init``: the head node's agents' ports chosen up front (free loopback ports), and no log
    monitor (it forwards workers' output to the driver: ``log_to_driver=False`` reads none) or autoscaler
    monitor (a local node of fixed size).

    Why the ports: Ray (2.60) lets its dashboard agent and runtime-environment agent pick their ports and
    write them to files in the session directory, and the raylet waits a fixed 15 s for each file (not
    one of its adjustable waits: ``raylet.out`` says ``Timed out waiting for file
    .../metrics_agent_port_...`` and the raylet aborts). On a loaded 2-core machine an agent's start-up
    (a Python process importing Ray) can take longer. Given a port, the raylet does not wait for its file;
    the dashboard agent's HTTP port, which the raylet takes from no option, is written to its file here
    just before the raylet starts (the value the agent itself writes: the port given to it, or -1 when
    Ray is installed without the dashboard's packages and the agent serves no HTTP). The agents join when
    they are up (:func:`_wait_for_agents` waits for them, with a longer limit). ``ray.init`` takes none
    of these parameters, so its ``RayParams`` class and the raylet's start are wrapped while it runs; with
    a Ray whose internals differ, nothing is changed. Yields a dict that holds the node's ``session_dir``
    and ``node_id`` once its raylet has been started."""
    module: Any = getattr(getattr(ray, "_private", None), "parameter", None)
    services: Any = getattr(getattr(ray, "_private", None), "services", None)
    base = getattr(module, "RayParams", None)
    start_raylet = getattr(services, "start_raylet", None)
    persist_port = getattr(getattr(ray, "_raylet", None), "persist_port", None)
    listen_name = getattr(getattr(ray, "_raylet", None), "DASHBOARD_AGENT_LISTEN_PORT_NAME", None)
    if (
        base is None
        or start_raylet is None
        or persist_port is None
        or listen_name is None
        or not all(hasattr(base(), name) for name in (*_AGENT_PORTS, "include_log_monitor", "no_monitor"))
    ):
        yield {}
        return
    node: dict[str, str] = {}
    ports = dict(zip(_AGENT_PORTS, _free_ports(len(_AGENT_PORTS))))
    dependency_error = getattr(getattr(ray._private, "utils", None), "get_dashboard_dependency_error", None)
    minimal = dependency_error is not None and dependency_error() is not None
    listen = -1 if minimal else ports["dashboard_agent_listen_port"]

    class _HeadParams(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name, port in ports.items():  # the agent's HTTP port's default (52365) is every head's
                if not getattr(self, name, None) or name == "dashboard_agent_listen_port":
                    setattr(self, name, port)
            if getattr(self, "include_log_monitor", None) is None:
                setattr(self, "include_log_monitor", False)  # noqa: B010 (Ray's attribute, not typed)
            setattr(self, "no_monitor", True)  # noqa: B010

    def _start_raylet(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(start_raylet).bind(*args, **kwargs)
        node.update(session_dir=bound.arguments["session_dir"], node_id=bound.arguments["node_id"])
        persist_port(node["session_dir"], node["node_id"], listen_name, listen)
        return start_raylet(*args, **kwargs)

    module.RayParams, services.start_raylet = _HeadParams, _start_raylet
    try:
        yield node
    finally:
        module.RayParams, services.start_raylet = base, start_raylet


def _wait_for_agents(ray: Any, node: dict[str, str], timeout_s: float = 120.0) -> None:
    """Wait until the node's dashboard and runtime-environment agents have written their port files (they
    are up): the raylet no longer waits for them (:func:`_head_params`), and their start-up (2-3 CPU-s
    each on the 2-core machine) should not run beside a level's agents. Minutes on a loaded machine are
    fine; after ``timeout_s`` the runtime is used without them (a warning): it runs the workers' actors
    all the same."""
    if not node:
        return
    raylet = getattr(ray, "_raylet", None)
    names = [getattr(raylet, n, None) for n in ("METRICS_AGENT_PORT_NAME", "RUNTIME_ENV_AGENT_PORT_NAME")]
    files = [os.path.join(node["session_dir"], f"{n}_{node['node_id']}") for n in names if n]
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(f) for f in files):
        if time.monotonic() > deadline:
            log.warning("the local Ray runtime's agents did not start within %g s; going on", timeout_s)
            return
        time.sleep(0.1)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now (bound and released; the agents bind them a moment later)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
