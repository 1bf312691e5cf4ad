#!/usr/bin/env bash
# Before/after under the same load (issue 18): client_outside.py with this worktree's client, then with the
# client of git revision BASE (exported with `git archive` to a temporary directory), back to back. On a
# shared machine each run goes into its own session whose scheduler autogroup gets nice -10 (root only;
# otherwise the runs keep the default), so that other sessions' load starves the client less; the load
# average is printed before each run. Figures taken this way compare two clients, they are not the quiet
# figures the targets are judged on.
#
#   benchmarks/client_outside_pair.sh BASE --workload B [more client_outside.py flags]
set -euo pipefail
base=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
old=$(mktemp -d /tmp/client_outside_base.XXXXXX)
trap 'rm -rf "$old"' EXIT
git -C "$root" archive "$base" | tar -x -C "$old"
run() {  # directory label flags...
  local dir=$1 label=$2; shift 2
  echo "### $label $(date -u +%T) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd "$dir" && PYTHONPATH=$dir setsid bash -c \
    'echo -10 > /proc/self/autogroup 2>/dev/null || true; exec "$0" benchmarks/client_outside.py "$@" --quiet --no-append' \
    "$py" "$@" 2>&1 | tail -9)
}
run "$root" "this client ($(git -C "$root" log -1 --format=%h))" "$@"
run "$old" "client of $base" "$@"
