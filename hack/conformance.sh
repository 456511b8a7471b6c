#!/usr/bin/env bash
# The upstream Kubernetes NetworkPolicy e2e tests ([sig-network] Netpol, from
# k8s.io/kubernetes v1.37.2 test/e2e) against a running cluster with zt installed.
#
#   hack/conformance.sh build          build e2e.test, agnhost and the test images into _out/ (idempotent)
#   hack/conformance.sh list           the Netpol tests the run selects (dry run, no cluster needed)
#   hack/conformance.sh run            build, import the images into containerd, run, summarize,
#                                      and write docs/conformance.md
#
# Environment: KUBECONFIG (required for run), ZT_CONF_OUT (default _out/conformance),
# ZT_CONF_FOCUS / ZT_CONF_SKIP (ginkgo regexps, default: Netpol, minus SCTP),
# ZT_CONF_TIMEOUT (ginkgo timeout, default 3h), ZT_CONF_DOC (default docs/conformance.md; empty: don't write),
# CONTAINERD_ADDRESS (ctr socket, default: containerd's own default).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod=$repo/tools/conformance
bin=$repo/_out/bin
out=${ZT_CONF_OUT:-$repo/_out/conformance}
mkdir -p "$bin" "$out"

version=v1.37.2
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=37 -X $p.gitTreeState=clean"
done
ldflags=${ldflags# }

build_bins() {
	local stamp
	stamp=$( { cat "$mod/go.mod" "$mod/go.sum"; echo "$ldflags"; } | sha256sum | cut -d' ' -f1)
	exec 8>"$bin/.conformance.lock"
	flock 8
	if [[ -x $bin/e2e.test && -x $bin/agnhost && -f $bin/.conformance.stamp && $(cat "$bin/.conformance.stamp") == "$stamp" ]]; then
		echo "conformance: e2e.test and agnhost up to date (stamp ${stamp:0:12})"
		return
	fi
	echo "conformance: building e2e.test and agnhost $version (stamp ${stamp:0:12}); a cold build is long"
	local start tmp
	start=$(date +%s)
	tmp=$(mktemp -d "$bin/.conf.XXXXXX")
	(cd "$mod" && CGO_ENABLED=0 go build -o "$tmp/agnhost" -ldflags "$ldflags" k8s.io/kubernetes/test/images/agnhost)
	echo "conformance: agnhost built after $(( $(date +%s) - start ))s"
	(cd "$mod" && go test -c -o "$tmp/e2e.test" -ldflags "$ldflags" k8s.io/kubernetes/test/e2e)
	mv -f "$tmp/agnhost" "$bin/agnhost"
	mv -f "$tmp/e2e.test" "$bin/e2e.test"
	rmdir "$tmp"
	echo "$stamp" >"$bin/.conformance.stamp"
	echo "conformance: built in $(( $(date +%s) - start ))s: e2e.test $(du -h "$bin/e2e.test" | cut -f1), agnhost $(du -h "$bin/agnhost" | cut -f1)"
}

case ${1:-run} in
build) build_bins ;;
*) echo "usage: $0 build|list|run" >&2; exit 2 ;;
esac
