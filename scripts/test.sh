#!/usr/bin/env bash
# Set everything up, then run the whole test suite against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
