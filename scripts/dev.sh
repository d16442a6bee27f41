#!/usr/bin/env bash
# Set everything up, then run the whole stack on this machine (ampgate dev).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/ampgate dev "$@"
