"""Frames on the pipes between a scale-out worker's actor and its level process, and host identity.

Kept apart from :mod:`.child` so that the actor's process (:mod:`.worker`) imports only this: a frame is
an 8-byte little-endian length, then a pickle.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import IO, Any

__all__ = ["HEADER", "frame", "host_identity", "read_frame", "write_frame"]

HEADER = struct.Struct("<Q")


def frame(obj: Any) -> bytes:
    """One frame: the length of the pickle, then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def write_frame(f: IO[bytes], obj: Any) -> None:
    """Write one frame to a blocking binary file and flush it."""
    f.write(frame(obj))
    f.flush()


def read_frame(f: IO[bytes]) -> Any:
    """Read one frame from a blocking binary file; EOFError at the end (or a torn frame)."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError
    (n,) = HEADER.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def host_identity() -> dict[str, Any]:
    """This process's host: name, pid, the kernel's boot id (equal boot ids: one ``CLOCK_MONOTONIC``,
    which ``time.perf_counter_ns`` reads on Linux) and its scheduling niceness (``nice``)."""
    import socket

    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "boot_id": boot_id, "nice": os.nice(0)}
