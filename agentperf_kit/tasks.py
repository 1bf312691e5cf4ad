"""Task-level metrics: what the agent's user feels.

A **task** is one trajectory instance: one agent running one trajectory from its first turn to its last
(the rows of one agent from a ``turn == 0`` row up to the next one, in send order). Per task:

- ``completion_s`` (s) = end of the last response - send of the first request: model time, queueing and
  the tool waits between turns all included (the tool wait after the last turn is not: the task is done
  when its last answer arrives).
- ``finished``: the task reached its trajectory's last turn (T-1, with T the trajectory's number of turns);
  trajectories cut by the end of the level are not finished. ``complete``: finished and ran every turn
  from turn 0; an agent's first trajectory starts at a random turn (a task already in progress when the
  level starts): it can finish but is not complete, so it counts in the rate, not in completion times.
  ``ok``: every request of the task succeeded.
- ``slowdown`` = completion_s / the same trajectory's completion time on an **unloaded** system
  (``baseline_s``); ``baseline_source`` says where that came from: ``sim_unloaded`` (the simulated
  deployment replaying each trajectory with one agent, alone: :func:`unloaded_baseline`) or ``sweep_n1``
  (the median completion time of the trajectory's complete tasks in the sweep's N = 1 level; trajectories
  that level did not complete have no baseline, NaN). A task with a failed request has slowdown +inf (a
  miss, as a failed request's TTFT is +inf).

Per level (tasks that **end inside the steady window**):

- ``n_tasks`` finished ok tasks, ``n_tasks_failed`` finished tasks with a failed request;
- ``p50_slowdown``, ``p95_slowdown`` over complete tasks (failed ones count as +inf), ``p50_completion_s``
  of complete ok tasks;
- ``tasks_per_hour`` = n_tasks / window_s * 3600; ``tasks_per_hour_per_accelerator`` = that /
  accelerators; ``tasks_per_hour_per_mw`` = that / (power_w / 1e6), with the level's power and its scope
  (the user's declared/provisioned power when the sweep was given one, as for the tiers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .percentiles import percentile
from .sweep_requests import read_sweep_requests

__all__ = [
    "TASK_COLUMNS",
    "TASK_LEVEL_COLUMNS",
    "load_sweep_tasks",
    "n1_baseline",
    "sweep_unloaded_baseline",
    "task_level_stats",
    "task_table",
    "unloaded_baseline",
    "write_sweep_tasks",
]

TASK_COLUMNS = (
    "level",
    "concurrency",
    "agent",
    "trajectory_id",
    "first_phase_id",
    "n_requests",
    "t_start_s",
    "t_end_s",
    "completion_s",
    "tool_wait_s",
    "finished",
    "complete",
    "ok",
    "in_window",
    "baseline_s",
    "baseline_source",
    "slowdown",
)

TASK_LEVEL_COLUMNS = (
    "concurrency",
    "n_tasks",
    "n_tasks_failed",
    "p50_completion_s",
    "p50_slowdown",
    "p95_slowdown",
    "slowdown_baseline",
    "n_tasks_without_baseline",
    "tasks_per_hour",
    "tasks_per_hour_per_accelerator",
    "power_w",
    "power_scope",
    "tasks_per_hour_per_mw",
)


def task_table(
    requests: pd.DataFrame,
    n_turns: Mapping[str, int],
    *,
    window_start_s: float | None = None,
    window_end_s: float | None = None,
) -> pd.DataFrame:
    """One row per task (trajectory instance) of one level's request table (columns ``TASK_COLUMNS``
    without the baseline ones). ``n_turns``: trajectory id -> its number of turns. A task is
    ``in_window`` when its last response ended inside [window_start_s, window_end_s] (all tasks when the
    bounds are not given)."""
    cols = ["agent", "trajectory_id", "phase_id", "turn", "t_send_s", "t_end_s", "ok", "tool_delay_s"]
    missing = [c for c in [*cols, "level", "concurrency"] if c not in requests]
    if missing:
        raise ValueError(f"requests: missing column(s) {missing}; expected a request table (docs/schema.md)")
    df = requests.sort_values(["agent", "phase_id", "turn"], kind="stable")
    agent = df["agent"].to_numpy()
    turn = df["turn"].to_numpy()
    start = turn == 0
    # task number within the agent: cumulative count of turn-0 rows; rows before an agent's first turn 0
    # (its random start turn) get 0 and belong to no task
    task_no = pd.Series(start.astype(np.int64)).groupby(agent).cumsum().to_numpy()
    d = df.assign(_task=task_no)
    if d.empty:
        return pd.DataFrame(
            columns=[c for c in TASK_COLUMNS if c not in ("baseline_s", "baseline_source", "slowdown")]
        )
    t_send = d["t_send_s"].astype(float)
    t_end = d["t_end_s"].astype(float)
    # planned tool waits between turns (the last turn's wait comes after the task)
    g = d.assign(_send=t_send, _end=t_end, _ok=d["ok"].astype(bool)).groupby(["agent", "_task"], sort=True)
    out = g.agg(
        level=("level", "first"),
        concurrency=("concurrency", "first"),
        trajectory_id=("trajectory_id", "first"),
        first_phase_id=("phase_id", "first"),
        n_requests=("turn", "size"),
        last_turn=("turn", "max"),
        n_distinct_turns=("turn", "nunique"),
        t_start_s=("_send", "min"),
        t_end_s=("_end", "max"),
        ok=("_ok", "all"),
        _tool_total=("tool_delay_s", "sum"),
        _tool_last=("tool_delay_s", "last"),
    ).reset_index()
    want = out["trajectory_id"].map(lambda t: n_turns.get(str(t), -1)).to_numpy()
    out["finished"] = out["last_turn"].to_numpy() + 1 == want
    out["complete"] = out["finished"] & (out["n_distinct_turns"] == want) & (out["_task"] > 0)
    out["completion_s"] = out["t_end_s"] - out["t_start_s"]
    out["tool_wait_s"] = out["_tool_total"] - out["_tool_last"]
    if window_start_s is not None and window_end_s is not None:
        out["in_window"] = (out["t_end_s"] >= window_start_s) & (out["t_end_s"] <= window_end_s)
    else:
        out["in_window"] = True
    return out[[c for c in TASK_COLUMNS if c not in ("baseline_s", "baseline_source", "slowdown")]]


def n1_baseline(tasks: pd.DataFrame) -> pd.Series:
    """Trajectory id -> median completion time (s) of its complete ok tasks at N = 1 (the sweep's own
    unloaded measurement)."""
    t = tasks[(tasks["concurrency"] == 1) & tasks["complete"] & tasks["ok"]]
    return t.groupby("trajectory_id")["completion_s"].median()


def unloaded_baseline(
    trajectories: Sequence[Any], *, deployment: Any = None, efficiency: str = "mid"
) -> pd.Series:
    """Trajectory id -> completion time (s) of each trajectory replayed alone, one agent, from its first
    turn, on the simulated deployment (no other load): the simulated unloaded system."""
    from .agents import RunRules
    from .sim.presets import DEFAULT_DEPLOYMENT
    from .sim.virtual import run_sim_level

    trajs = [t for t in trajectories if t.turns]
    rules = RunRules(
        warmup_s=0.0,
        duration_s=0.0,
        min_trajectories=len(trajs),
        min_trajectories_per_agent=len(trajs),
        max_duration_s=1e9,
        ramp_s=0.0,
        random_start_turn=False,
        drain_timeout_s=1e9,
    )
    res = run_sim_level(trajs, 1, rules, deployment=deployment or DEFAULT_DEPLOYMENT, efficiency=efficiency)
    tasks = task_table(res.requests, {t.trajectory_id: len(t.turns) for t in trajs})
    tasks = tasks[tasks["complete"] & tasks["ok"]]
    return tasks.groupby("trajectory_id")["completion_s"].median()


def sweep_unloaded_baseline(config: Any) -> pd.Series:
    """:func:`unloaded_baseline` for a simulated sweep's configuration (its trajectory set, deployment and
    efficiency set), the one :func:`write_sweep_tasks` computes from the sweep's ``summary.json``: a
    sweep starts it beside its search (:mod:`agentperf_kit.sweep_jobs`) and passes it as ``unloaded``."""
    from .sweep import _Sweeper

    trajs = list(_Sweeper(config, Path("."), False).trajectories())
    dep = getattr(config.target_object, "deployment", None)
    return unloaded_baseline(trajs, deployment=dep, efficiency=config.efficiency)


def _with_baseline(tasks: pd.DataFrame, baseline: pd.Series, source: str) -> pd.DataFrame:
    out = tasks.copy()
    out["baseline_s"] = out["trajectory_id"].map(baseline).astype(float)
    out["baseline_source"] = source
    slow = out["completion_s"] / out["baseline_s"]
    out["slowdown"] = np.where(out["ok"], slow, math.inf)
    out.loc[out["baseline_s"].isna(), "slowdown"] = math.nan
    return out


def task_level_stats(
    tasks: pd.DataFrame,
    *,
    window_s: float,
    accelerators: int | None = None,
    power_w: float | None = None,
    power_scope: str | None = None,
) -> dict[str, Any]:
    """One level's task figures (``TASK_LEVEL_COLUMNS`` but ``concurrency``) from its task rows (with
    the baseline columns): tasks finishing in the window (see the module docstring)."""
    fin = tasks[tasks["in_window"] & tasks["finished"]]
    n = int(fin["ok"].sum())
    w = fin[fin["complete"]]
    good = w[w["ok"]]
    slow = w["slowdown"].to_numpy(dtype=float)
    has = ~np.isnan(slow)
    per_h = n / window_s * 3600.0 if window_s and window_s > 0 else math.nan
    sources = sorted(set(w["baseline_source"].dropna())) if "baseline_source" in w else []
    return {
        "n_tasks": n,
        "n_tasks_failed": int((~fin["ok"]).sum()),
        "p50_completion_s": percentile(good["completion_s"].to_numpy(dtype=float), 50)
        if len(good)
        else math.nan,
        "p50_slowdown": percentile(slow[has], 50) if has.any() else math.nan,
        "p95_slowdown": percentile(slow[has], 95) if has.any() else math.nan,
        "slowdown_baseline": ",".join(sources) if sources else None,
        "n_tasks_without_baseline": int((~has).sum()),
        "tasks_per_hour": per_h,
        "tasks_per_hour_per_accelerator": per_h / accelerators if accelerators else None,
        "power_w": power_w,
        "power_scope": power_scope if power_w else None,
        "tasks_per_hour_per_mw": per_h / (power_w / 1e6) if power_w and power_w > 0 else None,
    }


# -- sweep directories ----------------------------------------------------------------------------------


def _sweep_trajectories(summary: Mapping[str, Any]) -> list[Any]:
    """The trajectory set a sweep replayed (as the sweep built it, what-if included)."""
    from .sweep import _Sweeper
    from .sweep_config import SweepConfig

    cfg = SweepConfig(**{**summary["config"], "out": None})
    return list(_Sweeper(cfg, Path("."), False).trajectories())


#: requests (of the steady window, as levels.csv counts them) tabled at a time by :func:`write_sweep_tasks`
TASK_PART_REQUESTS = 500_000


def write_sweep_tasks(
    directory: str | Path, *, baseline: str = "auto", unloaded: pd.Series | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute a finished sweep's task tables and write ``tasks.parquet`` (one row per task) and
    ``tasks.csv`` (one row per level). ``baseline``: ``sim_unloaded``, ``sweep_n1`` or ``auto`` (the
    simulated unloaded replay for a simulated target, else the N = 1 level); ``unloaded``: that replay
    already computed (:func:`sweep_unloaded_baseline` of the sweep's configuration), else it is run here.
    Returns (tasks, per level). Memory: one level's requests at a time."""
    d = Path(directory)
    summary = json.loads((d / "summary.json").read_text())
    levels = pd.read_csv(d / "levels.csv")
    cfg = summary.get("config", {})
    target = str(summary.get("target", cfg.get("target", "")))
    from .targets import SimTarget, parse_target

    swept = parse_target(target, model=summary.get("model") or cfg.get("model") or "unknown")
    is_sim = swept.virtual_time
    if baseline == "auto":
        baseline = "sim_unloaded" if is_sim else "sweep_n1"
    if baseline not in ("sim_unloaded", "sweep_n1"):
        raise ValueError(f"baseline must be 'auto', 'sim_unloaded' or 'sweep_n1', got {baseline!r}")
    if baseline == "sim_unloaded" and not is_sim:
        raise ValueError(f"baseline='sim_unloaded' needs a simulated target; {d} swept {target}")
    trajs = _sweep_trajectories(summary)
    n_turns = {t.trajectory_id: len(t.turns) for t in trajs}
    need = [
        "level",
        "concurrency",
        "agent",
        "trajectory_id",
        "phase_id",
        "turn",
        "t_send_s",
        "t_end_s",
        "ok",
        "tool_delay_s",
    ]
    parts = []
    for _, lv in levels.iterrows():
        man = _level_manifest(d, int(lv["concurrency"]), int(lv.get("extensions", 0)))
        win = man.get("window", {})
        # a task is one agent's: a big level is tabled by ranges of agents (the same rows, in the same
        # order as one table of the level: by agent, then task), so memory is a part of the level
        n = int(lv["concurrency"])
        n_req = lv.get("n_requests")
        k = 1 if n_req is None or pd.isna(n_req) else math.ceil(float(n_req) / TASK_PART_REQUESTS)
        k = max(1, min(n, k))
        level_parts: list[pd.DataFrame] = []
        for j in range(k):
            agents = (n * j // k, n * (j + 1) // k) if k > 1 else None
            rows = read_sweep_requests(
                d, columns=need, levels=levels[levels["level"] == lv["level"]], agents=agents
            )
            if len(rows) or (j == k - 1 and not level_parts):  # an empty level: its empty table
                level_parts.append(
                    task_table(
                        rows,
                        n_turns,
                        window_start_s=win.get("window_start_s"),
                        window_end_s=win.get("window_end_s"),
                    )
                )
            del rows
        parts += level_parts
    tasks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TASK_COLUMNS)
    if baseline == "sim_unloaded" and unloaded is not None:
        base = unloaded
    elif baseline == "sim_unloaded":
        base = unloaded_baseline(
            trajs,
            deployment=swept.deployment if isinstance(swept, SimTarget) else None,
            efficiency=cfg.get("efficiency", "mid"),
        )
    else:
        base = n1_baseline(tasks)
    tasks = _with_baseline(tasks, base, baseline)
    user_w = summary.get("power_w")
    rows_out = []
    for _, lv in levels.iterrows():
        t = tasks[tasks["level"] == lv["level"]]
        if user_w and lv.get("power_scope") != "measured":
            pw, scope = user_w, summary.get("power_scope")
        else:
            pw = lv.get("power_w")
            pw = None if pw is None or (isinstance(pw, float) and math.isnan(pw)) else float(pw)
            scope = lv.get("power_scope")
        rows_out.append(
            {
                "concurrency": int(lv["concurrency"]),
                **task_level_stats(
                    t,
                    window_s=float(lv["window_s"]),
                    accelerators=summary.get("accelerators"),
                    power_w=pw,
                    power_scope=scope,
                ),
            }
        )
    per_level = pd.DataFrame(rows_out, columns=list(TASK_LEVEL_COLUMNS))
    tasks.to_parquet(d / "tasks.parquet", index=False)
    per_level.to_csv(d / "tasks.csv", index=False)
    return tasks, per_level


