"""A helper process that must not outlive its parent (a sweep's side-job worker, a scale-out level
process)."""

from __future__ import annotations

import os

__all__ = ["die_with_parent"]


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGTERM when ``parent`` (the pid that started it) dies, instead of running
    on as an orphan (killed, e.g. by ``timeout``); elsewhere the caller's closed stdin stops it. Exits at
    once when ``parent`` is already gone."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)
