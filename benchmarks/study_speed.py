"""Speed of a study: a grid of default-size simulated sweeps run in parallel vs one after another.

The grid: the default deployment (h200x8-dsv4pro, AA's validity rules, the sweep defaults) x the three
efficiency sets x four what-if knob sets (none, tool_delay=0.5, output=0.5, context=0.5) = 12 sweeps, with
the band off (the efficiency axis measures the low and high sets as sweeps of their own). The same sweeps
run first one after another in this process (``run_sweep``), then as a study (``run_study``) on the chosen
executor with ``--workers`` workers; the study's time includes starting its workers (and, for Ray, the
local head: also printed apart). The study's answers must equal the sequential ones. Target (issue 14):
study <= 0.6x the sequential time on the 2-core machine.

    python benchmarks/study_speed.py [--what-ifs 4] [--efficiency low,mid,high] [--level-duration 600]
        [--executor process|ray|both|auto] [--workers 2] [--band] [--save benchmarks/results/study_speed.txt]

``--executor auto``: what `agentperf study` picks by default (the process pool unless a Ray cluster is
given).
Quick check (4 short sweeps): ``--what-ifs 2 --efficiency low,high --level-duration 120``. Prints the load
average before and after: other work on the machine slows both sides, and not equally (the sequential side
runs first).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

from agentperf_kit.errors import AgentperfError
from agentperf_kit.study import run_study
from agentperf_kit.study_config import StudyConfig
from agentperf_kit.sweep import SweepConfig, run_sweep

WHAT_IFS = ["none", "tool_delay=0.5", "output=0.5", "context=0.5"]


def _grid(what_ifs: int, efficiency: list[str], level_duration_s: float, band: bool) -> StudyConfig:
    sweep: dict = {"band": band}
    if level_duration_s != 600:
        sweep["level_duration_s"] = level_duration_s
    return StudyConfig(
        deployments=["h200x8-dsv4pro"], efficiency=efficiency, what_if=WHAT_IFS[:what_ifs], sweep=sweep
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what-ifs", type=int, default=4, choices=[1, 2, 3, 4], help="what-if sets (default 4)")
    ap.add_argument("--efficiency", default="low,mid,high", help="efficiency sets (default low,mid,high)")
    ap.add_argument("--level-duration", type=float, default=600.0, help="level_duration_s (default 600)")
    ap.add_argument("--executor", choices=["process", "ray", "both", "auto"], default="process")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--band", action="store_true", help="measure each sweep's band too (off by default)")
    ap.add_argument("--save", default="benchmarks/results/study_speed.txt", help="append the output here")
    args = ap.parse_args()
    save = Path(args.save) if args.save else None
    if save:
        save.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str = "") -> None:  # printed, and appended to --save as it comes (a failure keeps it)
        print(line, flush=True)
        if save:
            with save.open("a") as fh:
                fh.write(line + "\n")

    cfg = _grid(args.what_ifs, args.efficiency.split(","), args.level_duration, args.band)
    points = cfg.points()
    say(f"study_speed {time.strftime('%Y-%m-%d %H:%M:%S')}  cores {os.cpu_count()}  load {_load()}")
    say(
        f"grid: {len(points)} sweeps of {points[0].deployment} (efficiency x what-if), level_duration_s "
        f"{args.level_duration:g}, band {'on' if args.band else 'off'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        seq_answers = {}
        t0, c0 = time.perf_counter(), time.process_time()
        for p in points:
            res = run_sweep(
                SweepConfig(**p.sweep, out=f"{tmp}/seq/{p.point_id}"), progress=False, side_workers=0
            )  # as the study runs each sweep
            seq_answers[p.point_id] = [t["max_agents"] for t in res.summary["tiers"]]
        seq, seq_cpu = time.perf_counter() - t0, time.process_time() - c0
        say(
            f"sequential: {seq:.1f} s ({seq / len(points):.1f} s per sweep), CPU {seq_cpu:.1f} s  "
            f"load {_load()}"
        )
        for kind in ["process", "ray"] if args.executor == "both" else [args.executor]:
            start_s = 0.0
            if kind == "ray":
                import ray

                from agentperf_kit.scaleout.runtime import start_local_ray

                t0 = time.perf_counter()
                try:
                    start_local_ray(args.workers)
                except AgentperfError as exc:
                    say(f"study on ray: the local head did not start ({exc})  load {_load()}")
                    continue
                start_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            with redirect_stdout(io.StringIO()):
                df = run_study(
                    cfg, f"{tmp}/study-{kind}", workers=args.workers, executor=kind, progress=False
                )
            wall = time.perf_counter() - t0 + start_s
            if kind == "ray":
                ray.shutdown()
            got = {pt: list(g["max_agents"]) for pt, g in df.groupby("point")}
            same = all(got.get(p.point_id) == seq_answers[p.point_id] for p in points)
            extra = f" (local Ray head start {start_s:.1f} s included)" if kind == "ray" else ""
            if kind == "auto":
                from agentperf_kit.study_exec import resolve_executor

                extra = f" (auto chose {resolve_executor('auto', None)})"
            say(
                f"study on {kind}, {args.workers} workers: {wall:.1f} s{extra}  ratio {wall / seq:.2f} "
                f"(target <= 0.60)  answers equal to sequential: {'yes' if same else 'NO'}  load {_load()}"
            )
            per = df.drop_duplicates("point")
            say(
                f"  in the workers: per-sweep wall mean {per['sweep_wall_s'].mean():.1f} s, max "
                f"{per['sweep_wall_s'].max():.1f} s; CPU of all sweeps {per['sweep_cpu_s'].sum():.1f} s "
                f"(sequential {seq_cpu:.1f} s); workers used: {df['worker'].nunique()}"
            )
    if save:
        say("")
        print(f"appended to {save}")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
