#!/usr/bin/env bash
# Runs the benchmarks from a fresh checkout: bootstrap (.venv with the project), then
#   bench/run.sh [http|events|workers|rss|cluster|all] [options of that script]
#   bench/run.sh --smoke        every benchmark with tiny counts (what the test suite runs)
# Default: http. The http benchmark installs nginx and wrk with apt-get when missing
# (as root); the smoke run does not (it falls back to a Python load loop, no nginx).
# Results: one table on stdout, JSON in bench/results/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
what=${1:-http}
[ $# -gt 0 ] && shift
case "$what" in
  http|events|workers|rss|cluster) exec .venv/bin/python -m "bench.${what}_bench" "$@" ;;
  all) exec .venv/bin/python -m bench.all "$@" ;;
  --smoke|smoke) exec .venv/bin/python -m bench.all --smoke "$@" ;;
  *) echo "usage: bench/run.sh [http|events|workers|rss|cluster|all|--smoke] [options]" >&2; exit 2 ;;
esac
