#!/usr/bin/env bash
# The zero-trust shop demo on ztlab: a real etcd and kube-apiserver, deploy/
# applied, a real zt-agent per node enforcing in the kernel, one network
# namespace per pod, and real packets.
#
#   make demo                   # builds, runs, tears down
#   ZT_DEMO_KEEP=1 make demo    # leaves the lab up to explore
#   ZT_DEMO_NODES=2 make demo   # pods spread over two nodes
#
# Needs root (namespaces, veths, BPF) and the pinned Kubernetes binaries
# (make k8s-bins, run by make demo).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${ZT_DEMO_BIN:-_out/bin}
k8sbin=${ZT_K8S_BIN:-$bin}
dir=${ZT_DEMO_DIR:-/run/ztlab-demo}
name=${ZT_DEMO_NAME:-ztdemo} # BPF pins go under /sys/fs/bpf/<name>-<node>
nodes=${ZT_DEMO_NODES:-1}
keep=${ZT_DEMO_KEEP:-}
shop=examples/shop

if [ "$(id -u)" != 0 ]; then
	echo "demo: ztlab needs root (network namespaces, veths, BPF): sudo make demo" >&2
	exit 1
fi
for b in ztlab zt-agent ztctl; do
	[ -x "$bin/$b" ] || { echo "demo: $bin/$b missing (make build)" >&2; exit 1; }
done

ztlab() { "$bin/ztlab" --dir "$dir" "$@"; }
ztctl() { "$bin/ztctl" "$@"; }
say() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

finish() {
	rc=$?
	if [ -n "$keep" ] && [ "$rc" = 0 ]; then
		say "The lab is still up. Explore it:"
		echo "    eval \"\$($bin/ztlab --dir $dir env)\"   # points kubectl and ztctl at the lab"
		echo "    kubectl get pods,netpol -A"
		echo "    ztctl flows -A -f                          # follow drops as they happen"
		echo "    $bin/ztlab --dir $dir try shop/frontend data/db 5432"
		echo "    $bin/ztlab --dir $dir apply my-policies.yaml; $bin/ztlab --dir $dir probe"
		echo "    $bin/ztlab --dir $dir down                 # when done"
		return
	fi
	say "Tearing the lab down"
	ztlab down -q || true
	if [ "$rc" = 0 ]; then
		echo "Done. To keep the lab up and explore: ZT_DEMO_KEEP=1 make demo"
	fi
}

say "1. A lab on this machine: etcd, kube-apiserver, deploy/ applied, $nodes node(s) with zt-agent, the shop's pods"
show "ztlab up --nodes $nodes -f $shop/cluster.yaml"
ztlab down -q 2>/dev/null || true # a lab left by an earlier run
trap finish EXIT
ztlab up -q --name "$name" --nodes "$nodes" -f "$shop/cluster.yaml" \
	--agent-bin "$bin/zt-agent" --k8s-bin "$k8sbin" >/dev/null
eval "$(ztlab env)" # KUBECONFIG, ZT_FLOWS_SOCKET (the agents' flows sockets), kubectl on PATH
show "kubectl get pods -A -o wide"
kubectl get pods -A -o wide
echo "(No kubelet runs in the lab, so READY says 0/1; each pod is a real network namespace with a server on its port.)"

say "2. No NetworkPolicy yet: every pod reaches every other (real packets to every declared port)"
show "ztlab probe -o matrix"
ztlab probe -q -o matrix
show "ztlab try shop/attacker data/db 5432"
ztlab try shop/attacker data/db 5432 --expect passed

say "3. Zero trust: default-deny in both namespaces, then two narrow allows"
show "ztlab apply $shop/policies.yaml   # kubectl apply, then waits until every agent has realized it"
ztlab apply -q "$shop/policies.yaml"
show "kubectl get netpol -A"
kubectl get netpol -A
show "ztlab probe -o matrix"
ztlab probe -q -o json >"$dir/after.json"
ztlab probe -q -o matrix
echo "What passes now:"
awk -F'"' '/"from"/{f=$4} /"to"/{t=$4} /"port"/{gsub(/[^0-9]/,"",$3); p=$3} /"protocol"/{pr=$4}
	/"verdict": "allow"/{print "    " f " -> " t " " p "/" pr}' "$dir/after.json"
show "kubectl get ns,pods,netpol -A -o yaml | ztctl reach -f - -o json   # the compiler's answer"
kubectl get ns,pods,netpol -A -o yaml | ztctl reach -f - -o json >"$dir/reach.json"
if diff -u "$dir/reach.json" "$dir/after.json" >/dev/null; then
	echo "The kernel agrees with ztctl reach on all $(grep -c '"verdict"' "$dir/after.json") (pod, pod, port) probes."
else
	echo "The kernel DISAGREES with ztctl reach:" >&2
	diff -u "$dir/reach.json" "$dir/after.json" >&2 || true
	exit 1
fi

say "4. The attacker (shop/attacker) tries to move laterally"
since=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
show "ztlab try shop/attacker data/db 5432            # straight at the database"
ztlab try shop/attacker data/db 5432 --expect blocked
show "ztlab try shop/attacker data/db 5432/UDP        # a UDP datagram"
ztlab try shop/attacker data/db 5432/UDP --expect blocked
show "ztlab try shop/attacker shop/api 8080           # the API, next door"
ztlab try shop/attacker shop/api 8080 --expect blocked
show "ztlab try shop/attacker data/db 5432 --raw      # a raw socket, which skips the socket hooks"
ztlab try shop/attacker data/db 5432 --raw --expect blocked
show "ztlab try shop/attacker data/db 5432 --spoof-as shop/api   # forging api's address, which db allows"
ztlab try shop/attacker data/db 5432 --spoof-as shop/api --expect blocked
show "ztlab try shop/frontend shop/api 8080           # legitimate traffic still flows"
ztlab try shop/frontend shop/api 8080 --expect passed

say "5. What zt saw: every drop, with pods, reason and the policy behind it"
show "ztctl flows -A --since $since"
ztctl flows -A --since "$since"
show "ztctl flows -n shop --from attacker --reason spoofed -o wide"
ztctl flows -n shop --from attacker --reason spoofed -o wide
