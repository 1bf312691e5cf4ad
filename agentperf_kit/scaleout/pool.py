"""The workers of a scale-out run, kept from one level to the next: :class:`WorkerPool`.

A worker is a Ray actor (:class:`.worker.LevelWorker`) and the level process it starts; each takes
seconds of CPU to start (a Ray worker process imports Ray, the level process the replay's modules). A
pool places K of them once and lends them to one level after another (the levels of a sweep:
:class:`~agentperf_kit.targets.LiveTarget` keeps one for its levels), so a sweep pays those start-ups once
per worker instead of once per level.

- A worker that failed in a level (its actor or level process died, it stopped answering, it did not
  finish its drain) is removed at that level's end (:meth:`WorkerPool.release`); the next level gets a
  fresh worker in its place. One found dead when a level asks for the workers (:meth:`WorkerPool.acquire`
  asks each kept actor for its host first) is replaced the same way.
- An error or Ctrl-C in the driver during a level removes every worker (:meth:`WorkerPool.close`); the
  pool can be used again and places new ones.
- :meth:`WorkerPool.close` (or leaving ``with``) ends every worker: each level process is asked to end
  (its stdin closed), then the actors are killed. A pool not closed goes with its Ray runtime when the
  process exits (an actor dies with the driver that made it, its level process with the actor).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from ..errors import TargetError
from .runtime import connect
from .worker import LevelWorker

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    """K scale-out workers kept across levels (module docstring).

    Args:
        workers: how many workers (each takes 1 CPU of the cluster).
        ray_address: the cluster (``auto``, ``ray://host:port``); None: this process's Ray runtime, a local
            one started on first use when there is none (:func:`.runtime.connect`).

    Attributes:
        started: workers placed so far (K, plus one for each replacement).
        levels: levels the pool's workers have run.
    """

    def __init__(self, workers: int, ray_address: str | None = None) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self.ray_address = ray_address
        self.started = 0
        self.levels = 0
        self._ray: Any = None
        self._actors: dict[int, Any] = {}
        self._hosts: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        where = self.ray_address or "local"
        return f"<WorkerPool {len(self._actors)}/{self.workers} workers on {where}, {self.levels} levels>"

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ray(self) -> Any:
        """The connected ``ray`` module (connects, or starts a local runtime, on first use)."""
        if self._ray is None:
            self._ray = connect(self.ray_address, self.workers)
        return self._ray

    def acquire(self, timeout_s: float) -> list[tuple[int, Any, dict[str, Any]]]:
        """The K workers for a level, as ``(index, actor, host)``: the kept ones that still answer, and new
        ones placed (spread over the cluster's nodes) for the rest. Raises TargetError when the cluster
        does not place them within ``timeout_s`` seconds."""
        ray = self.ray
        if self._actors:  # kept workers: still there?
            refs = {i: a.host.remote() for i, a in self._actors.items()}
            for i, ref in refs.items():
                try:
                    self._hosts[i] = ray.get(ref, timeout=min(timeout_s, 60.0))
                except ray.exceptions.RayError as exc:
                    log.warning("worker %d is gone (%s); a new one takes its place", i, type(exc).__name__)
                    self._remove(i)
        missing = [i for i in range(self.workers) if i not in self._actors]
        if missing:
            cls = ray.remote(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD")(LevelWorker)
            for i in missing:
                self._actors[i] = cls.remote()
            self.started += len(missing)
            try:
                hosts = ray.get([self._actors[i].host.remote() for i in missing], timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                self.close()
                raise TargetError(
                    f"the Ray cluster did not place {len(missing)} workers (1 CPU each) within "
                    f"{timeout_s:g} s; check its free CPUs (ray status) or use fewer workers"
                ) from None
            except ray.exceptions.RayError as exc:
                self.close()
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                raise TargetError(f"a worker did not start: {type(exc).__name__}: {first}") from None
            self._hosts.update(zip(missing, hosts))
        self.levels += 1
        return [(i, self._actors[i], self._hosts[i]) for i in range(self.workers)]

    def release(self, failed: Iterable[int]) -> None:
        """A level ended: the workers ``failed`` are removed (the next level places new ones)."""
        for i in failed:
            self._remove(i)

    def close(self) -> None:
        """End every worker: level processes asked to end, then the actors killed."""
        if not self._actors:
            return
        ray = self.ray
        refs = [a.shutdown.remote() for a in self._actors.values()]
        with contextlib.suppress(Exception):  # a worker that does not answer is killed anyway
            ray.get(refs, timeout=10)
        for i in list(self._actors):
            self._remove(i)

    def _remove(self, i: int) -> None:
        actor = self._actors.pop(i, None)
        self._hosts.pop(i, None)
        if actor is not None:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(actor, no_restart=True)
