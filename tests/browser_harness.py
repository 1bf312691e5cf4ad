"""Drive a notebook's SLO explorer in JupyterLab in headless Chromium, the way a user sees it.

Used by tests/test_browser.py. The pieces, each with one job:

- `LabServer`: a JupyterLab started on 127.0.0.1 and a free port with its own config, data, settings,
  workspaces and runtime folders, serving a temporary folder that holds copies of the notebooks; stopped
  by its PID.
- `open_and_run_all`: open a notebook, wait until its kernel is really ready, click Run > Run All Cells,
  wait until the SLO explorer is rendered.
- `check_speed_floor_moves_max_agents`: move the speed-floor slider up with arrow keys on its focused
  handle and check that the `max agents` text changes, goes down (to `none` eventually), and shows, each
  time, exactly the value the Python object `explorer.result` holds for the slider value the kernel holds
  (read through a second client of the same kernel, once the kernel is done with the move: `IOPubLog`).
  It returns a `CheckResult` (never raises for a failed check) so a negative control can assert failure.
- `copy_unwired`: a copy of a notebook whose explorer is not wired up (`explorer.speed_floor.unobserve_all()`
  inserted right after the cell that creates it), for the negative control.

Facts this relies on, checked on a 2-core Debian machine with jupyterlab 4.6.6, ipywidgets 8.1.9,
ipykernel 7.4.0, playwright 1.65.2 and Debian's chromium 156: Playwright launches the system Chromium with
`executable_path` (its own browser download is not needed); right after load the run indicator says idle
while the kernel name still reads "No Kernel"; a Lab settings file with `fetchNews: "false"` removes the
news toast; arrow keys move a noUiSlider when its `.noUi-handle` has focus; Lab's default windowing leaves
offscreen outputs unrendered (empty innerText) until scrolled into view; widget comm messages run in a
kernel subshell thread (`IOPubLog`).

The widget contract (agentperf_kit/widgets.py, notebooks/03_explore_ttft_and_speed.ipynb): the notebook has
a cell `explorer = SLOExplorer(...)` and a later cell that displays `explorer`; `explorer.speed_floor` is a
FloatSlider with CSS class `agentperf-speed-floor`; `explorer.result` is an HTML widget with CSS class
`agentperf-max-agents` whose value contains `max agents: N` or `max agents: none`.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ROUND_TRIP_S = 30.0  # one kernel round trip (slider move -> observe() -> HTML update) on 2 busy cores
SPEED_FLOOR_CLASS = "agentperf-speed-floor"
MAX_AGENTS_CLASS = "agentperf-max-agents"
EXPLORER_CELL_MARK = "explorer = SLOExplorer("
UNWIRE_SOURCE = "explorer.speed_floor.unobserve_all()"
_MAX_AGENTS_RE = re.compile(r"max agents:\s*(none|\d[\d,]*)", re.IGNORECASE)
_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


# ----------------------------------------------------------------------------------------------- notebooks


def copy_notebook(src: Path, dest: Path) -> Path:
    """Copy a notebook, outputs cleared and kernelspec set to this environment's `python3`."""
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata["kernelspec"] = dict(_KERNELSPEC)
    nbformat.write(nb, dest)
    return dest


def copy_unwired(src: Path, dest: Path) -> Path:
    """Copy of `src` with `explorer.speed_floor.unobserve_all()` right after the cell creating `explorer`."""
    copy_notebook(src, dest)
    nb = nbformat.read(dest, as_version=4)
    where = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and EXPLORER_CELL_MARK in c.source]
    if len(where) != 1:
        raise ValueError(
            f"{src}: expected one code cell containing {EXPLORER_CELL_MARK!r}, found {len(where)}"
        )
    nb.cells.insert(where[0] + 1, nbformat.v4.new_code_cell(UNWIRE_SOURCE))
    nbformat.write(nb, dest)
    return dest


def write_mimic_notebook(dest: Path, callback_s: float = 0.3) -> Path:
    """A small notebook that follows the explorer contract, for a self-test of this harness.

    Max agents falls as the speed floor rises: 240 agents at 5 tok/s, `none` from 120 tok/s up. The
    callback takes `callback_s` (like a redraw) before it updates the result, so that a check that reads
    Python's result before the callback is done sees the old one (see `IOPubLog`).
    """
    define = f'''\
import time

import ipywidgets as widgets


class SLOExplorer(widgets.VBox):
    """Mimic of agentperf_kit.widgets.SLOExplorer: speed floor in, max agents out."""

    def __init__(self, capacity_tps=1200.0):
        self.capacity_tps = capacity_tps
        self.speed_floor = widgets.FloatSlider(value=20.0, min=5.0, max=200.0, step=5.0,
                                               description="speed floor")
        self.speed_floor.add_class("agentperf-speed-floor")
        self.result = widgets.HTML()
        self.result.add_class("agentperf-max-agents")
        self.speed_floor.observe(self._update, names="value")
        self._update()
        super().__init__([self.speed_floor, self.result])

    def _update(self, change=None):
        n = int(self.capacity_tps // self.speed_floor.value)
        time.sleep({callback_s!r})
        self.result.value = f"<b>max agents: {{n if n >= 10 else 'none'}}</b>"
'''
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Mimic of the SLO explorer (harness self-test)"),
        nbformat.v4.new_code_cell(define),
        nbformat.v4.new_code_cell("explorer = SLOExplorer(capacity_tps=1200.0)"),
        nbformat.v4.new_code_cell("explorer"),
    ]
    nb.metadata["kernelspec"] = dict(_KERNELSPEC)
    nbformat.write(nb, dest)
    return dest


