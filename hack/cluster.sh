#!/usr/bin/env bash
# A real single-node Kubernetes v1.37.2 cluster on this machine, as root, with no
# systemd, no registry and no docker: containerd, etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (nftables)
# as background processes with PID files, pods on the ptp or bridge CNI.
#
#   hack/cluster.sh images              build the local images into _out/images
#   hack/cluster.sh up [--cni ptp|bridge]
#   hack/cluster.sh import FILE.tar...  import more images (see tools/k8s/cmd/mkimage)
#   hack/cluster.sh env                 print `export KUBECONFIG=...`
#   hack/cluster.sh status
#   hack/cluster.sh down
#
# Everything lives under ZT_CLUSTER_DIR (default _out/cluster, git-ignored).
# Every change made to the host outside it (sysctls, mount propagation, cgroup
# and host directories, links, nftables/iptables state) is written to
# ZT_CLUSTER_DIR/host-state BEFORE it is made, and `down` undoes exactly
# those, also after a crash; `up` first runs `down` when a host-state is left.
# The last run's logs stay in ZT_CLUSTER_DIR/logs.
#
# Binaries come from _out/bin (hack/k8s-bins.sh, `make build`); images from
# _out/images/*.tar (`hack/cluster.sh images`), all imported at `up`.
set -Eeuo pipefail
trap 'echo "cluster: failed at ${BASH_SOURCE[0]}:$LINENO: $BASH_COMMAND" >&2' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${ZT_CLUSTER_DIR:-$repo/_out/cluster}
# The physical path: mounts are listed under it in /proc/self/mountinfo,
# so a folder reached through a symlink must not hide them from down.
mkdir -p "$dir" && dir=$(cd "$dir" && pwd -P)
bin=${ZT_BIN:-$repo/_out/bin}
images=${ZT_IMAGES:-$repo/_out/images}
tmpl=$repo/hack/cluster
# Which folder's cluster is up on this host (one at a time).
marker=/run/ztk8s-cluster

node=ztk8s-node
pod_cidr=10.217.0.0/24
svc_cidr=10.218.0.0/24
svc_ip=10.218.0.1
etcd_port=12379
etcd_peer=12380
api_port=16443
bridge=ztk8s-br0
image_tag=dev
# Sysctls that kubelet, kube-proxy or the CNI plugins may set; restored on down.
sysctls=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv4.conf.all.route_localnet
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes
	net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait
	net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
# Host directories the runtime, kubelet, libcni and zt write to.
hostdirs=(/var/lib/kubelet /var/lib/cni /run/containerd /var/log/containers /sys/fs/bpf/zt /run/zt)
# Mounts zt's DaemonSet needs shared (mountPropagation HostToContainer).
shared=(/sys/fs/bpf /sys/fs/cgroup /run/netns)
# Daemons, in start order; stopped in reverse.
daemons=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { echo "cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }
record() { echo "$*" >>"$dir/host-state"; }

node_ip() { ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1; }

# The cgroup (path) this process runs in: the memory hierarchy's, where the
# host keeps its processes; kubelet's cgroupRoot goes below it.
own_cgroup() {
	local p
	p=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
	[[ -n $p ]] || p=$(awk -F: '$1 == "0" && $2 == "" {print $3}' /proc/self/cgroup)
	echo "${p%/}"
}

hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts; }

pid_of() { # NAME: the PID in its PID file when that process is ours (its command line names $dir)
	local f=$dir/run/$1.pid p
	[[ -f $f ]] || return 1
	p=$(cat "$f")
	[[ -r /proc/$p/cmdline ]] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$dir" && echo "$p"
}

stop_pid() { # PID: TERM, then KILL after 3 s (the cluster is thrown away: no need to drain)
	local p=$1 i
	kill -TERM "$p" 2>/dev/null || return 0
	for ((i = 0; i < 30; i++)); do
		kill -0 "$p" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}

