#!/usr/bin/env bash
# The upstream Kubernetes NetworkPolicy e2e tests ([sig-network] Netpol, from
# k8s.io/kubernetes v1.37.2 test/e2e) against a running cluster with zt installed.
#
#   hack/conformance.sh build          build e2e.test, agnhost and the test images into _out/ (idempotent)
#   hack/conformance.sh list           the Netpol tests the run selects (dry run, no cluster needed)
#   hack/conformance.sh run            build, import the images into containerd, run, summarize,
#                                      and write docs/conformance.md
#   hack/conformance.sh cluster-run    the same on a cluster of its own (hack/cluster.sh up, zt installed,
#                                      down at the end); refuses when a cluster is up
#
# Environment: KUBECONFIG (required for run), ZT_CONF_OUT (default _out/conformance),
# ZT_CONF_FOCUS / ZT_CONF_SKIP (ginkgo regexps, default: Netpol, minus SCTP),
# ZT_CONF_TIMEOUT (ginkgo timeout, default 3h), ZT_CONF_STRICT=1 (exit non-zero when a test fails), ZT_CONF_PROCS (parallel ginkgo processes, default 1), ZT_CONF_DOC (default docs/conformance.md; empty: don't write),
# CONTAINERD_ADDRESS (ctr socket; default: hack/cluster.sh's, when its cluster is up, else containerd's).
#
# With the one-machine cluster of hack/cluster.sh:
#   hack/cluster.sh up && eval "$(hack/cluster.sh env)" && kubectl apply -k hack/cluster/zt
#   kubectl -n zt-system rollout status ds/zt-agent && hack/conformance.sh run
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod=$repo/tools/conformance
bin=$repo/_out/bin
out=${ZT_CONF_OUT:-$repo/_out/conformance}
mkdir -p "$bin" "$out"
out=$(cd "$out" && pwd)

