"""Cost of a default sweep on big simulated systems: wall time, peak memory and disk, with the load.

Runs ``agentperf sweep --target sim:PRESET --out DIR`` (defaults otherwise: AA's validity rules, the
estimated cap) in a child process per system and prints, per system: wall time, peak RSS of the child
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the largest child so far, its side-job worker
included), bytes on disk in the sweep directory, the child's CPU time (user + system, its worker's
included: less sensitive to other load than wall time), the levels
measured, the answers with their band, and the 1-minute load average before and after (the machine may
be shared: compare figures only at a similar load). ``-- --no-band`` measures the sweep without the band.
Targets (issue 12): GB300 NVL72 <= 120 s wall,
<= 1.5 GB peak RSS, <= 1 GB on disk on a 2-core machine; the default H200 sweep <= 10 s.

    python benchmarks/big_sweep.py [--systems h200x8-dsv4pro gb300nvl72-dsv4pro] [--keep DIR]
                                   [--timeout-s 3600] [-- extra sweep flags]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"h200x8-dsv4pro": (10.0, None, None), "gb300nvl72-dsv4pro": (120.0, 1.5e9, 1e9)}


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=list(TARGETS))
    ap.add_argument("--keep", help="parent directory for the sweep directories (default: a temporary one)")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="give up on a system after this long")
    ap.add_argument("extra", nargs="*", help="extra flags for agentperf sweep (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(args.keep or tmp)
        parent.mkdir(parents=True, exist_ok=True)
        for system in args.systems:
            out = parent / system
            cmd = [sys.executable, "-m", "agentperf_kit.cli", "sweep", "--target", f"sim:{system}"]
            cmd += ["--out", str(out), "--json", *args.extra]
            load0 = os.getloadavg()[0]
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
            except subprocess.TimeoutExpired:
                print(f"{system}: gave up after {args.timeout_s:.0f} s (load {load0:.1f} at the start)")
                continue
            wall = time.perf_counter() - t0
            load1 = os.getloadavg()[0]
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            rss = ru.ru_maxrss * 1024  # KiB on Linux
            cpu = (ru.ru_utime + ru.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            disk = _disk_bytes(out)
            if proc.returncode not in (0, 3):
                print(f"{system}: agentperf sweep exited {proc.returncode}\n{proc.stderr[-2000:]}")
                continue
            s = json.loads(proc.stdout)
            want_wall, want_rss, want_disk = TARGETS.get(system, (None, None, None))

            def vs(target, fmt):
                return f" (target <= {fmt.format(target)})" if target else ""

            print(
                f"{system}  load average {load0:.1f} -> {load1:.1f} (1 min, {os.cpu_count()} CPUs)  "
                f"simulator core: {s.get('simulator_core')}"
            )
            print(
                f"  wall time {wall:,.1f} s{vs(want_wall, '{:.0f} s')}, CPU time {cpu:,.1f} s (of which "
                f"{s.get('side_job_cpu_s') or 0:,.1f} s in {s.get('side_job_workers') or 0} side-job workers)"
            )
            print(
                f"  peak RSS (largest child so far) {rss / 1e9:.2f} GB"
                f"{vs(want_rss and want_rss / 1e9, '{:.1f} GB')}"
            )
            print(f"  disk {disk / 1e9:.3f} GB{vs(want_disk and want_disk / 1e9, '{:.1f} GB')}")
            print(
                f"  levels {s['n_levels']} (N = {[lv['concurrency'] for lv in s['levels']]}), cap "
                f"{s.get('max_agents_cap')} ({s.get('max_agents_cap_source')}), simulated requests "
                f"{s['simulated_requests']:,}, meets AA rules: {s['meets_aa_rules']}"
            )
            for t in s["tiers"]:
                lb = ">=" if t["max_agents_is_lower_bound"] else ""
                extra = (
                    f"  band low {t['band_low_agents']} / high {t['band_high_agents']}"
                    if "band_low_agents" in t
                    else ""
                )
                print(
                    f"  {t['name']}: {lb}{t['max_agents']} agents, "
                    f"{t['agents_per_accelerator']:.2f}/GPU{extra}"
                )


if __name__ == "__main__":
    main()
