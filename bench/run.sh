#!/usr/bin/env bash
# Runs the benchmarks from a fresh checkout: bootstrap (.venv with the project), then
#   bench/run.sh [http|events|workers|all] [options of that script]
# Default: http. The http benchmark installs nginx and wrk with apt-get when missing
# (as root). Results: one table on stdout, JSON in bench/results/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
what=${1:-http}
[ $# -gt 0 ] && shift
case "$what" in
  http|events|workers) exec .venv/bin/python -m "bench.${what}_bench" "$@" ;;
  all)
    .venv/bin/python -m bench.http_bench "$@"
    .venv/bin/python -m bench.events_bench
    .venv/bin/python -m bench.workers_bench
    ;;
  *) echo "usage: bench/run.sh [http|events|workers|all] [options]" >&2; exit 2 ;;
esac