# Processes whose command line names $dir and that are not daemons: the
# containerd shims (their -address is our socket).
stray_pids() {
	local p c
	for p in /proc/[0-9]*; do
		p=${p#/proc/}
		[[ $p == "$$" || $p == "$BASHPID" ]] && continue
		c=$(cat "/proc/$p/cmdline" 2>/dev/null | tr '\0' ' ') || continue
		[[ $c == *containerd-shim*"-address $dir/"* ]] && echo "$p"
	done
	return 0
}

start() { # NAME BINARY ARGS...: background, own session, PID file, log
	local name=$1
	shift
	log "starting $name"
	setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$dir/run/$name.pid"
}

wait_for() { # SECONDS WHAT CMD...: poll CMD every 0.5 s
	local n=$(($1 * 2)) what=$2 i
	shift 2
	for ((i = 0; i < n; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	die "$what not ready after ${n}x0.5s; see $dir/logs"
}

kc() { "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"; }

cmd_images() {
	local out=$images b
	mkdir -p "$out" "$bin"
	[[ -x $bin/mkimage ]] || die "$bin/mkimage missing: run hack/k8s-bins.sh"
	(cd "$repo" && CGO_ENABLED=0 go build -o "$bin/" ./cmd/zt-agent ./cmd/ztctl ./test/cluster/cmd/ztnettest ./test/cluster/cmd/pause)
	"$bin/mkimage" -o "$out/zt-agent.tar" -ref "zt.local/zt-agent:$image_tag" -entrypoint /zt-agent \
		"$bin/zt-agent:/zt-agent" "$bin/ztctl:/ztctl" /tmp/ /run/zt/
	"$bin/mkimage" -o "$out/ztnettest.tar" -ref "zt.local/ztnettest:$image_tag" -entrypoint /ztnettest \
		-cmd serve "$bin/ztnettest:/ztnettest"
	"$bin/mkimage" -o "$out/pause.tar" -ref "zt.local/pause:$image_tag" -entrypoint /pause "$bin/pause:/pause"
}

cmd_import() {
	local f
	[[ -S $dir/containerd.sock ]] || die "no cluster running under $dir"
	for f in "$@"; do
		log "importing $f"
		ctr --address "$dir/containerd.sock" -n k8s.io images import --no-unpack=false "$f" >/dev/null ||
			die "import $f"
	done
}

gen_pki() {
	local p=$dir/pki ip=$1
	mkdir -p "$p"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" -days 7 \
		-subj /CN=ztk8s-ca 2>/dev/null
	cert() { # NAME SUBJECT EXTENSIONS
		openssl req -newkey rsa:2048 -nodes -keyout "$p/$1.key" -out "$p/$1.csr" -subj "$2" 2>/dev/null
		printf '%s\n' "$3" >"$p/$1.ext"
		openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
			-out "$p/$1.crt" -days 7 -extfile "$p/$1.ext" 2>/dev/null
	}
	cert apiserver /CN=kube-apiserver "$(printf '%s\n' \
		"subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$ip,IP:$svc_ip" \
		"extendedKeyUsage=serverAuth" "keyUsage=digitalSignature,keyEncipherment")"
	cert kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
		"$(printf '%s\n' "extendedKeyUsage=clientAuth" "keyUsage=digitalSignature,keyEncipherment")"
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

render() { # TEMPLATE OUT: substitute @VAR@ from the environment of this function's caller
	sed -e "s|@DIR@|$dir|g" -e "s|@NODE@|$node|g" -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@POD_CIDR@|$pod_cidr|g" \
		-e "s|@SVC_CIDR@|$svc_cidr|g" -e "s|@CGROUP_ROOT@|$CGROUP_ROOT|g" -e "s|@BRIDGE@|$bridge|g" \
		-e "s|@PAUSE@|zt.local/pause:$image_tag|g" "$1" >"$2"
}

kubeconfig() { # NAME TOKEN
	cat >"$dir/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ztk8s
  cluster:
    server: https://$NODE_IP:$api_port
    certificate-authority: $dir/pki/ca.crt
users:
- name: $1
  user:
    token: $2
contexts:
- name: ztk8s
  context: {cluster: ztk8s, user: $1}
current-context: ztk8s
EOF
}

cmd_up() {
	local cni=ptp
	while (($#)); do
		case $1 in
		--cni) cni=${2:?--cni needs ptp or bridge}; shift 2 ;;
		--cni=*) cni=${1#--cni=}; shift ;;
		*) die "unknown argument $1" ;;
		esac
	done
	[[ $cni == ptp || $cni == bridge ]] || die "--cni must be ptp or bridge, not $cni"
	[[ $(id -u) == 0 ]] || die "run as root"
	local b
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
		[[ -x $bin/$b ]] || die "$bin/$b missing: run hack/k8s-bins.sh"
	done
	for b in zt-agent ztnettest pause; do
		[[ -f $images/$b.tar ]] || die "$images/$b.tar missing: run hack/cluster.sh images"
	done
	if [[ -f $dir/host-state ]]; then
		log "a previous run left host state: tearing it down first"
		cmd_down
	fi
	# One cluster per host: kubelet's /var/lib/kubelet and ports are the host's.
	local other
	other=$(cat "$marker" 2>/dev/null || true)
	if [[ -n $other && $other != "$dir" && -f $other/host-state ]]; then
		die "a cluster from $other is up on this host: ZT_CLUSTER_DIR=$other hack/cluster.sh down first"
	fi
	[[ -e /sys/fs/bpf/zt ]] && die "/sys/fs/bpf/zt exists: another zt agent's pins; refusing to share them"
	findmnt -n -t bpf /sys/fs/bpf >/dev/null || die "bpffs is not mounted at /sys/fs/bpf"

	local t0=$SECONDS
	rm -rf "$dir/run" "$dir/logs"
	mkdir -p "$dir"/{run,logs,cni/net.d,cni/networks,containerd,etcd,kubelet-logs}
	export NODE_IP CGROUP_ROOT
	NODE_IP=$(node_ip)
	[[ -n $NODE_IP ]] || die "no IPv4 source address for a default route"
	CGROUP_ROOT=$(own_cgroup)/ztk8s
	echo "# host changes of hack/cluster.sh up --cni $cni at $(date -u +%FT%TZ); undone by down, last first" >"$dir/host-state"
	record "cni $cni"
	record "mkdir $marker"
	echo "$dir" >"$marker"

	# Sysctls, host directories, nftables tables: as they were.
	local k v
	for k in "${sysctls[@]}"; do
		v=$(sysctl -n "$k" 2>/dev/null) && record "sysctl $k $v"
	done
	for k in "${hostdirs[@]}"; do
		if [[ -e $k ]]; then
			# Pre-existing: keep it, and remove on down only what appeared in it.
			record "keepdir $k $(cd "$k" && find . -mindepth 1 | sort | base64 -w0)"
		else
			record "mkdir $k"
		fi
	done
	record "nft-tables $(nft list tables 2>/dev/null | tr ' \n' '_,')"

	# Mount propagation for the DaemonSet's HostToContainer volumes.
	for k in "${shared[@]}"; do
		mkdir -p "$k"
		if ! mountpoint -q "$k"; then
			record "selfbind $k"
			mount --bind "$k" "$k"
		fi
		v=$(findmnt -n -o PROPAGATION "$k" | head -1)
		record "propagation $k $v"
		mount --make-shared "$k"
	done

	# kubelet's cgroupRoot, below our own cgroup, in every hierarchy.
	local h d parts c
	while read -r h; do
		d=$h
		IFS=/ read -ra parts <<<"${CGROUP_ROOT#/}"
		for c in "${parts[@]}"; do
			d=$d/$c
			[[ -d $d ]] && continue
			record "cgroup $d"
			mkdir "$d"
			if [[ -f $d/cpuset.cpus && -z $(cat "$d/cpuset.cpus") ]]; then
				cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
				cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
			fi
		done
		record "cgroup-tree $d"
	done < <(hierarchies)
	[[ $cni == bridge ]] && record "link $bridge"

	gen_pki "$NODE_IP"
	local tok_admin tok_kcm tok_sched tok_node tok_proxy
	tok_admin=$(openssl rand -hex 16) tok_kcm=$(openssl rand -hex 16) tok_sched=$(openssl rand -hex 16)
	tok_node=$(openssl rand -hex 16) tok_proxy=$(openssl rand -hex 16)
	cat >"$dir/pki/tokens.csv" <<EOF
$tok_admin,ztk8s-admin,ztk8s-admin,"system:masters"
$tok_kcm,system:kube-controller-manager,system:kube-controller-manager
$tok_sched,system:kube-scheduler,system:kube-scheduler
$tok_node,system:node:$node,system:node:$node,"system:nodes"
$tok_proxy,system:kube-proxy,system:kube-proxy
EOF
	chmod 600 "$dir/pki/tokens.csv" "$dir"/pki/*.key
	kubeconfig admin "$tok_admin"
	kubeconfig controller-manager "$tok_kcm"
	kubeconfig scheduler "$tok_sched"
	kubeconfig kubelet "$tok_node"
	kubeconfig kube-proxy "$tok_proxy"
	render "$tmpl/containerd.toml" "$dir/containerd.toml"
	render "$tmpl/kubelet.yaml" "$dir/kubelet.yaml"
	render "$tmpl/kube-proxy.yaml" "$dir/kube-proxy.yaml"
	render "$tmpl/cni-$cni.conflist" "$dir/cni/net.d/10-ztk8s.conflist"

	start containerd containerd --config "$dir/containerd.toml"
	wait_for 30 containerd ctr --address "$dir/containerd.sock" version
	cmd_import "$images"/*.tar

	start etcd "$bin/etcd" --name ztk8s --data-dir "$dir/etcd" --unsafe-no-fsync \
		--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
		--listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
		--initial-cluster "ztk8s=http://127.0.0.1:$etcd_peer" --log-level warn
	start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
		--bind-address 0.0.0.0 --secure-port "$api_port" --advertise-address "$NODE_IP" --cert-dir "$dir/pki" \
		--tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
		--client-ca-file "$dir/pki/ca.crt" --token-auth-file "$dir/pki/tokens.csv" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
		--service-cluster-ip-range "$svc_cidr" --service-account-issuer https://kubernetes.default.svc \
		--service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
		--kubelet-client-certificate "$dir/pki/kubelet-client.crt" --kubelet-client-key "$dir/pki/kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP
	wait_for 60 kube-apiserver kc get --raw /readyz
	start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
		--authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 10357 --leader-elect=false --use-service-account-credentials \
		--root-ca-file "$dir/pki/ca.crt" --service-account-private-key-file "$dir/pki/sa.key" \
		--cluster-name ztk8s --service-cluster-ip-range "$svc_cidr"
	start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/scheduler.kubeconfig" \
		--authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 10359 --leader-elect=false
	start kubelet "$bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
		--hostname-override "$node" --node-ip "$NODE_IP" --root-dir /var/lib/kubelet --v 1
	start kube-proxy "$bin/kube-proxy" --config "$dir/kube-proxy.yaml"
	wait_for 120 "node $node" kc wait --for condition=Ready --timeout 1s "node/$node"
	wait_for 60 "default service account" kc -n default get serviceaccount default
	log "up in $((SECONDS - t0))s ($cni); use it with:"
	cmd_env
}

cmd_env() { echo "export KUBECONFIG=$dir/admin.kubeconfig"; }

cmd_status() {
	local n p
	for n in "${daemons[@]}"; do
		if p=$(pid_of "$n"); then echo "$n running (pid $p)"; else echo "$n stopped"; fi
	done
}

unmount_under() { # PREFIX...: unmount every mount at or below a prefix, deepest first
	local i m pre
	for ((i = 0; i < 5; i++)); do
		local ms=()
		while read -r m; do
			m=$(printf '%b' "$m")
			for pre in "$@"; do
				[[ $m == "$pre" || $m == "$pre"/* ]] && ms+=("$m")
			done
		done < <(awk '{print $5}' /proc/self/mountinfo)
		((${#ms[@]})) || return 0
		printf '%s\n' "${ms[@]}" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- | while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
}

kill_cgroup_procs() { # DIR: kill every process in a cgroup tree
	local i f p any
	for ((i = 0; i < 50; i++)); do
		any=0
		while read -r f; do
			for p in $(cat "$f" 2>/dev/null || true); do
				kill -KILL "$p" 2>/dev/null || true
				any=1
			done
		done < <(find "$1" -name cgroup.procs 2>/dev/null)
		((any)) || return 0
		sleep 0.1
	done
}

del_iptables_kube() { # remove KUBE-* chains (kubelet's canaries, kube-proxy's hints)
	local ipt t c
	for ipt in iptables ip6tables; do
		command -v "$ipt" >/dev/null || continue
		for t in filter nat mangle raw; do
			"$ipt" -t "$t" -S 2>/dev/null | sed -n '/^-A .* -j KUBE-/s/^-A/-D/p' | while read -r c; do
				eval "$ipt -t $t $c" 2>/dev/null || true
			done
			"$ipt" -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p' | while read -r c; do
				"$ipt" -t "$t" -F "$c" 2>/dev/null || true
			done
			"$ipt" -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p' | while read -r c; do
				"$ipt" -t "$t" -X "$c" 2>/dev/null || true
			done
		done
	done
}

cmd_down() {
	[[ $(id -u) == 0 ]] || die "run as root"
	local st=$dir/host-state
	if [[ ! -f $st ]]; then
		log "nothing to tear down under $dir"
		return 0
	fi
	local t0=$SECONDS i n p kind a b
	# 1. Daemons, last started first; pods' processes; the shims.
	for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
		n=${daemons[i]}
		[[ $n == containerd ]] && continue
		if p=$(pid_of "$n"); then
			stop_pid "$p"
			log "stopped $n ($((SECONDS - t0))s)"
		fi
	done
	while read -r kind a b; do
		[[ $kind == cgroup-tree ]] && kill_cgroup_procs "$a"
	done <"$st"
	log "pods stopped ($((SECONDS - t0))s)"
	if p=$(pid_of containerd); then stop_pid "$p"; fi
	# The shims of killed containers have nothing left to save.
	for p in $(stray_pids); do kill -KILL "$p" 2>/dev/null || true; done
	log "daemons stopped ($((SECONDS - t0))s)"
	# 2. Mounts: containers' rootfs and shm, kubelet's volumes, pods' netns.
	unmount_under "$dir" /var/lib/kubelet /run/containerd
	for p in /run/netns/cni-*; do
		[[ -e $p ]] || continue
		unmount_under "$p"
		rm -f "$p"
	done
	# 3. Kernel state: links, nftables, iptables.
	while read -r kind a b; do
		[[ $kind == link ]] && ip link del "$a" 2>/dev/null || true
	done <"$st"
	nft delete table ip kube-proxy 2>/dev/null || true
	nft delete table ip6 kube-proxy 2>/dev/null || true
	del_iptables_kube
	local before
	before=$(sed -n 's/^nft-tables //p' "$st" | tr '_,' ' \n')
	nft list tables 2>/dev/null | while read -r _ fam name; do
		grep -qx "table $fam $name" <<<"$before" && continue
		# A table iptables-nft created for the KUBE-* chains, now holding no rule.
		nft -a list table "$fam" "$name" 2>/dev/null | grep '# handle' | grep -qvE '^\s*(table|chain|set|map|flowtable) ' ||
			nft delete table "$fam" "$name" 2>/dev/null || true
	done
	# 4. Host state recorded by up, last change first.
	tac "$st" | while read -r kind a b; do
		case $kind in
		sysctl) [[ $(sysctl -n "$a" 2>/dev/null) == "$b" ]] || sysctl -qw "$a=$b" || log "could not restore $a=$b" ;;
		propagation) mount --make-"$b" "$a" || log "could not make $a $b" ;;
		selfbind) umount "$a" || umount -l "$a" || log "could not unmount $a" ;;
		cgroup-tree) [[ -d $a ]] && find "$a" -depth -type d -exec rmdir {} + 2>/dev/null || true ;;
		cgroup) [[ -d $a ]] && { rmdir "$a" 2>/dev/null || log "could not remove cgroup $a"; } ;;
		mkdir) rm -rf "$a" 2>/dev/null || log "could not remove $a" ;;
		keepdir)
			[[ -d $a ]] || continue
			local keep
			keep=$(base64 -d <<<"$b")
			(cd "$a" && find . -mindepth 1 -depth | while read -r f; do
				grep -qxF "$f" <<<"$keep" || rm -rf "$f"
			done)
			;;
		esac
	done
	# 5. Our folder, but the logs.
	find "$dir" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
	log "down in $((SECONDS - t0))s"
}

case ${1:-} in
images) cmd_images ;;
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
import) shift; cmd_import "$@" ;;
env) cmd_env ;;
status) cmd_status ;;
*) die "usage: $0 images | up [--cni ptp|bridge] | import FILE.tar... | env | status | down" ;;
esac