version=v1.37.2
ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=37 -X $p.gitTreeState=clean"
done
ldflags=${ldflags# }

# shquote ARGS...: the arguments as one shell line, single-quoted where needed.
shquote() {
	local a line=""
	for a; do
		if [[ $a =~ ^[A-Za-z0-9_./=:,+@-]+$ ]]; then
			line+="$a "
		else
			line+="'${a//\'/\'\\\'\'}' "
		fi
	done
	echo "${line% }"
}

build_bins() {
	local stamp
	stamp=$( { cat "$mod/go.mod" "$mod/go.sum"; echo "$ldflags"; } | sha256sum | cut -d' ' -f1)
	exec 8>"$bin/.conformance.lock"
	flock 8
	if [[ ! -x $bin/ginkgo || ! -f $bin/.conformance.stamp || $(cat "$bin/.conformance.stamp") != "$stamp" ]]; then
		# The ginkgo CLI runs e2e.test in parallel processes (ZT_CONF_PROCS).
		(cd "$mod" && go build -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
	fi
	if [[ -x $bin/e2e.test && -x $bin/agnhost && -f $bin/.conformance.stamp && $(cat "$bin/.conformance.stamp") == "$stamp" ]]; then
		echo "conformance: e2e.test and agnhost up to date (stamp ${stamp:0:12})"
		return
	fi
	echo "conformance: building e2e.test and agnhost $version (stamp ${stamp:0:12}); a cold build is long"
	local start
	start=$(date +%s)
	conf_tmp=$(mktemp -d "$bin/.conf.XXXXXX")
	trap 'rm -rf "$conf_tmp"' EXIT
	local tmp=$conf_tmp
	(cd "$mod" && CGO_ENABLED=0 go build -o "$tmp/agnhost" -ldflags "$ldflags" k8s.io/kubernetes/test/images/agnhost)
	echo "conformance: agnhost built after $(( $(date +%s) - start ))s"
	(cd "$mod" && go test -c -vet=off -o "$tmp/e2e.test" -ldflags "$ldflags" k8s.io/kubernetes/test/e2e)
	mv -f "$tmp/agnhost" "$bin/agnhost"
	mv -f "$tmp/e2e.test" "$bin/e2e.test"
	echo "$stamp" >"$bin/.conformance.stamp"
	echo "conformance: built in $(( $(date +%s) - start ))s: e2e.test $(du -h "$bin/e2e.test" | cut -f1), agnhost $(du -h "$bin/agnhost" | cut -f1)"
}

agnhost_ref=registry.k8s.io/e2e-test-images/agnhost:2.66.1 # test/utils/image/manifest.go in v1.37.2
focus=${ZT_CONF_FOCUS:-'\[sig-network\] Netpol'}
# This kernel has no SCTP sockets (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with
# EPROTONOSUPPORT): the three tests that send SCTP are skipped by name. The two tests whose
# policies name SCTP but whose probes are TCP run.
sctp_skip='\[Feature:SCTPConnectivity\]|NetworkPolicy between server and client using SCTP'
sctp_reason='needs SCTP sockets: this kernel has none (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT)'
skip=${ZT_CONF_SKIP:-$sctp_skip}
timeout=${ZT_CONF_TIMEOUT:-3h}
procs=${ZT_CONF_PROCS:-1}

# mkimage: the image builder of tools/k8s (another module); built once into _out/bin.
mkimage() {
	if [[ ! -x $bin/mkimage ]]; then
		(cd "$repo/tools/k8s" && CGO_ENABLED=0 go build -o "$bin/mkimage" ./cmd/mkimage)
	fi
	"$bin/mkimage" "$@"
}

build_images() {
	local tar=$out/images/agnhost.tar
	mkdir -p "$out/images"
	if [[ -f $tar && $tar -nt $bin/agnhost ]]; then
		echo "conformance: $agnhost_ref image up to date ($tar)"
		return
	fi
	# Upstream's image is ENTRYPOINT ["/agnhost"] CMD ["pause"]; the Netpol pods set their command.
	mkimage -o "$tar.tmp" -ref "$agnhost_ref" -entrypoint /agnhost -cmd pause "$bin/agnhost:/agnhost" /tmp/
	mv -f "$tar.tmp" "$tar"
	echo "conformance: built $agnhost_ref into $tar"
}

list_tests() {
	# --list-tests prints "    file:line: full name"; keep the names the focus and skip select.
	"$bin/e2e.test" --list-tests 2>/dev/null | sed -n 's/^ *[^ ]*:[0-9]*: //p' | grep -E -- "$focus" >"$out/all-tests.txt" || true
	echo "conformance: $(wc -l <"$out/all-tests.txt") tests match focus $focus"
	grep -E -- "$skip" "$out/all-tests.txt" | sed 's/^/  skipped: /' || true
}

run_tests() {
	: "${KUBECONFIG:?KUBECONFIG must name the kubeconfig of the cluster}"
	local kubectl=${KUBECTL:-$(command -v kubectl || echo "$bin/kubectl")}
	[[ -x $bin/kubectl ]] && kubectl=${KUBECTL:-$bin/kubectl}
	"$kubectl" version >/dev/null
	"$kubectl" -n zt-system get daemonset zt-agent >/dev/null || { echo "conformance: zt-agent DaemonSet not found in zt-system: install zt first" >&2; exit 1; }
	# hack/cluster.sh runs containerd on its own socket under its folder.
	local cdir=${ZT_CLUSTER_DIR:-$repo/_out/cluster}
	if [[ -z ${CONTAINERD_ADDRESS:-} && -S $cdir/containerd.sock ]]; then
		CONTAINERD_ADDRESS=$cdir/containerd.sock
	fi
	echo "conformance: importing $agnhost_ref into containerd (namespace k8s.io${CONTAINERD_ADDRESS:+, $CONTAINERD_ADDRESS})"
	ctr ${CONTAINERD_ADDRESS:+--address "$CONTAINERD_ADDRESS"} -n k8s.io images import "$out/images/agnhost.tar"

	local report=$out/report
	rm -rf "$report"
	mkdir -p "$report"
	local args=(--kubeconfig="$KUBECONFIG" --provider=local --kubectl-path="$kubectl"
		--report-dir="$report" --dump-logs-on-failure=true --disable-log-dump)
	local gargs=("--focus=$focus" "--skip=$skip" --timeout="$timeout" --v --no-color)
	local runner
	if ((procs > 1)); then
		runner=("$bin/ginkgo" --procs="$procs" "${gargs[@]}" "$bin/e2e.test" --)
	else
		runner=("$bin/e2e.test" "${gargs[@]/#--/--ginkgo.}")
	fi
	echo "conformance: ${runner[*]} ${args[*]}"
	local start end rc=0
	start=$(date +%s)
	(cd "$out" && "${runner[@]}" "${args[@]}") >"$out/e2e.log" 2>&1 || rc=$?
	end=$(date +%s)
	elapsed=$((end - start))
	echo "conformance: e2e.test exited $rc after ${elapsed}s (log: $out/e2e.log)"
	cmdline=$(shquote "${runner[@]}" "${args[@]}")
	cmdline=${cmdline//$KUBECONFIG/\$KUBECONFIG}
	cmdline=${cmdline//$bin\//}
	cmdline=${cmdline//$repo\//}
	# What zt ran: the agent pods' image and its ID as the runtime reports it.
	agent_image=$("$kubectl" -n zt-system get pods -o jsonpath='{range .items[*].status.containerStatuses[*]}{.image} {.imageID}{"\n"}{end}' 2>/dev/null | sort -u | tr '\n' ' ')
	report_doc "$report/junit_01.xml"
	if [[ ${ZT_CONF_STRICT:-} == 1 && $rc != 0 ]]; then
		echo "conformance: FAILED: e2e.test exited $rc (ZT_CONF_STRICT=1); see $out/conformance.md and $out/e2e.log" >&2
		return "$rc"
	fi
	return 0
}

report_doc() {
	local junit=$1 header=$out/header.md
	local nodes
	nodes=$("${kubectl:-kubectl}" get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}{"; "}{end}' 2>/dev/null || true)
	local finished machine commit
	finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	machine="$(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	commit=$(git -C "$repo" rev-parse --short HEAD)
	git -C "$repo" diff --quiet HEAD -- pkg bpf cmd deploy 2>/dev/null || commit+=" (with uncommitted changes in pkg, bpf, cmd or deploy)"
	cat >"$header" <<MD
# Upstream NetworkPolicy conformance

Generated by \`hack/conformance.sh run\` (\`make conformance\`): the \`[sig-network] Netpol\`
tests of Kubernetes v1.37.2 (\`k8s.io/kubernetes/test/e2e\`, built from \`tools/conformance\`)
against a running one-machine cluster with zt installed. Regenerated on each run, except the
hand-written part below its marker line.

- finished: $finished, e2e.test ran for ${elapsed}s ($((elapsed / 60)) min $((elapsed % 60)) s)
- machine: $machine
- nodes: ${nodes%; }
- zt commit: $commit
- zt-agent image (image, ID): ${agent_image:-unknown}${zt_image_note:+ ($zt_image_note)}
- test image: \`$agnhost_ref\` built locally from the same module (static agnhost, one layer)
- command (from \`_out/conformance\`):

\`\`\`
$cmdline
\`\`\`

Skipped on purpose: the tests that send SCTP, because this kernel has no SCTP sockets.
The two tests whose policies name SCTP but whose probes are TCP
("even if the plugin doesn't support SCTP") do run.

MD
	local doc=${ZT_CONF_DOC-$repo/docs/conformance.md}
	local j=()
	[[ -f $junit ]] && j=(-junit "$junit")
	(cd "$mod" && go run ./cmd/netpolreport "${j[@]}" -list "$out/all-tests.txt" -header "$header" -skip "$skip=$sctp_reason") >"$out/conformance.md"
	if [[ -n $doc ]]; then
		# Keep the hand-written part of the doc: everything from the marker line on.
		local marker='<!-- hand-written below: kept by hack/conformance.sh -->'
		if [[ -f $doc ]] && grep -qxF -- "$marker" "$doc"; then
			{ echo; awk -v m="$marker" '$0 == m {f = 1} f' "$doc"; } >>"$out/conformance.md"
		fi
		cp "$out/conformance.md" "$doc.tmp"
		mv -f "$doc.tmp" "$doc"
		echo "conformance: wrote $doc"
	fi
}

# cluster-run: bring up hack/cluster.sh's one-machine cluster (refusing when any is up),
# install zt from hack/cluster/zt, run, and take that cluster down again.
cluster_run() {
	local cdir=${ZT_CLUSTER_DIR:-$repo/_out/cluster}
	if [[ -e /run/ztk8s-cluster ]]; then
		echo "conformance: a cluster is up on this host ($(cat /run/ztk8s-cluster)): use it with KUBECONFIG and 'run', or wait" >&2
		exit 1
	fi
	build_bins
	build_images
	list_tests
	# The cluster's images (zt-agent from this working tree), in a folder of our own:
	# others may rebuild _out/images meanwhile.
	export ZT_IMAGES=$out/cluster-images
	zt_image_note="built by cluster-run from commit $(git -C "$repo" rev-parse --short HEAD)"
	git -C "$repo" diff --quiet HEAD -- pkg bpf cmd deploy internal 2>/dev/null || zt_image_note+=" plus uncommitted changes"
	"$repo/hack/cluster.sh" images
	trap '"$repo/hack/cluster.sh" down >"$out/cluster-down.log" 2>&1 || echo "conformance: cluster down failed, see $out/cluster-down.log" >&2' EXIT
	local t0=$SECONDS
	"$repo/hack/cluster.sh" up --cni "${CNI:-ptp}"
	export KUBECONFIG=$cdir/admin.kubeconfig
	"$bin/kubectl" apply -k "$repo/hack/cluster/zt"
	"$bin/kubectl" -n zt-system rollout status ds/zt-agent --timeout=300s
	echo "conformance: cluster up and zt ready in $((SECONDS - t0))s"
	run_tests
}

case ${1:-run} in
build) build_bins; build_images ;;
list) build_bins; list_tests ;;
run) build_bins; build_images; list_tests; run_tests ;;
cluster-run) cluster_run ;;
*) echo "usage: $0 build|list|run|cluster-run" >&2; exit 2 ;;
esac
