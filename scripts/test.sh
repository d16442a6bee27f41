#!/usr/bin/env bash
# Set everything up, lint, then run the whole test suite against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check services tests bench
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
