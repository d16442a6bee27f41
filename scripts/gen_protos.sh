#!/usr/bin/env bash
# Regenerate the Python code of the event contracts (proto-schemas/) into
# services/common/events/_gen/ (git-ignored: never committed, never edited by hand).
# Installs do this themselves (setup.py's build step); run this after editing a .proto in an
# editable checkout. Same code path as the build: setup.py's generate_protos.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import sys; sys.path.insert(0, "."); from pathlib import Path
import setup; setup.generate_protos(Path(setup.GEN_DIR))'
