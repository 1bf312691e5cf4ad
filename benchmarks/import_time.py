"""How long ``import agentperf_kit`` takes (target <= 0.5 s), and the first use of the main names.

Each figure is the median of ``--repeat`` fresh interpreters (``python -X importtime`` is not used: it
slows the import it measures). Prints one line per statement with the median and the range, in seconds.

    python benchmarks/import_time.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STATEMENTS = {
    "import agentperf_kit": "import agentperf_kit",
    "from agentperf_kit import run_sweep": "from agentperf_kit import run_sweep",
    "from agentperf_kit import load_sweep, Tier": "from agentperf_kit import load_sweep, Tier",
}


def _time_once(stmt: str) -> float:
    code = f"import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} (1 min)")
    for label, stmt in STATEMENTS.items():
        times = [_time_once(stmt) for _ in range(args.repeat)]
        print(
            f"{label:45s} median {statistics.median(times):.3f} s"
            f"  (min {min(times):.3f}, max {max(times):.3f}, n={len(times)})"
        )


if __name__ == "__main__":
    main()
