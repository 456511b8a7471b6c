#!/usr/bin/env bash
# Installs what building and testing zt needs on a Debian machine that has Go,
# idempotently: Debian packages only when missing, Go modules via the proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

# iperf3, iptables, ipset, nftables: the side-by-side benchmarks (tools/bench).
# containerd, runc, containernetworking-plugins: the one-machine cluster (hack/cluster.sh).
pkgs=(clang-19 llvm-19 libbpf-dev iproute2 make iperf3 iptables ipset nftables containerd runc containernetworking-plugins)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present (${pkgs[*]})"
fi

go mod download
echo "setup: Go modules downloaded ($(go version | cut -d' ' -f3))"

# bpffs: the agent mounts it itself when absent; tests need it too.
if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf && echo "setup: mounted bpffs on /sys/fs/bpf"
fi
