#!/usr/bin/env bash
# The whole test suite (run as root: the tests build network namespaces). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (tests create network namespaces)" >&2; exit 1; }
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --quiet
cargo test --workspace -- --test-threads="${WEFT_TEST_THREADS:-4}"
