// Package datapath owns zt's kernel objects: the BPF programs built from
// bpf/ (bpf2go, see gen.go), the maps they share, and their attachments.
//
//	                      written by pkg/mapsync               read by
//	ipcache   hash  host address -> identity, prefix identity  pod add/del  tc, sock
//	ipcidr    LPM   shorter prefix -> identity  ipBlock            tc, sock
//	endpoints hash  host ifindex -> ep      pod add/del, isolation tc, sock
//	policy    hash  (ep,peer,dir,proto,port/len) -> allow  policy edit tc, sock
//	polmask   array prefix lengths in policy  policy edit          tc, sock
//	netns     hash  netns cookie -> ep      pod add/del            sock
//	config    array rate limits, flags      agent start            tc, sock
//	conntrack LRU   5-tuple+ep+dir -> seen  (kernel only)          tc
//	counters  percpu (dir,verdict,reason)   (kernel only)          agent metrics
//	events    ringbuf flow events           (kernel only)          pkg/flows
//
//	pod ──veth──▶ host veth  tcx ingress: zt_from_pod (dir egress, anti-spoof)
//	pod ◀─veth─── host veth  tcx egress:  zt_to_pod   (dir ingress)
//	cgroup v2 root: zt_connect4/6, zt_sendmsg4/6 (early EPERM, egress only)
//
// Everything is pinned under Options.BPFFSRoot (default /sys/fs/bpf/zt):
// maps by name, tcx links as links/<ifindex>_in and links/<ifindex>_eg,
// socket hooks as links/cgroup_*. A restarted agent calls Open, which
// adopts the pinned maps with their entries, and reconciles; closing the
// Datapath never removes enforcement. Remove is the explicit teardown.
//
// The ABI (keys, values, events, enums) is defined once in bpf/zt_abi.h;
// the Go types here are aliases of the bpf2go output.
package datapath
