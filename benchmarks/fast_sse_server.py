"""Compile and run ``fast_sse_server.c`` (a loopback C SSE server) from Python.

    with FastSSEServer(ttft_ms=200, itl_ms=20) as srv:
        srv.base_url          # http://127.0.0.1:PORT/v1
        srv.stats()           # counters (events, tokens, active streams, lateness, CPU) as a dict
        srv.reset()           # zero the counters
    srv.exit_line             # what the server printed at exit (timing accuracy, CPU time)

``ttft_ms=0, itl_ms=0`` streams as fast as the sockets take it. ``log=PATH`` writes the server's truth log
(one line per streamed request: true send times of its first and last token on CLOCK_MONOTONIC, the clock of
``time.perf_counter``; see the C source and :func:`read_truth_log`). Needs gcc (``compile_server``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fast_sse_server.c"


def compile_server(directory: str | os.PathLike | None = None) -> Path:
    """``gcc -O2`` the server into ``directory`` (default: a new temporary directory); returns the binary."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("fast_sse_server needs a C compiler (gcc or cc on PATH)")
    out = Path(directory or tempfile.mkdtemp(prefix="fast_sse_")) / "fast_sse_server"
    subprocess.run([gcc, "-O2", "-o", str(out), str(SOURCE)], check=True)
    return out


class FastSSEServer:
    def __init__(
        self,
        ttft_ms: float = 0.0,
        itl_ms: float = 0.0,
        binary: Path | None = None,
        log: str | os.PathLike | None = None,
    ) -> None:
        self.ttft_ms, self.itl_ms = ttft_ms, itl_ms
        self.log = log
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.exit_line = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FastSSEServer:
        binary = self.binary or compile_server()
        cmd = [str(binary), "--ttft-ms", str(self.ttft_ms), "--itl-ms", str(self.itl_ms)]
        if self.log is not None:
            cmd += ["--log", str(self.log)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"fast_sse_server did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split()[1])
        return self

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._get("/stats")

    def reset(self) -> None:
        self._get("/reset")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            _, err = self.proc.communicate(timeout=10)
            self.exit_line = err.strip().splitlines()[-1] if err.strip() else ""

    def __enter__(self) -> FastSSEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_truth_log(path: str | os.PathLike) -> list[dict]:
    """The server's truth log as dicts: ``id``, ``chat``, ``marker`` (16 digits or "-"), ``prompt_tokens``,
    ``max_tokens``, ``t_req``, ``t_first``, ``t_last`` (seconds, CLOCK_MONOTONIC; -1: never), ``tokens``,
    ``status`` (done or closed)."""
    rows = []
    with open(path) as f:
        names = f.readline().split()
        for line in f:
            parts = line.split()
            if len(parts) != len(names):
                continue  # a line cut by a kill
            row: dict = dict(zip(names, parts))
            for k in ("id", "chat", "prompt_tokens", "max_tokens", "tokens"):
                row[k] = int(row[k])
            for k in ("t_req", "t_first", "t_last"):
                row[k] = float(row[k])
            rows.append(row)
    return rows
