#!/usr/bin/env bash
# Generate Python code for the event contracts (proto-schemas/) into
# services/common/events/_gen/ (git-ignored: never committed, never edited by hand).
# protoc emits absolute imports (`from ampgate.events.v1 import change_pb2`); they are
# rewritten to the package path so the generated modules import without touching sys.path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=services/common/events/_gen
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wkt=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mapfile -t protos < <(cd proto-schemas && find ampgate -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I proto-schemas -I "$wkt" --python_out="$tmp" --pyi_out="$tmp" "${protos[@]}"
pkg=services.common.events._gen
find "$tmp" -name '*.py' -o -name '*.pyi' | while read -r f; do
  sed -i -E "s/^from ampgate\./from ${pkg}.ampgate./" "$f"
done
# Every directory a package, so setuptools and type checkers see them.
find "$tmp" -type d -exec touch {}/__init__.py \;
# Replace only when something changed: other processes may be importing it right now.
if ! diff -rq "$tmp" "$out" >/dev/null 2>&1; then
  mkdir -p "$(dirname "$out")"
  rm -rf "$out.old"
  [ -d "$out" ] && mv "$out" "$out.old"
  cp -r "$tmp" "$out"
  rm -rf "$out.old"
fi
