#!/usr/bin/env bash
# Builds the aisle-api wheel (the gRPC stubs only, packaging/aisle-api) into OUT_DIR (default dist/) and prints
# its path. Usage: build_api_wheel.sh [OUT_DIR]. The version is the aisle distribution's (pyproject.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
python=${PYTHON:-"$root/.venv/bin/python"}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$root/packaging/aisle-api/pyproject.toml" "$root/packaging/aisle-api/README.md" "$stage/"
cp -r "$root/gen/python/aisle" "$stage/aisle"
find "$stage/aisle" -name __pycache__ -prune -exec rm -rf {} +
version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$root/pyproject.toml")
sed -i "s/^version = \"0.0.0\".*/version = \"$version\"/" "$stage/pyproject.toml"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" "$stage" >&2
echo "$out/aisle_api-$version-py3-none-any.whl"