# --------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """JupyterLab serving `root` on 127.0.0.1, isolated from the user's Jupyter folders. Use as `with`."""

    root: Path
    home: Path
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LabServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        dirs = {
            name: self.home / name
            for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        # Pitfall 5: the "get notified about Jupyter news?" toast covers part of a screenshot.
        notification = (
            dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        )
        notification.parent.mkdir(parents=True, exist_ok=True)
        notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("MPLBACKEND", None)  # the kernel's own inline backend, as a user gets it
        env.pop("JUPYTER_WIDGETS_ECHO", None)  # on by default; IOPubLog relies on ipywidgets' echo_update
        self.runtime_dir = dirs["runtime"]
        self.port = self.port or free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.user_settings_dir={dirs['settings']}",
            f"--LabApp.workspaces_dir={dirs['workspaces']}",
        ]  # fmt: skip
        self.log_path = self.home / "jupyterlab.log"
        log = self.log_path.open("wb")
        # Pitfall 1: start Jupyter itself (not through a shell) so that proc.pid is Jupyter's PID.
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.api("status")
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"JupyterLab did not answer on {self.base_url} in {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # Jupyter shuts its kernels down on SIGTERM
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # its own session (start_new_session): the group holds Jupyter and the kernels it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def api(self, path: str):
        req = urllib.request.Request(
            f"{self.base_url}/api/{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def notebook_url(self, name: str) -> str:
        return f"{self.base_url}/lab/tree/{name}?token={self.token}&reset"

    def kernel_client(self, notebook_name: str, timeout_s: float = ROUND_TRIP_S):
        """A client of the kernel of the Lab session of `notebook_name` (to read Python-side values)."""
        from jupyter_client import BlockingKernelClient

        deadline = time.monotonic() + timeout_s
        kernel_id = None
        while kernel_id is None and time.monotonic() < deadline:
            for s in self.api("sessions"):
                if s.get("path", "").endswith(notebook_name) and s.get("kernel"):
                    kernel_id = s["kernel"]["id"]
            if kernel_id is None:
                time.sleep(0.2)
        if kernel_id is None:
            raise RuntimeError(f"no kernel session for {notebook_name}: {self.api('sessions')}")
        client = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=timeout_s)
        return client


def kernel_eval(client, expression: str, timeout_s: float = ROUND_TRIP_S):
    """Evaluate a Python expression (whose repr is a literal) in the kernel, silently."""
    msg_id = client.execute("", silent=True, user_expressions={"v": f"repr({expression})"})
    deadline = time.monotonic() + timeout_s
    while True:
        reply = client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    value = reply["content"]["user_expressions"]["v"]
    if value.get("status") != "ok":
        raise RuntimeError(
            f"kernel could not evaluate {expression!r}: {value.get('ename')}: {value.get('evalue')}"
        )
    return ast.literal_eval(ast.literal_eval(value["data"]["text/plain"]))


