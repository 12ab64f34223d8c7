#!/usr/bin/env bash
# Installs the Debian packages weft's build, tests, lab and benchmarks use. Idempotent.
#
# Packages are installed with --no-install-recommends, so every package whose *recommended*
# packages we rely on must name them itself (protobuf-compiler only recommends libprotobuf-dev,
# which holds google/protobuf/*.proto: without it etcd-client's build script fails on a fresh
# machine). crates/lab/tests/setup.rs audits this list against apt's Recommends, and each
# package below names a file it must provide, checked after the install.
set -euo pipefail

# package  file it provides that we use
BUILD=(
  "protobuf-compiler      /usr/bin/protoc"                                 # etcd-client's gRPC code
  "libprotobuf-dev        /usr/include/google/protobuf/descriptor.proto"  # the .proto files protoc imports
)
TEST=(
  "containernetworking-plugins /usr/lib/cni/host-local"  # reference plugins: peers and comparisons
  "etcd-server            /usr/bin/etcd"                   # the etcd datastore, for real
  "etcd-client            /usr/bin/etcdctl"
  "iproute2               /bin/ip"                        # only for humans inspecting a kept lab
  "iputils-ping           /bin/ping"                       # probes
  "iperf3                 /usr/bin/iperf3"                 # the datapath benchmark
  "ethtool                /sbin/ethtool"                   # the datapath benchmark reads VXLAN offloads
  "nftables               /usr/sbin/nft"                   # firewall driver
  "iptables               /usr/sbin/iptables-nft-restore" # firewall driver
  "netbase                /etc/protocols"                  # recommended by nftables; nft and iptables resolve names
  "containerd             /usr/bin/containerd"             # tests/containerd.rs: a real CRI runtime
  "runc                   /usr/bin/runc"
  "hyperfine              /usr/bin/hyperfine"
  "busybox-static         /bin/busybox"
  "tcpdump                /usr/bin/tcpdump"
  "procps                 /usr/bin/pgrep"
  "openssl                /usr/bin/openssl"                # the kube lab's PKI (CA, apiserver and client certs)
)
if [ "${1:-}" = "--list" ]; then # for the audit test: "package file" per line
  for e in "${BUILD[@]}"; do echo "build $e"; done; for e in "${TEST[@]}"; do echo "test $e"; done
  exit 0
fi

missing=()
for entry in "${BUILD[@]}" "${TEST[@]}"; do
  read -r pkg _ <<<"$entry"
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for entry in "${BUILD[@]}" "${TEST[@]}"; do
  read -r pkg file <<<"$entry"
  [ -e "$file" ] || { echo "install-deps: $pkg is installed but $file is missing" >&2; exit 1; }
done
# Debian enables an etcd system service on install; weft's tests start their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
