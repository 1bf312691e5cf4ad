"""What a local Ray runtime with one idle scale-out worker costs per second, by process (issue 14).

Starts the scale-out's local runtime in this process (``scaleout.runtime.connect``), places one worker's
actor (no level), waits 5 s, then reads every process's CPU (user + system) over ``--seconds`` twice:
idle, and with the driver polling the actor every 0.5 s as it does during a level. ``--before`` starts the
runtime as it was started before its settings were quietened (no ``QUIET_RUNTIME_ENV``, no
``NO_IDLE_WORKERS_ENV``, Ray's own head parameters: log monitor, autoscaler monitor, agents' ports chosen by
the agents), for comparison; run each in its own process.

    python benchmarks/ray_idle_cpu.py            # the runtime as the scale-out starts it now
    python benchmarks/ray_idle_cpu.py --before   # as it was started before

Prints CPU-s per second for the whole tree and per process, with the 1-min load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from ray_scaleout import tree_cpu_s  # the benchmark beside this one (its folder is on sys.path)


def snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every process below it, by pid with a short name."""
    return tree_cpu_s(set())


def report(a: dict, b: dict, seconds: float, label: str) -> None:
    rows: dict[str, float] = {}
    for pid, (name, cpu) in b.items():
        rows[name] = rows.get(name, 0.0) + cpu - a.get(pid, (name, 0.0))[1]
    total = sum(rows.values()) / seconds
    print(f"-- {label}: {total:.4f} CPU-s/s in all over {seconds:g} s, load (1 min) {os.getloadavg()[0]:.2f}")
    for name, cpu in sorted(rows.items(), key=lambda kv: -kv[1]):
        if cpu > 0:
            print(f"   {cpu / seconds:.4f}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", action="store_true", help="the runtime as started before its settings")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from agentperf_kit.scaleout import runtime
    from agentperf_kit.scaleout.worker import LevelWorker

    if args.before:
        runtime.QUIET_RUNTIME_ENV = {}
        runtime.NO_IDLE_WORKERS_ENV = {}
        runtime._head_params = lambda ray: contextlib.nullcontext({})  # type: ignore[assignment]
    t = time.perf_counter()
    ray = runtime.connect(None, 2)
    flag = " --before" if args.before else ""
    print(f"== ray_idle_cpu{flag}: runtime started in {time.perf_counter() - t:.0f} s")
    actor = ray.remote(num_cpus=1, max_restarts=0)(LevelWorker).remote()
    ray.get(actor.host.remote())
    time.sleep(5)
    a = snapshot()
    time.sleep(args.seconds)
    report(a, snapshot(), args.seconds, "idle: one worker's actor")
    a, t0 = snapshot(), time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        ray.get(actor.poll.remote())
        time.sleep(0.5)
    report(a, snapshot(), args.seconds, "the driver polling it every 0.5 s")


if __name__ == "__main__":
    main()
