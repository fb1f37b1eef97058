#!/usr/bin/env bash
# Runs every Herald benchmark scenario (3 runs each) and rewrites the generated tables of docs/benchmarks.md.
# Extra arguments go to `herald-load all` (e.g. --no-peers, --skip E, --runs 1 --no-docs).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000
cargo build --release -p herald-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/herald-load" all "$@"
