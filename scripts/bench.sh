#!/usr/bin/env bash
# Builds release binaries and runs every weft-bench suite (not part of the test suite; run as
# root: the suites build network namespaces). Figures are printed, and written as JSON to
# $OUT (default target/bench-results). Takes about 10 minutes on 2 vCPUs.
#   ./scripts/bench.sh                    # all suites
#   ./scripts/bench.sh datapath churn     # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the benchmarks create network namespaces)" >&2; exit 1; }
./scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p weft-plugin -p weft-agent -p weft-lab -p weft-bench -p weft-agnhost
BIN="$CARGO_TARGET_DIR/release"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results}"
mkdir -p "$OUT"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(plugin churn datapath control-plane policy)
# The policy suite's scale and latency parts run a real Kubernetes v1.20.2 (built once, cached).
case " ${suites[*]} " in *" policy "*)
  WEFT_KUBE_ASSETS=$(./scripts/kube-build.sh --print-dir)
  export WEFT_KUBE_ASSETS ;;
esac
for s in "${suites[@]}"; do
  echo "=== weft-bench $s"
  "$BIN/weft-bench" "$s" --json "$OUT/$s.json"
  echo
done
echo "JSON in $OUT"
