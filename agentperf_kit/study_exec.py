"""Where a study's sweeps run: Ray tasks (a local Ray head, or a cluster) or a local process pool.

:func:`run_point` is the unit of work, one grid point's sweep; it is a top-level function of this module,
so both a ``spawn`` process pool and Ray import it by name (nothing from the driver's ``__main__`` is
needed: a notebook or a script without a ``__main__`` guard works). :func:`execute` runs a list of points
and yields each result as it finishes, in completion order.

Executors (``executor``):

- ``"ray"``: one Ray task per point (``num_cpus=1``). With ``ray_address`` (``auto``, ``ray://host:port``,
  ``host:port``) it connects to that cluster; when Ray is already initialized in this process (a notebook,
  a test's head) it uses it; otherwise it starts a private local head bound to loopback with ``workers``
  CPUs and shuts it down at the end. At most ``workers`` tasks are in flight when ``workers`` is given.
- ``"process"``: a ``concurrent.futures`` pool of ``workers`` processes started with ``spawn``.
- ``"auto"``: Ray when an address is given, Ray is already initialized or Ray is installed; else the pool.

A worker's failure (an exception in the sweep, a crashed process or node) is a result with ``error``
set, never an exception out of :func:`execute`: the other points go on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from ._version import __version__
from .errors import ConfigError

__all__ = ["EXECUTORS", "execute", "resolve_executor", "run_point"]

EXECUTORS = ("auto", "ray", "process")


#: Ray settings (RayConfig overrides, read from the environment as ``RAY_<name>``) for a local head: its
def run_point(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one grid point's sweep (``payload``: ``point``, ``coordinates``, ``sweep`` (SweepConfig fields),
    ``out``) and return ``{"point", "rows", "error", "worker", "wall_s", "cpu_s", "toolkit_version"}``
    (``wall_s``, ``cpu_s``: the sweep's wall and CPU seconds in this process): ``rows``
    are the point's table rows (:func:`agentperf_kit.study.point_rows`), ``error`` a one-line reason when
    the sweep raised (``rows`` then empty)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {
        "point": payload["point"],
        "rows": [],
        "error": None,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "toolkit_version": __version__,
    }
    try:
        from .study import point_rows
        from .sweep import SweepConfig, run_sweep

        cfg = SweepConfig(**payload["sweep"], out=payload["out"])
        res = run_sweep(cfg, progress=False, side_workers=0)  # the study runs sweeps side by side
        out["rows"] = point_rows(
            payload["coordinates"], res.summary, payload.get("sweep_dir"), cfg.config_hash()
        )
    except Exception as exc:  # a result, not a lost exception: the study records it and goes on
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        out["error"] = " ".join(last.split())
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    return out


def ray_available() -> bool:
    """Whether Ray is installed, without importing it (``import ray`` takes seconds)."""
    import importlib.util

    if "ray" in sys.modules:
        return sys.modules["ray"] is not None
    return importlib.util.find_spec("ray") is not None


def resolve_executor(executor: str, ray_address: str | None) -> str:
    """``"ray"`` or ``"process"`` for ``executor`` (``auto``, ``ray``, ``process``); a request for Ray
    without Ray installed raises :class:`~agentperf_kit.errors.ConfigError` naming the install.

    ``auto`` takes Ray only where there is a cluster to use: ``ray_address`` given, ``RAY_ADDRESS`` set,
    or a Ray runtime already started in this process (a notebook that ran ``ray.init()``); otherwise the
    local process pool, since on one machine a private Ray head adds only its start-up (~9 s on the 2-core
    machine, docs/study.md) to what the pool does. ``ray`` always takes Ray (a private local head when no
    cluster is given)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if ray_address is not None and executor == "process":
        raise ConfigError(
            f"ray_address {ray_address!r} needs the Ray executor, got executor 'process'; drop one of them"
        )
    if executor == "process":
        return "process"
    wants_ray = executor == "ray" or ray_address is not None
    if executor == "auto" and not wants_ray:
        running = sys.modules.get("ray")
        started = running is not None and getattr(running, "is_initialized", lambda: False)()
        if not (started or os.environ.get("RAY_ADDRESS")):
            return "process"
    if ray_available():
        return "ray"
    if wants_ray:
        raise ConfigError(
            "Ray is not installed: pip install 'agentperf-kit[ray]' (or run the study on the local "
            "process pool: executor 'process', agentperf study --executor process)"
        )
    return "process"


def execute(
    payloads: list[dict[str, Any]],
    executor: str,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Run :func:`run_point` on every payload; yield each result as it finishes (completion order). Closing
    the generator (an exception, Ctrl-C) cancels the points not started and stops what it started."""
    if not payloads:
        return
    if executor == "ray":
        yield from _ray(payloads, workers, ray_address)
    else:
        yield from _pool(payloads, workers)


def _failed(payload: dict[str, Any], why: str) -> dict[str, Any]:
    return {"point": payload["point"], "rows": [], "error": why, "worker": None, "wall_s": None}


def _pool(payloads: list[dict[str, Any]], workers: int | None) -> Iterator[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n = min(workers or os.cpu_count() or 1, len(payloads))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
    try:
        with _main_not_rerun():  # the workers start during the first submits
            futures = {pool.submit(run_point, p): p for p in payloads}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    yield f.result()
                except Exception as exc:  # a worker process died (BrokenProcessPool) or could not start
                    yield _failed(futures[f], f"worker process failed: {type(exc).__name__}: {exc}")
    except BaseException:  # closed early (an error, Ctrl-C in a notebook): stop the sweeps running now
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()  # their sweeps resume from their measured levels on the next run
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Workers started inside this block do not import the driver's ``__main__`` (``spawn`` re-runs a
    script's top level in every worker, which breaks a script without a ``__main__`` guard, or one read
    from stdin): :func:`run_point` lives in this package, so the workers start as a notebook's do."""
    import sys

    main = sys.modules.get("__main__")
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__
    }
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


@contextlib.contextmanager
def _ray_runtime(workers: int | None, ray_address: str | None) -> Iterator[Any]:
    """Ray, initialized: the given cluster, the runtime this process already has, or a private local head
    (loopback, ``workers`` CPUs, no dashboard) that is shut down on exit."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    from .scaleout.runtime import connect, start_local_ray

    if ray_address is not None:
        connect(ray_address, workers or 1)  # TargetError naming the address when it cannot be reached
    else:
        start_local_ray(workers or os.cpu_count() or 1)
    try:
        yield ray
    finally:
        ray.shutdown()


def _ray(
    payloads: list[dict[str, Any]], workers: int | None, ray_address: str | None
) -> Iterator[dict[str, Any]]:
    with _ray_runtime(workers, ray_address) as ray:
        task = ray.remote(num_cpus=1, max_retries=1)(run_point)
        queue = list(payloads)
        limit = workers or len(payloads)
        running: dict[Any, dict[str, Any]] = {}
        try:
            while queue or running:
                while queue and len(running) < limit:
                    p = queue.pop(0)
                    running[task.remote(p)] = p
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    p = running.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # the task's worker or node died, or it could not start
                        why = " ".join(str(exc).split())[:300]
                        yield _failed(p, f"Ray task failed: {type(exc).__name__}: {why}")
        finally:
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
