#!/usr/bin/env bash
# Build the pinned Kubernetes binaries from the tools/k8s Go module, in one
# `go build` so they share compilation: kube-apiserver, kubectl and etcd (used by
# end-to-end tests, internal/testenv), kube-controller-manager, kube-scheduler,
# kubelet and kube-proxy (the one-machine cluster, hack/cluster.sh) and
# mkimage (container images without a registry).
#
#   hack/k8s-bins.sh [OUTDIR]      OUTDIR defaults to <repo>/_out/bin (git-ignored)
#
# Idempotent: when the binaries exist and OUTDIR/.stamp records the same
# hash of tools/k8s (go.mod, go.sum, its cmd/ mains, ldflags), nothing is rebuilt.
# A cold build takes ~12 minutes on 2 cores and ~3 GB of RAM; the Go build
# cache makes a rebuild after a stamp change fast.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/_out/bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)
mod=$repo/tools/k8s

version=v1.37.2
major=1
minor=37
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
	ldflags+=" -X $p.gitTreeState=clean"
done
ldflags=${ldflags# }
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
pkgs=()
for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
pkgs+=(./cmd/etcd ./cmd/mkimage)
bins+=(etcd mkimage)

stamp=$( { cat "$mod/go.mod" "$mod/go.sum" "$mod"/cmd/*/main.go; echo "$ldflags"; } | sha256sum | cut -d' ' -f1)

# One builder at a time per OUTDIR; a second caller waits and then finds the stamp.
exec 9>"$out/.lock"
flock 9

have=yes
for b in "${bins[@]}"; do [[ -x $out/$b ]] || have=no; done
if [[ $have == yes && -f $out/.stamp && $(cat "$out/.stamp") == "$stamp" ]]; then
	echo "k8s-bins: up to date in $out (stamp ${stamp:0:12}); nothing to do"
	exit 0
fi

echo "k8s-bins: building ${bins[*]} $version into $out (stamp ${stamp:0:12}); a cold build takes ~12 min (all eight)"
start=$(date +%s)
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$mod" && go build -o "$tmp/" -ldflags "$ldflags" "${pkgs[@]}")
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$out/$b"; done
echo "$stamp" >"$out/.stamp"
echo "k8s-bins: built in $(( $(date +%s) - start ))s:"
for b in "${bins[@]}"; do printf '  %-16s %s\n' "$b" "$(du -h "$out/$b" | cut -f1)"; done
