"""Independent fault matrix for issue 11 ("Live runs you can trust"), run from the outside.

A small fault-injecting OpenAI-compatible server written for this script only (it does not reuse
tests/sse_servers.py, so it is an independent check of the client) serves one fault per URL prefix
(`http://127.0.0.1:PORT/<fault>/v1`). The driver runs the real CLI (`python -m agentperf_kit.cli run ...`,
`sweep ...`, `report ...`, `serve-sim ...`) as subprocesses with short windows against each fault and
compares what happened with what should: exit code, error class in requests.parquet, rows == streamed
requests the server saw, in-flight <= N, the verdict effect, one-line errors, secrets never written.

    PYTHONPATH=$PWD python benchmarks/fault_matrix.py [--only NAME,...]

Prints a table (PASS/FAIL per row) and writes it to benchmarks/results/fault_matrix.txt with the date,
commit and load. Takes about 3-5 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pandas as pd
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SECRET = "s3cr3t-FMX-token-7741"
MODEL = "real-model"

# --------------------------------------------------------------------------------------------
# The fault server
# --------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the server saw for one fault: streamed requests, probes, in flight, headers."""

    streamed: int = 0
    probes: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    send_times: list[float] = field(default_factory=list)
    auth: list[list[str]] = field(default_factory=list)


STATS: dict[str, Stats] = {}


def _chunk(text: str | None = None, finish: object = None, usage: dict | None = None) -> bytes:
    choice: dict = {"index": 0, "delta": {"content": text} if text is not None else {}}
    choice["finish_reason"] = finish
    obj: dict = {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice]}
    if usage is not None:
        obj = {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def _stream_tokens(
    resp: web.StreamResponse,
    n: int,
    *,
    rate: float | None,
    usage: dict,
    finish: object = "length",
) -> None:
    for i in range(n):
        await resp.write(_chunk(f"t{i} "))
        if rate:
            await asyncio.sleep(1.0 / rate)
    await resp.write(_chunk(None, finish))
    await resp.write(_chunk(usage=usage))
    await resp.write(b"data: [DONE]\n\n")


async def handle_models(request: web.Request) -> web.Response:
    if request.match_info["fault"] == "stuckmodels":  # accepts, never answers (stuck or loading)
        await asyncio.sleep(3600)
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def handle_completion(request: web.Request) -> web.StreamResponse:
    fault = request.match_info["fault"]
    st = STATS.setdefault(fault, Stats())
    body = await request.json()
    if fault == "reset" and body.get("stream"):
        st.streamed += 1
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.05)
        return web.Response(status=500)
    if not body.get("stream"):  # the chat filler calibration probes
        st.probes += 1
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        usage = {"prompt_tokens": words + 10, "completion_tokens": 1, "total_tokens": words + 11}
        return web.json_response(
            {
                "id": "p",
                "object": "chat.completion",
                "model": MODEL,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}
                ],
                "usage": usage,
            }
        )
    st.streamed += 1
    st.auth.append(request.headers.getall("Authorization", []))
    st.send_times.append(time.monotonic())
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        return await _fault(fault, request, body)
    finally:
        st.in_flight -= 1


