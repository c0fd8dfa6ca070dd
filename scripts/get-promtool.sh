#!/usr/bin/env bash
# build/tools/promtool, Prometheus's metrics linter (tests/e2e/test_metrics_lint.py), taken
# out of Debian's `prometheus` package with `apt-get download` (no root needed): installing
# the package would also start a Prometheus server. About 19 MB, a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/tools/promtool
if command -v promtool >/dev/null; then mkdir -p build/tools; ln -sf "$(command -v promtool)" "$out"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
  echo "get-promtool: 'apt-get download prometheus' failed; run 'sudo apt-get update' first," \
       "or put a promtool binary on PATH" >&2
  exit 1
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p build/tools
cp "$tmp/x/usr/bin/promtool" "$out"
echo "get-promtool: $out ($("$out" --version 2>&1 | head -1))"