def load_sweep_tasks(directory: str | Path) -> pd.DataFrame:
    """A sweep's per-level task table (``tasks.csv``), computed and written first when it is missing
    (sweeps made before task metrics existed)."""
    p = Path(directory) / "tasks.csv"
    if p.exists():
        return pd.read_csv(p)
    return write_sweep_tasks(directory)[1]


def _level_manifest(d: Path, n: int, ext: int) -> dict[str, Any]:
    p = d / "levels" / f"n{n:05d}_e{ext}" / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {}


def format_task_table(per_level: pd.DataFrame) -> str:
    """The per-level task table as text (what ``agentperf report`` prints)."""
    lines = [
        f"{'N':>6}{'tasks':>7}{'failed':>7}{'P50 slow':>10}{'P95 slow':>10}{'P50 task s':>12}{'tasks/h':>10}"
        f"{'tasks/h/acc':>12}{'tasks/h/MW':>12}",
    ]
    for _, r in per_level.iterrows():
        lines.append(
            f"{int(r['concurrency']):>6}{int(r['n_tasks']):>7}{int(r['n_tasks_failed']):>7}"
            f"{_f(r['p50_slowdown'], '{:.2f}x'):>10}{_f(r['p95_slowdown'], '{:.2f}x'):>10}"
            f"{_f(r['p50_completion_s'], '{:,.0f}'):>12}{_f(r['tasks_per_hour'], '{:,.0f}'):>10}"
            f"{_f(r['tasks_per_hour_per_accelerator'], '{:,.1f}'):>12}"
            f"{_f(r['tasks_per_hour_per_mw'], '{:,.0f}'):>12}"
        )
    src = per_level["slowdown_baseline"].dropna()
    lines.append(
        f"slowdown against: {src.iloc[0] if len(src) else 'no baseline'} "
        "(sim_unloaded: each trajectory replayed alone on the simulated system; sweep_n1: the N = 1 level)"
    )
    return "\n".join(lines)


def _f(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return fmt.format(v)
