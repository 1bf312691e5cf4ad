"""How loaded the machine is while a timing test runs, measured beside it (not assumed idle).

``with LoadProbe() as probe: ...`` runs a separate process that sleeps 10 ms at a time and records how
late each wake-up is (the same measure as the live client's event-loop lag monitor, but in a process of
its own, so it sees the machine, not the client). ``probe.p95_s`` is the P95 lateness over the block.
A timing test whose verdict depends on the machine (the client self-check) skips, with the figure, when
the machine itself was later than the budget: then the self-check is right to flag the run.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys, time, threading
late = []
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    t = time.perf_counter()
    time.sleep(0.01)
    late.append(max(0.0, time.perf_counter() - t - 0.01))
late.sort()
print(late[int(0.95 * (len(late) - 1))] if late else 0.0)
"""


class LoadProbe:
    """Context manager: P95 sleep lateness (s) of a separate process over the block (``p95_s``)."""

    def __init__(self) -> None:
        self.p95_s = float("nan")
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> LoadProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=30)
        self.p95_s = float(out.strip() or "nan")