async def _fault(fault: str, request: web.Request, body: dict) -> web.StreamResponse:
    mt = int(body.get("max_tokens") or 16)
    n = max(1, min(mt, 12))
    usage = {"prompt_tokens": 100, "completion_tokens": n, "total_tokens": 100 + n}
    if fault in ("ok", "slow", "auth"):
        resp = await _sse(request)
        await _stream_tokens(resp, n, rate=200 if fault == "ok" else 20, usage=usage)
        return resp
    if fault == "wrongmodel":
        return web.json_response(
            {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}},
            status=404,
        )
    if fault == "r429":
        return web.json_response(
            {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"}
        )
    if fault == "echo":  # an error body that echoes the request headers (proxies do)
        return web.json_response(
            {"error": {"message": f"bad request, headers: {dict(request.headers)}"}}, status=400
        )
    if fault == "noheaders":
        await asyncio.sleep(3600)
    if fault == "json200":
        return web.json_response({"id": "x", "choices": [{"message": {"content": "hi"}}]})
    if fault == "html200":
        return web.Response(text="<html><body>gateway login</body></html>", content_type="text/html")
    resp = await _sse(request)
    if fault == "drip":
        payload = _chunk("hello")
        for i in range(3600):
            await resp.write(payload[i % len(payload) : i % len(payload) + 1])
            await asyncio.sleep(1.0)
    elif fault == "keepalive":
        for _ in range(7200):
            await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(0.5)
    elif fault == "stall":  # three tokens, then only comments
        for i in range(3):
            await resp.write(_chunk(f"t{i} "))
        for _ in range(7200):
            await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(0.5)
    elif fault == "cut":  # three tokens, then the connection is dropped
        for i in range(3):
            await resp.write(_chunk(f"t{i} "))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
    elif fault == "badutf8":
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe\xc3"}}]}\n\n')
        await resp.write(b"data: \xff\xfe garbage \x00\x01\n\ndata: [DONE]\n\n")
    elif fault == "choices5":
        await resp.write(b'data: {"id": "x", "choices": 5}\n\ndata: [DONE]\n\n')
    elif fault == "errmsg42":
        await resp.write(b'data: {"error": {"message": 42}}\n\ndata: [DONE]\n\n')
    elif fault == "deep":
        await resp.write(b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\ndata: [DONE]\n\n")
    elif fault == "huge_usage":
        await _stream_tokens(resp, n, rate=None, usage={**usage, "completion_tokens": 2**70})
    elif fault == "finish_obj":
        await _stream_tokens(resp, n, rate=None, usage=usage, finish={"reason": "length"})
    elif fault == "liar":  # streams at 15 tok/s, reports 10x the tokens
        await _stream_tokens(resp, n, rate=15, usage={**usage, "completion_tokens": 10 * n})
    elif fault == "cached":
        await _stream_tokens(
            resp, n, rate=200, usage={**usage, "prompt_tokens_details": {"cached_tokens": 250}}
        )
    elif fault == "negative":
        await _stream_tokens(resp, n, rate=200, usage={**usage, "completion_tokens": -5})
    return resp


def start_server() -> tuple[int, Callable[[], None]]:
    """Start the fault server on a free loopback port in a thread; returns (port, stop)."""
    ready = threading.Event()
    state: dict = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/{fault}/v1/models", handle_models)
        app.router.add_post("/{fault}/v1/chat/completions", handle_completion)
        app.router.add_post("/{fault}/v1/completions", handle_completion)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        loop.run_until_complete(runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        loop.run_until_complete(site.start())
        state.update(port=sock.getsockname()[1], loop=loop, runner=runner)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    ready.wait(10)

    def stop() -> None:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        th.join(10)

    return state["port"], stop


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    expected: str
    observed: str
    ok: bool


RESULTS: list[Row] = []
TMP = Path(tempfile.mkdtemp(prefix="fault_matrix_"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "agentperf_kit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=TMP,
    )


def record(name: str, expected: str, observed: str, ok: bool) -> None:
    RESULTS.append(Row(name, expected, observed, ok))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {observed}", flush=True)


def errors_of(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.startswith("error:") or "Traceback" in ln]


def one_line(p: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in p.stderr and len(errors_of(p)) == 1


def message_lines(p: subprocess.CompletedProcess) -> list[str]:
    """stderr lines other than the plan line and warnings."""
    return [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(("plan:", "warning:"))]


def rows_of(out: Path) -> pd.DataFrame | None:
    if (out / "requests.parquet").exists():
        from agentperf_kit.results import read_requests_file

        return read_requests_file(out / "requests.parquet")
    if (out / "requests.arrow").exists():
        from agentperf_kit.results import load_run

        return load_run(out).requests
    return None


def short(*extra: str, n: int = 4, duration: float = 4) -> list[str]:
    return [
        "--model",
        MODEL,
        "-n",
        str(n),
        "--duration",
        str(duration),
        "--warmup",
        "0",
        "--min-trajectories",
        "0",
        "--min-trajectories-per-agent",
        "0",
        "--max-duration",
        str(duration),
        "--ramp",
        "0.5",
        "--drain-timeout",
        "1",
        "--quiet",
        *extra,
    ]


def live(fault: str, port: int, *extra: str, n: int = 4, duration: float = 4, preflight: bool = False):
    out = TMP / f"run_{fault}_{len(RESULTS)}"
    args = ["run", "--target", f"http://127.0.0.1:{port}/{fault}/v1", "--out", str(out)]
    args += short(*extra, n=n, duration=duration)
    if not preflight:
        args.append("--no-preflight")
    t0 = time.monotonic()
    p = cli(*args)
    return p, out, rows_of(out), time.monotonic() - t0


def classes(df: pd.DataFrame | None) -> str:
    if df is None:
        return "no rows"
    vc = df["error"].replace("", "ok").value_counts()
    return ",".join(f"{k}x{v}" for k, v in vc.items())


def fault_row(
    name: str,
    fault: str,
    port: int,
    *,
    want_exit: int,
    want_class: str,
    extra: tuple[str, ...] = (),
    check: Callable[[pd.DataFrame], tuple[bool, str]] | None = None,
) -> None:
    STATS.pop(fault, None)
    p, _out, df, wall = live(fault, port, *extra)
    st = STATS.get(fault, Stats())
    n_rows = 0 if df is None else len(df)
    got = classes(df)
    selfcheck = want_exit == 0 and p.returncode == 3 and "self-check failed" in p.stderr
    ok = (
        (p.returncode == want_exit or selfcheck)
        and df is not None
        and n_rows == st.streamed
        and "Traceback" not in p.stderr
    )
    ok = ok and set(df["error"].replace("", "ok")) <= set(want_class.split("|"))
    ok = ok and st.max_in_flight <= 4
    note = ""
    if check is not None and df is not None:
        c_ok, note = check(df)
        ok = ok and c_ok
    obs = f"exit {p.returncode}, {got}, rows {n_rows}/server {st.streamed}"
    obs += f", in flight {st.max_in_flight}, {wall:.0f} s"
    if note:
        obs += f", {note}"
    if selfcheck:
        obs += " (exit 3: the client self-check failed on this loaded machine, by design)"
    if not ok and p.stderr.strip():
        obs += " | stderr: " + p.stderr.strip().splitlines()[-1][:160]
    record(name, f"exit {want_exit}, {want_class}, rows == server, in flight <= 4", obs, ok)


def waits_tool_delay(df: pd.DataFrame) -> tuple[bool, str]:
    d = df.sort_values(["agent", "t_send_s"])
    gaps = []
    for _, g in d.groupby("agent"):
        nxt = g["t_send_s"].shift(-1)
        gaps.extend(((nxt - g["t_end_s"]) - g["tool_delay_s"]).dropna().tolist())
    worst = min(gaps) if gaps else float("nan")
    nan_end = int(df["t_end_s"].isna().sum())
    return (
        bool(gaps) and worst >= -0.005 and nan_end == 0
    ), f"min(next send - end - tool delay) {worst:.3f} s"


def run_fault_rows(port: int) -> None:
    hang = (
        "--first-token-timeout",
        "2",
        "--stall-timeout",
        "2",
        "--request-timeout",
        "5",
        "--abort-after",
        "0",
    )
    fault_row("control: clean stream", "ok", port, want_exit=0, want_class="ok", extra=("--no-force-output",))

    def counted(df: pd.DataFrame) -> tuple[bool, str]:
        # a request still hanging when the run ends is cancelled_at_end and stays in the window
        c = df[df["error"] == "cancelled_at_end"]
        ok = bool(c["in_window"].all()) and bool(df["t_end_s"].notna().all())
        return ok, f"cancelled_at_end in window {int(c['in_window'].sum())}/{len(c)}"

    hung = "first_token_timeout|cancelled_at_end"
    for name, fault in (
        ("drip 1 byte/s", "drip"),
        ("only ': keep-alive'", "keepalive"),
        ("never sends headers", "noheaders"),
    ):
        fault_row(name, fault, port, want_exit=3, want_class=hung, extra=hang, check=counted)
    nasty = ("--abort-after", "0")
    fault_row(
        "3 tokens then only comments",
        "stall",
        port,
        want_exit=3,
        want_class="stall_timeout|cancelled_at_end",
        extra=hang,
        check=counted,
    )
    fault_row(
        "3 tokens then connection dropped",
        "cut",
        port,
        want_exit=3,
        want_class="stream_cut",
        extra=("--abort-after", "0"),
    )
    fault_row(
        "invalid UTF-8 and binary in data lines",
        "badutf8",
        port,
        want_exit=3,
        want_class="malformed_json|stream_cut|empty_response",
        extra=("--abort-after", "0"),
    )
    fault_row('"choices": 5', "choices5", port, want_exit=3, want_class="empty_response", extra=nasty)
    fault_row(
        '{"error": {"message": 42}}', "errmsg42", port, want_exit=3, want_class="stream_error", extra=nasty
    )
    fault_row("JSON nested 100,000 deep", "deep", port, want_exit=3, want_class="malformed_json", extra=nasty)

    def flagged(df: pd.DataFrame) -> tuple[bool, str]:
        k = int(df["usage_mismatch"].sum())
        return k == len(df), f"usage_mismatch {k}/{len(df)}"

    fault_row("completion_tokens = 2**70", "huge_usage", port, want_exit=0, want_class="ok", check=flagged)

    def finish_text(df: pd.DataFrame) -> tuple[bool, str]:
        vals = set(df["finish_reason"].dropna().astype(str))
        return all("reason" in v for v in vals) and bool(vals), f"finish_reason {sorted(vals)[:1]}"

    fault_row("object as finish_reason", "finish_obj", port, want_exit=0, want_class="ok", check=finish_text)
    fault_row(
        "429 + Retry-After: next turn waits its tool delay",
        "r429",
        port,
        want_exit=3,
        want_class="rate_limited",
        extra=nasty,
        check=lambda df: (lambda w: (w[0] and (df["retry_after_s"] == 1).all(), w[1] + ", retry_after_s 1"))(
            waits_tool_delay(df)
        ),
    )
    fault_row(
        "negative completion_tokens flagged", "negative", port, want_exit=0, want_class="ok", check=flagged
    )
    fault_row("cached > prompt flagged", "cached", port, want_exit=0, want_class="ok", check=flagged)
    fault_row("reset before headers", "reset", port, want_exit=3, want_class="connect_error", extra=nasty)

    def names_type(kind: str) -> Callable[[pd.DataFrame], tuple[bool, str]]:
        def chk(df: pd.DataFrame) -> tuple[bool, str]:
            ok = df["error_detail"].str.contains(kind, regex=False).all()
            return bool(ok), f"detail '{df['error_detail'].iloc[0][:60]}'"

        return chk

    fault_row(
        "200 application/json",
        "json200",
        port,
        want_exit=3,
        want_class="not_sse",
        extra=nasty,
        check=names_type("application/json"),
    )
    fault_row(
        "200 text/html",
        "html200",
        port,
        want_exit=3,
        want_class="not_sse",
        extra=nasty,
        check=names_type("text/html"),
    )

    # a liar: 15 tok/s streamed, 10x reported; must not pass a 20 tok/s tier (P25 < 20 on the judged speed)
    STATS.pop("liar", None)
    p, _out, df, wall = live("liar", port, duration=5)
    st = STATS.get("liar", Stats())
    p25 = float("nan")
    for ln in p.stdout.splitlines():
        if ln.startswith("P25 output speed"):
            p25 = float(ln.split()[3])
    n_rows = 0 if df is None else len(df)
    flagged_n = 0 if df is None else int(df["usage_mismatch"].sum())
    ok = p.returncode in (0, 3) and p25 < 20 and n_rows == st.streamed and flagged_n == n_rows
    record(
        "10x reported tokens at 15 tok/s vs a 20 tok/s tier",
        "P25 < 20 tok/s, every row usage_mismatch, rows == server",
        f"exit {p.returncode}, P25 {p25} tok/s, usage_mismatch {flagged_n}/{n_rows}, server {st.streamed}",
        ok,
    )

    # wrong model: preflight exit 2 one line naming the model; --no-preflight: no burst, ends early
    STATS.pop("wrongmodel", None)
    out = TMP / "wrongmodel_pf"
    p = cli(
        "run",
        "--target",
        f"http://127.0.0.1:{port}/wrongmodel/v1",
        "--out",
        str(out),
        *short(n=2),
        "--model",
        "wrong",
    )
    ok = p.returncode == 2 and one_line(p) and "wrong" in errors_of(p)[0] and not out.exists()
    record(
        "wrong model (404), preflight",
        "exit 2, one line naming the model, nothing written",
        f"exit {p.returncode}, {errors_of(p)[:1][0][:110] if errors_of(p) else p.stderr[-120:]}",
        ok,
    )
    STATS.pop("wrongmodel", None)
    p, _out, df, wall = live("wrongmodel", port, "--abort-after", "2", n=2, duration=30)
    st = STATS.get("wrongmodel", Stats())
    w_ok, w_note = waits_tool_delay(df) if df is not None else (False, "no rows")
    n_rows = 0 if df is None else len(df)
    ok = p.returncode == 3 and wall < 20 and n_rows == st.streamed and n_rows < 30 and w_ok
    record(
        "wrong model, --no-preflight (N=2)",
        "exit 3 (ended early), no burst (< 30 requests), waits tool delay",
        f"exit {p.returncode}, {classes(df)}, rows {n_rows}/server {st.streamed}, {wall:.0f} s, {w_note}",
        ok,
    )

    # secrets: X-Auth-Token value echoed by the server in the error body
    STATS.pop("echo", None)
    p, out, df, wall = live("echo", port, "--header", f"X-Auth-Token: {SECRET}", "--abort-after", "0")
    leaks = [
        str(f.relative_to(out)) for f in out.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()
    ]
    leaks += [s for s in ("stdout", "stderr") if SECRET in getattr(p, s)]
    echoed = df is not None and df["error_detail"].str.contains("***", regex=False).any()
    ok = not leaks and df is not None and len(df) > 0 and echoed
    record(
        "--header X-Auth-Token echoed in error bodies",
        "value in no file and no output; detail shows ***",
        f"exit {p.returncode}, {classes(df)}, leaks {leaks or 'none'}, scrubbed in detail {echoed}",
        ok,
    )

    # --header 'authorization: ...' plus --api-key-env: one Authorization header, the key's, with a warning
    STATS.pop("auth", None)
    key, other = "fmx-key-0042-abcdef", "fmx-other-9931-zyxw"
    ENV["FMX_KEY"] = key
    p, out, df, wall = live(
        "auth",
        port,
        "--api-key-env",
        "FMX_KEY",
        "--header",
        f"authorization: Bearer {other}",
        "--no-force-output",
    )
    del ENV["FMX_KEY"]
    st = STATS.get("auth", Stats())
    sent = {tuple(a) for a in st.auth}
    leaks = [
        str(f.relative_to(out))
        for f in out.rglob("*")
        if f.is_file() and (key.encode() in f.read_bytes() or other.encode() in f.read_bytes())
    ]
    leaks += [s for s in ("stdout", "stderr") if key in getattr(p, s) or other in getattr(p, s)]
    warned = any(ln.startswith("warning:") and "uthorization" in ln for ln in p.stderr.splitlines())
    ok = sent == {(f"Bearer {key}",)} and not leaks and warned and st.streamed > 0
    record(
        "--header authorization + --api-key-env",
        "one Authorization (the key's) per request, warning, no leak",
        f"exit {p.returncode}, headers sent {sorted(len(a) for a in sent)} x{st.streamed}, key wins "
        f"{sent == {(f'Bearer {key}',)}}, warning {warned}, leaks {leaks or 'none'}",
        ok,
    )

    # Ctrl-C: one line, exit 130, files kept and readable
    STATS.pop("slow", None)
    out = TMP / "ctrlc"
    args = [
        "run",
        "--target",
        f"http://127.0.0.1:{port}/slow/v1",
        "--out",
        str(out),
        "--no-preflight",
        *short("--no-force-output", n=4, duration=60),
    ]
    proc = subprocess.Popen(
        [PY, "-m", "agentperf_kit.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=TMP,
    )
    t0 = time.monotonic()
    while STATS.get("slow", Stats()).streamed < 8 and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    try:
        so, se = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        so, se = proc.communicate()
    cp = subprocess.CompletedProcess(args, proc.returncode, so, se)
    df = rows_of(out)
    st = STATS.get("slow", Stats())
    n_rows = 0 if df is None else len(df)
    msg = message_lines(cp)
    ok = proc.returncode == 130 and len(msg) == 1 and "Traceback" not in se and df is not None
    ok = ok and n_rows == st.streamed
    record(
        "Ctrl-C mid-run",
        "exit 130, one line, rows kept == server",
        f"exit {proc.returncode}, {msg[:2]}, rows {n_rows}/server {st.streamed}"
        + ("" if ok else f" | {se.strip().splitlines()[-1:] if se.strip() else ''}"),
        ok,
    )

    # report DIR | head: no BrokenPipeError
    ctrl = TMP / "sim_sweep"
    cli("sweep", "--target", "sim", "--level-duration", "5", "--max-agents", "4", "--out", str(ctrl))
    p = subprocess.run(
        ["bash", "-c", f"{PY} -m agentperf_kit.cli report {ctrl} | head -1; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=TMP,
        timeout=120,
    )
    ok = p.returncode == 0 and p.stderr.strip() == ""
    record(
        "report DIR | head -1",
        "exit 0, nothing on stderr",
        f"exit {p.returncode}, stderr {p.stderr.strip()[-80:]!r}",
        ok,
    )


def sweep_rows(out: Path) -> pd.DataFrame | None:
    """Every level's rows of a sweep (each level keeps its own levels/*/requests.parquet)."""
    from agentperf_kit.results import read_requests_file

    files = sorted(out.glob("levels/*/requests.parquet")) or sorted(out.glob("requests.parquet"))
    return pd.concat([read_requests_file(f) for f in files], ignore_index=True) if files else None


def sweep_cfg(fault: str, port: int, *lines: str) -> Path:
    """A live sweep with short levels (N = 1, 2) against one fault."""
    f = TMP / f"sweep_{fault}_{len(RESULTS)}.toml"
    body = [
        "[sweep]",
        f'target = "http://127.0.0.1:{port}/{fault}/v1"',
        f'model = "{MODEL}"',
        "accelerators = 1",
        "level_duration_s = 3",
        "warmup_s = 0",
        "min_trajectories = 0",
        "min_trajectories_per_agent = 0",
        "max_level_duration_s = 3",
        "drain_timeout_s = 1",
        "max_agents = 2",
        "max_extensions = 0",
        *lines,
    ]
    f.write_text("\n".join(body) + "\n")
    return f


def run_sweep_rows(port: int) -> None:
    # items 1 and 2: a sweep over a target that hangs or answers "choices": 5 never says "still passing"
    hang = ("first_token_timeout_s = 2", "stall_timeout_s = 2", "request_timeout_s = 5")
    for fault, lines in (("choices5", ()), ("noheaders", hang)):
        STATS.pop(fault, None)
        out = TMP / f"sweep_{fault}"
        cfg = sweep_cfg(fault, port, "abort_after_s = 0", *lines)
        p = cli("sweep", "--config", str(cfg), "--no-preflight", "--out", str(out), timeout=180)
        st = STATS.get(fault, Stats())
        df = sweep_rows(out)
        n_rows = 0 if df is None else len(df)
        passing = "still passing" in p.stdout + p.stderr
        ok = p.returncode == 3 and not passing and n_rows == st.streamed and "Traceback" not in p.stderr
        record(
            f"sweep vs {fault}",
            "exit 3 (target never worked), no 'still passing', rows == server",
            f"exit {p.returncode}, {classes(df)}, rows {n_rows}/server {st.streamed}, passing {passing}",
            ok,
        )

    # item 5 via sweep: the 10x liar at 15 tok/s must not pass a 20 tok/s tier
    STATS.pop("liar", None)
    out = TMP / "sweep_liar"
    p = cli(
        "sweep",
        "--config",
        str(sweep_cfg("liar", port, 'tiers = "t20=20/10"')),
        "--no-preflight",
        "--out",
        str(out),
        timeout=180,
    )
    st = STATS.get("liar", Stats())
    try:
        tier = json.loads((out / "summary.json").read_text())["tiers"][0]
        got = tier["max_agents"]
    except (OSError, KeyError, IndexError, ValueError) as exc:
        got = f"no summary ({exc})"
    df = sweep_rows(out)
    n_rows = 0 if df is None else len(df)
    ok = got in (0, None) and n_rows == st.streamed and p.returncode in (0, 3)
    record(
        "sweep vs 10x liar at 15 tok/s, tier t20=20/10",
        "max agents 0 for t20, rows == server",
        f"exit {p.returncode}, t20 max agents {got}, rows {n_rows}/server {st.streamed}",
        ok,
    )

    # item 8 via sweep: a secret header echoed by the server reaches no file of the sweep
    out = TMP / "sweep_echo"
    cfg = sweep_cfg("echo", port, f'headers = ["X-Auth-Token: {SECRET}"]', "abort_after_s = 0")
    p = cli("sweep", "--config", str(cfg), "--no-preflight", "--out", str(out), timeout=180)
    leaks = [
        str(f.relative_to(out)) for f in out.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()
    ]
    leaks += [s for s in ("stdout", "stderr") if SECRET in getattr(p, s)]
    ok = not leaks and out.exists() and p.returncode == 3
    record(
        "sweep: X-Auth-Token echoed in error bodies",
        "exit 3, value in no file (sweep.json, summary.json, ...)",
        f"exit {p.returncode}, files {sum(1 for f in out.rglob('*') if f.is_file())}, "
        f"leaks {leaks or 'none'}",
        ok,
    )


def run_input_rows(port: int) -> None:
    url = f"http://127.0.0.1:{port}/ok/v1"
    # --out on an existing non-empty directory
    out = TMP / "existing"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    p = cli("run", "--target", url, "--out", str(out), *short())
    ok = p.returncode == 2 and one_line(p) and sorted(os.listdir(out)) == ["mine.txt"]
    record(
        "--out on an existing directory",
        "exit 2, one line, dir untouched",
        f"exit {p.returncode}, {sorted(os.listdir(out))}, {errors_of(p)[:1]}",
        ok,
    )

    bad_gz = TMP / "trunc.jsonl.gz"
    whole = (ROOT / "sample_data" / "default_trajectories.jsonl.gz").read_bytes()
    bad_gz.write_bytes(whole[: len(whole) // 2])
    header_only = TMP / "header_only.jsonl"
    with gzip.open(ROOT / "sample_data" / "default_trajectories.jsonl.gz", "rt") as fh:
        header_only.write_text(fh.readline())
    ro = TMP / "a_file"  # --out under a regular file cannot be created (a chmod would not stop root)
    ro.write_text("x")
    a_dir = TMP / "a_dir"
    a_dir.mkdir()
    toml = ['max_agents = "ten"', "tiers = 5", "target = 5", "extra_body = 5"]
    cases: list[tuple[str, list[str]]] = [
        ("unreachable port", ["run", "--target", "http://127.0.0.1:1/v1", *short()]),
        ("invalid URL", ["run", "--target", "htp:/nowhere", *short()]),
        ("truncated .jsonl.gz", ["run", "--target", url, "--trajectories", str(bad_gz), *short()]),
        ("directory as trajectory file", ["run", "--target", url, "--trajectories", str(a_dir), *short()]),
        ("--concurrency 0", ["run", "--target", url, *short(n=0)]),
        ("--max-context 0", ["run", "--target", url, "--max-context", "0", *short()]),
        ("--request-timeout 0", ["run", "--target", url, "--request-timeout", "0", *short()]),
        ("--stall-timeout -1", ["run", "--target", url, "--stall-timeout", "-1", *short()]),
        ("duplicate tier names", ["sweep", "--tiers", "fast=100/2,fast=20/10", "--dry-run"]),
        ("unset --api-key-env", ["run", "--target", url, "--api-key-env", "FMX_UNSET_VAR", *short()]),
        (
            "header-only trajectory set",
            ["run", "--target", url, "--trajectories", str(header_only), *short()],
        ),
        (
            "sweep --accelerators -8",
            ["sweep", "--target", url, "--model", MODEL, "--accelerators", "-8", "--dry-run"],
        ),
        ("sweep unknown sim: preset", ["sweep", "--target", "sim:nope", "--dry-run"]),
        ("--out under a regular file", ["run", "--target", url, *short(), "--out", str(ro / "sub")]),
    ]
    for key in toml:
        f = TMP / f"cfg_{key.split()[0]}.toml"
        f.write_text(f"[sweep]\n{key}\n")
        cases.append((f"TOML {key}", ["sweep", "--config", str(f), "--dry-run"]))
    for name, args in cases:
        out = TMP / f"bad_{len(RESULTS)}"
        if "--out" in args:
            out = Path(args[args.index("--out") + 1])
        else:
            args = [*args, "--out", str(out)]
        p = cli(*args, timeout=60)
        ok = p.returncode == 2 and one_line(p) and not out.exists()
        first = errors_of(p)[0][:110] if errors_of(p) else p.stderr.strip()[-110:]
        record(
            f"bad input: {name}",
            "exit 2, one line, nothing written",
            f"exit {p.returncode}, {'written' if out.exists() else 'nothing written'}, {first}",
            ok,
        )

    # sweep --out on a directory holding a user's file
    out = TMP / "sweep_existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    p = cli("sweep", "--target", "sim", "--level-duration", "5", "--max-agents", "2", "--out", str(out))
    ok = p.returncode == 2 and one_line(p) and sorted(os.listdir(out)) == ["notes.txt"]
    record(
        "sweep --out on a directory with a user's file",
        "exit 2, one line, dir untouched",
        f"exit {p.returncode}, {sorted(os.listdir(out))}, {(errors_of(p) or [''])[0][:100]}",
        ok,
    )
    # a server that accepts the connection and never answers /models: exit 2, said as such
    out = TMP / "stuckmodels"
    p = cli(
        "run",
        "--target",
        f"http://127.0.0.1:{port}/stuckmodels/v1",
        "--request-timeout",
        "3",
        *short(),
        "--out",
        str(out),
    )
    first = (errors_of(p) or [""])[0]
    ok = p.returncode == 2 and one_line(p) and "no answer" in first and not out.exists()
    record(
        "preflight: /models never answers",
        "exit 2, one line saying it sent no answer, nothing written",
        f"exit {p.returncode}, {first[-110:]}",
        ok,
    )
    # serve-sim --port 99999
    p = cli("serve-sim", "--port", "99999", timeout=60)
    ok = p.returncode == 2 and one_line(p)
    record("serve-sim --port 99999", "exit 2, one line", f"exit {p.returncode}, {errors_of(p)[:1]}", ok)


async def _serve_sim_checks(port: int) -> list[tuple[str, str, str, bool]]:
    url = f"http://127.0.0.1:{port}/v1"
    rows = []
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/models") as r:
            model = (await r.json())["data"][0]["id"]
        base = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "stream": True,
        }
        async with s.post(f"{url}/chat/completions", json={**base, "stream_options": 5}) as r:
            txt = await r.text()
            rows.append(
                (
                    "serve-sim stream_options: 5",
                    "400 naming the field",
                    f"{r.status} {txt[:90]}",
                    r.status == 400 and "stream_options" in txt,
                )
            )
        deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        async with s.post(
            f"{url}/chat/completions", data=deep, headers={"Content-Type": "application/json"}
        ) as r:
            txt = await r.text()
            rows.append(
                ("serve-sim JSON nested 100,000 deep", "400", f"{r.status} {txt[:90]}", r.status == 400)
            )
    # 500 abandoned streams: read the first bytes, then drop the connection
    conn = aiohttp.TCPConnector(limit=600, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def abandon() -> int:
            try:
                r = await s.post(f"{url}/chat/completions", json={**base, "max_tokens": 2000})
                await r.content.read(1)
                r.close()
                return r.status
            except aiohttp.ClientError:
                return -1

        statuses = await asyncio.gather(*(abandon() for _ in range(500)))
    rows.append(("_abandon", "", str(sum(1 for x in statuses if x == 200)), True))
    return rows


def run_serve_sim_rows() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = TMP / "serve_sim.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [PY, "-m", "agentperf_kit.cli", "serve-sim", "--time-scale", "50", "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=TMP,
        )
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        rows = asyncio.run(_serve_sim_checks(port))
        time.sleep(2.0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for name, exp, obs, ok in rows:
        if name == "_abandon":
            text = log.read_text()
            tb = text.count("Traceback")
            lines = len(text.splitlines())
            # docs/simulator.md: a disconnect is one log line (request id, tokens sent), never a traceback
            ok = tb == 0 and lines <= int(obs) + 10
            record(
                "serve-sim 500 abandoned streams",
                "no tracebacks, at most one log line per abandoned stream",
                f"{obs}/500 started, tracebacks {tb}, log lines {lines}",
                ok,
            )
        else:
            record(name, exp, obs, ok)


def write_table(path: Path, wall: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    load = os.getloadavg()
    head = [
        "Fault matrix (issue 11), from the outside: PYTHONPATH=$PWD python benchmarks/fault_matrix.py",
        f"date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit.stdout.strip()}"
        + (" (+ uncommitted changes)" if dirty else "")
        + f", load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on {os.cpu_count()} cores, wall {wall:.0f} s",
        f"{sum(r.ok for r in RESULTS)}/{len(RESULTS)} PASS",
        "",
    ]
    w = max(len(r.name) for r in RESULTS)
    body = [
        f"{'PASS' if r.ok else 'FAIL'}  {r.name:<{w}}  expected: {r.expected}\n"
        f"      {'':<{w}}  observed: {r.observed}"
        for r in RESULTS
    ]
    text = "\n".join(head + body) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", default="faults,sweep,inputs,serve-sim", help="groups: faults, sweep, inputs, serve-sim"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fault_matrix.txt"))
    a = ap.parse_args()
    groups = set(a.only.split(","))
    port, stop = start_server()
    t0 = time.monotonic()
    try:
        if "faults" in groups:
            run_fault_rows(port)
        if "sweep" in groups:
            run_sweep_rows(port)
        if "inputs" in groups:
            run_input_rows(port)
        if "serve-sim" in groups:
            run_serve_sim_rows()
    finally:
        stop()
        shutil.rmtree(TMP, ignore_errors=True)
    print()
    print(write_table(Path(a.out), time.monotonic() - t0))
    return 0 if all(r.ok for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