class IOPubLog:
    """Reads what the kernel publishes on IOPub, to know when it is done handling a slider move.

    JupyterLab 4.6 sends widget comm messages over a kernel subshell (setting `commsOverSubshells`, default
    `perCommTarget`; ipykernel 7 runs each subshell in its own thread), so observe() callbacks run
    concurrently with code run on the main shell: reading `explorer.result.value` as soon as
    `explorer.speed_floor.value` holds the new value can still see the old result. For each message from
    the page the kernel publishes, in this order and with that message as parent: `busy`, ipywidgets'
    `echo_update` of the new value, the callbacks' widget updates, `idle`. So: find the echo of the value
    the page shows, then wait for that message's `idle`.
    """

    def __init__(self, client) -> None:
        self.client = client
        self.idle: set[str] = set()

    def _next(self, timeout_s: float) -> dict | None:
        try:
            msg = self.client.get_iopub_msg(timeout=max(0.01, timeout_s))
        except queue.Empty:
            return None
        if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
            self.idle.add(msg["parent_header"].get("msg_id"))
        return msg

    def wait_for_echo(self, comm_id: str, value: float, tol: float, timeout_s: float) -> str | None:
        """msg_id of the page's message that set `value` on widget `comm_id`, or None if none came."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self._next(min(left, 0.5))
            if msg is None or msg["msg_type"] != "comm_msg" or msg["content"].get("comm_id") != comm_id:
                continue
            data = msg["content"].get("data") or {}
            echoed = (data.get("state") or {}).get("value")
            if data.get("method") == "echo_update" and echoed is not None and abs(echoed - value) <= tol:
                return msg["parent_header"].get("msg_id")
        return None

    def wait_for_idle(self, msg_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while msg_id not in self.idle and (left := deadline - time.monotonic()) > 0:
            self._next(min(left, 0.5))
        return msg_id in self.idle


# ---------------------------------------------------------------------------------------------- the page


def parse_max_agents(text: str) -> int | str | None:
    """`max agents: 27` -> 27, `max agents: none` -> None; '' when the text holds neither."""
    m = _MAX_AGENTS_RE.search(text or "")
    if m is None:
        return ""
    return None if m.group(1).lower() == "none" else int(m.group(1).replace(",", ""))


def _rank(v: int | None) -> float:
    return -1.0 if v is None else float(v)  # `none` is below every number


def wait_until_kernel_ready(page, timeout_s: float = 60.0) -> None:
    """Pitfall 2: the indicator says idle before a kernel exists; wait for a kernel name and idle."""
    page.wait_for_function(
        """() => {
            const panel = '.jp-NotebookPanel:not(.lm-mod-hidden) ';
            const name = document.querySelector(panel + '.jp-Toolbar-kernelName');
            const ind = document.querySelector(panel + '.jp-Notebook-ExecutionIndicator');
            return !!name && !!name.textContent.trim() && !/no kernel/i.test(name.textContent)
                && !!ind && ind.getAttribute('data-status') === 'idle';
        }""",
        timeout=timeout_s * 1000,
    )


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_until_run_all_done(page, timeout_s: float) -> None:
    """Every code cell has an execution count (none `[*]` or blank) and the kernel is idle."""
    page.wait_for_function(
        """() => {
            const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
            if (!panel) return false;
            const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
            const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            return !!ind && ind.getAttribute('data-status') === 'idle' && prompts.length > 0
                && prompts.every(p => /^\\[\\d+\\]:?$/.test(p.textContent.trim()));
        }""",
        timeout=timeout_s * 1000,
    )


def open_and_run_all(page, server: LabServer, name: str, run_timeout_s: float = 120.0) -> None:
    """Open `name`, Run All once its kernel is ready, wait until all cells ran and the explorer is rendered.

    Later cells may still change the explorer, so the check starts only when Run All is done. Then the
    explorer is scrolled into view: Lab's default windowing (content-visibility) leaves offscreen outputs
    unrendered, so their text is not what a user sees.
    """
    page.goto(server.notebook_url(name))
    wait_until_kernel_ready(page)
    run_all(page)
    handle = page.locator(f".{SPEED_FLOOR_CLASS} .noUi-handle").first
    handle.wait_for(state="attached", timeout=run_timeout_s * 1000)
    wait_until_run_all_done(page, run_timeout_s)
    result = page.locator(f".{MAX_AGENTS_CLASS}").first
    result.scroll_into_view_if_needed()
    handle.scroll_into_view_if_needed()
    handle.wait_for(state="visible", timeout=ROUND_TRIP_S * 1000)
    result.wait_for(state="visible", timeout=ROUND_TRIP_S * 1000)


@dataclass
class CheckResult:
    ok: bool
    reason: str
    steps: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def _dom_state(page) -> dict:
    handle = page.locator(f".{SPEED_FLOOR_CLASS} .noUi-handle").first
    return {
        # noUiSlider writes aria-valuenow/-max with one decimal (toFixed(1))
        "slider": float(handle.get_attribute("aria-valuenow")),
        "slider_max": float(handle.get_attribute("aria-valuemax")),
        "text": page.locator(f".{MAX_AGENTS_CLASS}").first.inner_text().strip(),
    }


def _wait_for(predicate, timeout_s: float, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def check_speed_floor_moves_max_agents(
    page, kernel, target_steps: int = 8, require_none: bool = True
) -> CheckResult:
    """Move the speed floor up to its top in about `target_steps` steps; each step, what the page shows
    must be what Python computed.

    Per step: press ArrowRight on the focused `.noUi-handle` a few times; wait until the kernel has
    handled the page's message carrying the new slider value, observe() callbacks included (`IOPubLog`);
    read `explorer.speed_floor.value` (must be the page's) and `explorer.result.value`; wait until the
    page's `max agents` text shows that value. Passes when the text changed, never went up, ended
    lower than it started (at `none` when `require_none`), and always matched Python. Never raises for a
    failed check: returns a falsy `CheckResult` whose `reason` says what went wrong.
    """
    steps: list[dict] = []

    def fail(reason: str) -> CheckResult:
        return CheckResult(False, reason, steps)

    state = _dom_state(page)
    first = parse_max_agents(state["text"])
    if first == "":
        return fail(f"no 'max agents: N|none' in .{MAX_AGENTS_CLASS} before moving: {state['text']!r}")
    steps.append({"slider": state["slider"], "shown": first, "python": None})
    try:
        comm_id = kernel_eval(kernel, "explorer.speed_floor.model_id")
    except Exception as e:  # no `explorer` in the kernel is a failed check, not a crash
        return fail(f"cannot read explorer.speed_floor in the kernel: {e}")
    iopub = IOPubLog(kernel)
    tol = 0.05 + 1e-9  # the page's aria-valuenow has one decimal
    handle = page.locator(f".{SPEED_FLOOR_CLASS} .noUi-handle").first
    presses = 1  # the first step measures how far one press moves the handle
    while len(steps) <= 4 * target_steps and state["slider"] < state["slider_max"]:
        before = state["slider"]
        handle.focus()  # then keys go to the focused handle (7x faster than handle.press, same events)
        for _ in range(presses):
            page.keyboard.press("ArrowRight")
        if not _wait_for(lambda b=before: _dom_state(page)["slider"] != b, ROUND_TRIP_S):
            return fail(f"the slider handle did not move from {before} on ArrowRight")
        state = _dom_state(page)
        if len(steps) == 1:
            per_press = state["slider"] - before
            presses = max(1, math.ceil((state["slider_max"] - before) / per_press / target_steps))
        parent = iopub.wait_for_echo(comm_id, state["slider"], tol, ROUND_TRIP_S)
        if parent is None:
            return fail(f"slider moved to {state['slider']} on the page, the kernel never received it")
        if not iopub.wait_for_idle(parent, ROUND_TRIP_S):
            return fail(
                f"the kernel did not finish handling the move to {state['slider']} in {ROUND_TRIP_S} s"
            )
        py = kernel_eval(kernel, "(explorer.speed_floor.value, explorer.result.value)")
        if abs(py[0] - state["slider"]) > tol:
            return fail(f"the page shows the slider at {state['slider']}, Python holds {py[0]}")
        py_value = parse_max_agents(py[1])
        if py_value == "":
            return fail(f"explorer.result.value has no 'max agents: N|none': {py[1]!r}")
        shown_ok = _wait_for(
            lambda pv=py_value: parse_max_agents(_dom_state(page)["text"]) == pv, ROUND_TRIP_S
        )
        state = _dom_state(page)
        shown = parse_max_agents(state["text"])
        steps.append({"slider": state["slider"], "shown": shown, "python": py_value})
        if not shown_ok:
            return fail(f"page shows {state['text']!r} but Python computed {py[1]!r} at {py[0]}")
        if _rank(shown) > _rank(steps[-2]["shown"]):
            return fail(f"max agents went up when the speed floor rose: {steps[-2]['shown']} -> {shown}")
        if shown is None:
            break
    last = steps[-1]["shown"]
    moved = f"the speed floor went {steps[0]['slider']} -> {steps[-1]['slider']}"
    if last == first:
        return fail(f"max agents stayed {first!r} while {moved}")
    if require_none and last is not None:
        return fail(f"max agents ended at {last}, not 'none', while {moved}")
    return CheckResult(True, f"max agents {first} -> {last} while {moved}", steps)


def check_notebook(
    browser, server: LabServer, name: str, screenshot: Path | None = None, **kw
) -> CheckResult:
    """Open `name` in a fresh page, Run All, run the slider check; save a screenshot (also when something
    raised on the way, to see where it stopped); close the page."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(ROUND_TRIP_S * 1000)
    kernel = None
    try:
        open_and_run_all(page, server, name)
        kernel = server.kernel_client(name)
        result = check_speed_floor_moves_max_agents(page, kernel, **kw)
        with contextlib.suppress(Exception):  # the explorer's top at the top of the screenshot
            page.locator(f".{SPEED_FLOOR_CLASS}").first.scroll_into_view_if_needed(timeout=2000)
        return result
    finally:
        if screenshot is not None:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(screenshot))
        if kernel is not None:
            kernel.stop_channels()
        page.close()


def chromium_missing_reason() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found: apt-get update && apt-get install -y --no-install-recommends chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]' (or pip install playwright)"
    return None


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


__all__ = [
    "CHROMIUM",
    "CheckResult",
    "IOPubLog",
    "LabServer",
    "check_notebook",
    "check_speed_floor_moves_max_agents",
    "chromium_missing_reason",
    "copy_notebook",
    "copy_unwired",
    "launch_chromium",
    "parse_max_agents",
    "write_mimic_notebook",
]
