#!/usr/bin/env bash
# The whole test suite (run as root: the tests build network namespaces). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (tests create network namespaces)" >&2; exit 1; }
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --quiet
# Real Kubernetes v1.20.2 for crates/lab/tests/kube_lab.rs: built once (~10 min), then cached
# outside the repository; an explicit WEFT_KUBE_ASSETS is used as is.
WEFT_KUBE_ASSETS=$(./scripts/kube-build.sh --print-dir)
export WEFT_KUBE_ASSETS
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# No doc tests: the crates have none, and a trailing "0 passed" would hide the real count.
status=0
cargo test --workspace --no-fail-fast --lib --bins --tests -- --test-threads="${WEFT_TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
