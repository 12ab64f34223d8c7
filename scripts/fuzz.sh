#!/usr/bin/env bash
# Runs weft's cargo-fuzz targets (fuzz/), each for a given time. Not part of CI.
#
#   ./scripts/fuzz.sh                 # every target, 300 s each
#   ./scripts/fuzz.sh 60              # every target, 60 s each
#   ./scripts/fuzz.sh 600 netconf     # one target
#
# Targets: netconf (network config: weft_cni::parse_header + the plugin's Config::parse),
# result (CniResult::from_json / to_json round trip in every version), cni_args (CNI_ARGS
# and the CNI_* environment), ipam_state (reservation files and the store over arbitrary
# files). Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features come from
# RUSTC_BOOTSTRAP=1 on the stable toolchain. The corpus grows in fuzz/corpus/<target>
# (seeded from fuzz/seeds/<target>); a crash is saved in fuzz/artifacts/<target> and the
# script exits non-zero. Reproduce one with:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>   (in fuzz/)
set -euo pipefail

seconds=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(netconf result cni_args ipam_state)
fi

cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

cargo fuzz build -O

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    dict=()
    case $t in netconf | result) dict=(-dict=dict/json.dict) ;; esac
    echo "== $t: ${seconds}s"
    status=0
    cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" >"artifacts/$t/last-run.log" 2>&1 || status=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)|panicked at' \
        "artifacts/$t/last-run.log" || true
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: crashes in ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crashes"
