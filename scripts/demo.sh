#!/usr/bin/env bash
# The lab demo: a multi-node cluster of network namespaces running the real weftd and weft
# plugin, its connectivity matrix printed, then torn down. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the lab builds network namespaces)" >&2; exit 1; }
./scripts/install-deps.sh
cargo build --release --quiet --bin weft --bin weftd --bin weft-lab --bin weft-agnhost
# --datastore kubernetes runs a real Kubernetes v1.20.2: built once (~10 min), then cached.
for a in "$@"; do
  case $a in kubernetes|kube|--datastore=kubernetes|--datastore=kube)
    WEFT_KUBE_ASSETS=$(./scripts/kube-build.sh --print-dir)
    export WEFT_KUBE_ASSETS ;;
  esac
done
exec target/release/weft-lab demo "$@"
