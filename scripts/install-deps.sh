#!/usr/bin/env bash
# Installs the Debian packages weft's build, tests, lab and benchmarks use. Idempotent.
set -euo pipefail
PACKAGES=(
  containernetworking-plugins  # reference bridge/host-local/portmap/bandwidth: peers and comparisons
  etcd-server etcd-client      # the etcd datastore, for real
  iproute2                     # only for humans inspecting a kept lab (`ip netns`); code uses netlink
  iputils-ping iperf3          # probes and the datapath benchmark
  ethtool                      # the datapath benchmark reads VXLAN offloads (ethtool -k)
  nftables iptables            # both firewall drivers
  protobuf-compiler            # etcd-client generates its gRPC code at build time
  containerd runc              # tests/containerd.rs: a real runtime driving weft through the CRI
  hyperfine busybox-static tcpdump procps
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian enables an etcd system service on install; weft's tests start their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
