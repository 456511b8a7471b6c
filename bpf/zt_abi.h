/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * zt_abi.h: the one definition of everything the zt BPF programs and Go share.
 * Go types and constants are generated from this file by bpf2go -type (see
 * pkg/datapath/gen.go); nothing here is mirrored by hand.
 *
 * Every struct has fixed-width fields, explicit padding and a size assertion.
 * All integers are host byte order unless typed __be16/__be32. Addresses are
 * 16 bytes: IPv4 uses the first 4 bytes, the other 12 are zero.
 *
 * Maps (names <= 15 chars, all pinned by name under the bpffs root):
 *
 *   ipcache    HASH      zt_ipcache_key (24)  -> zt_ipcache_val (8)
 *              host addresses only: prefixlen 64 (v4) or 160 (v6).
 *              Preallocated: a full load writes it at hash speed.
 *   ipcidr     LPM_TRIE  zt_ipcache_key (24)  -> zt_ipcache_val (8)
 *              every shorter prefix. prefixlen = 32 + prefix bits:
 *              family and pad are always matched, so v4 and v6 share
 *              one trie. An address's identity is its ipcache entry,
 *              else its longest prefix here, else ZT_ID_WORLD.
 *   endpoints  HASH      __u32 host ifindex   -> zt_endpoint (92)
 *   policy     HASH      zt_policy_key (16)   -> zt_policy_val (8)
 *              data = ep_id(32) peer_id(32) dir(8) proto(8) port(16, BE)
 *              prefixlen 72 = any proto/port, 80 = proto, any port,
 *              80+k = the top k bits of the (big-endian) port. Keys are
 *              exact: bits past the prefix length are zero. Preallocated.
 *   polmask    ARRAY     __u32 0              -> zt_polmask (8)
 *              per direction, bit i set if policy may hold a key of
 *              prefix length 72+i. The programs probe policy once per
 *              set bit, longest first, so the longest prefix wins as in
 *              an LPM trie. Userspace sets a bit before writing a key of
 *              its length and clears it only when no such key is left.
 *   conntrack  LRU_HASH  zt_ct_key (44)       -> zt_ct_val (32)
 *              keyed by the endpoint's host ifindex (the agent's
 *              ep_id), so a packet finds its flow before its endpoint.
 *   counters   PERCPU_ARRAY __u32 idx         -> zt_counter (16)
 *              idx = ZT_CTR_IDX(dir, verdict, reason)
 *   events     RINGBUF   zt_flow_event (72) records
 *   config     ARRAY     __u32 0              -> zt_config (24)
 *   netns      HASH      __u64 netns cookie   -> zt_netns_val (8)
 *   ev_bucket  PERCPU_ARRAY __u32 0           -> zt_bucket (16), internal
 *   svcnets    LPM_TRIE  zt_ipcache_key (24)  -> __u32 (1)
 *              the cluster's Service IP ranges (ServiceCIDRs), same
 *              key layout as ipcache.
 *   svcpend    LRU_HASH  zt_ct_key (44)       -> __u32 source host ifindex
 *              egress to a Service address whose verdict waits for the
 *              NAT (see "Service egress" below); key ifindex 0, dir EGRESS,
 *              the tuple as the pod sent it.
 *   polgen     ARRAY     __u32 0              -> __u64 policy generation
 *              (see "Verdict cache" below); written by userspace only.
 *
 * Layouts (offset:size):
 *   zt_ipcache_key { 0:4 prefixlen, 4:1 family, 5:3 pad, 8:16 addr }
 *   zt_ipcache_val { 0:4 identity, 4:4 cidr_identity }
 *   zt_endpoint    { 0:4 ep_id, 4:4 flags (zt_ep_flags), 8:1 nr_ips,
 *                    9:3 pad, 12:80 ips[4] { 0:1 family, 1:3 pad, 4:16 addr } }
 *   zt_policy_key  { 0:4 prefixlen, 4:4 ep_id, 8:4 peer_id, 12:1 dir,
 *                    13:1 proto, 14:2 port (BE) }
 *   zt_policy_val  { 0:4 rule_id, 4:1 action (zt_action), 5:3 pad }
 *   zt_polmask     { 0:4 plens[INGRESS], 4:4 plens[EGRESS] }
 *   zt_ct_key      { 0:4 ifindex, 4:1 family, 5:1 proto, 6:1 dir, 7:1 pad,
 *                    8:2 sport (BE), 10:2 dport (BE), 12:16 saddr, 28:16 daddr }
 *   zt_ct_val      { 0:8 last_seen_ns, 8:4 rule_id, 12:4 flags (zt_ct_flags),
 *                    16:8 verified_gen, 24:8 reply_gen }
 *   zt_counter     { 0:8 packets, 8:8 bytes }
 *   zt_flow_event  { 0:8 ts_ns, 8:4 ep_id, 12:4 ifindex, 16:4 peer_id,
 *                    20:4 rule_id, 24:1 family, 25:1 proto, 26:1 dir,
 *                    27:1 reason, 28:1 verdict, 29:1 tcp_flags, 30:1 hook,
 *                    31:1 pad, 32:2 sport (BE), 34:2 dport (BE),
 *                    36:16 saddr, 52:16 daddr, 68:4 len }
 *   zt_config      { 0:4 flags, 4:4 ev_rate, 8:4 ev_burst, 12:4 svc_mark,
 *                    16:8 ct_timeout_ns }
 *   zt_netns_val   { 0:4 ep_id, 4:4 ifindex }
 *
 * Conntrack keys are in the forward (original) orientation of the packet
 * that created them, plus the direction it was seen in, so a reply at the
 * same endpoint looks up the reversed tuple with the opposite direction.
 * For ICMP echo the ports carry the echo id: request = (id, 0),
 * reply = (0, id), so only the reply of a seen request matches in reverse.
 *
 * Revoked flows. A forward packet that policy now drops does not delete
 * its entry: the entry is marked ZT_CT_REVOKED and cuts the flow both
 * ways. Its replies are dropped too (POLICY_DENIED, the entry's rule), so
 * the other side cannot re-open the flow from its end: otherwise a server
 * whose egress is not isolated would, with its next ACK or UDP answer,
 * create an entry of the opposite direction and the client's packets
 * would pass as its replies. A packet the policy allows again, or a new
 * flow of the other direction (its own live entry), clears it. Revoked
 * entries are never replies for ICMP errors or the socket hooks.
 *
 * Verdict cache. Every forward packet of an isolated direction is checked
 * against current policy, but the answer for an established flow only
 * changes when the maps do. Userspace increments polgen after every write
 * to ipcache, policy, endpoints or config (pkg/datapath does it for every
 * write it makes). A forward packet that passes stamps its conntrack
 * entry with the generation it was decided at (verified_gen), and how:
 * allowed by a rule (rule_id), ZT_CT_VIA_HOST (the allow-from-host flag)
 * or ZT_CT_NOT_ISOLATED (its direction is not isolated). A reply that
 * passes stamps the entry it answers (reply_gen); so does the packet that
 * creates an entry, where the flow's replies would pass the endpoint step
 * (entering the pod always, leaving it only from one of its addresses),
 * so that the first reply takes the fast path too. While polgen still
 * holds that number, the next packet of the flow takes the same verdict
 * without the endpoint, ipcache and policy lookups, and replies pass
 * without the endpoint. Any map write makes every stamp stale, so the
 * first packet after it is decided from the maps again (and a revoked
 * allow cuts the flow as before); so does a new endpoint behind a reused
 * interface index, or an address an endpoint gave up (anti-spoofing).
 * The generation a stamp carries is read, then followed by a fully
 * ordered atomic, before the endpoint and every map the verdict reads, so
 * they are at least as new as that generation on any CPU architecture.
 * The atomic is on the program's stack, never on polgen: packets only
 * read polgen's cache line, so a new flow on one CPU does not take it
 * from the others (lib/ct.h, zt_polgen_ordered). 0
 * means "never": a conntrack entry written by an older version (the
 * value grew by verified_gen, then by reply_gen; migration zero-extends
 * it) or by the netfilter program is decided from the maps.
 *
 * Prefix identity of an address. An ipcache (host) entry may name, besides
 * the address's own identity, the identity the address has as a member of
 * the prefixes policies reference (cidr_identity; in practice that of the
 * longest such prefix holding it, which carries every one holding it). A
 * policy verdict that finds no entry for the peer's own identity, nor for
 * ZT_ID_ANY, probes the endpoint's policy once more with cidr_identity
 * when it is set: an ipBlock can then admit a pod's address by an entry of
 * its prefix's identity, so a pod need not carry in its own identity every
 * prefix that holds its address. 0 (what older writers left in the field,
 * then named flags) means none: no third probe.
 *
 * Conntrack is keyed by the endpoint's host ifindex, not its ep_id, so
 * that a packet finds its flow before its endpoint. The agent has always
 * used the host ifindex as ep_id, so pinned entries keep their meaning.
 *
 * Lookup order. A packet whose source port is above its destination port
 * (a client's ephemeral port; an echo request), other than a TCP SYN, is
 * likely a forward packet of an established flow: tc looks up its forward
 * entry first, and a live, unrevoked one passes it at once where its
 * direction is not isolated, or where it is, when verified at the current
 * generation. The reverse entry could not change that verdict (a live one
 * would pass it as a reply, a revoked one yields to a live forward entry),
 * so it is not looked up: one conntrack lookup per packet of an
 * established flow instead of two. When a flow has entries both ways
 * (each side opened the same tuple), such a packet is counted ALLOWED or
 * NOT_ISOLATED rather than REPLY. Every other packet looks up the reverse
 * entry first.
 *
 * Fast path. zt_tc.c's zt_handle parses the packet and, for TCP, UDP and
 * SCTP, makes that one conntrack lookup before anything else: a live,
 * unrevoked entry stamped at the current generation (verified_gen for a
 * forward packet, reply_gen for a reply) passes the packet, counted under
 * the stamped reason. Otherwise it reads the generation (ordered) and the
 * endpoint; a live forward entry of a direction that is not isolated, or
 * a reply, passes there and is stamped. Everything else goes to zt_slow,
 * a separate function told what was already looked up, so nothing is
 * looked up twice. A packet passed without its endpoint is counted, but
 * raises no event (none of these packets ever did).
 *
 * Service egress. NetworkPolicy egress applies to the pod a Service
 * address is translated to, and kube-proxy translates it (DNAT in the
 * node's netfilter prerouting) after zt_from_pod and the socket hooks
 * ran. So when an egress-isolated endpoint sends TCP, UDP or SCTP to an
 * address in svcnets and config.svc_mark is set, zt_from_pod does not
 * decide: it records the tuple in svcpend, ORs svc_mark into skb->mark
 * and passes the packet uncounted. The netfilter program zt_nf_service
 * (forward and local-in hooks, after DNAT) takes every packet carrying
 * the mark: it reads the connection's original and translated tuples
 * from netfilter conntrack, finds the endpoint in svcpend and decides
 * egress against the translated destination (identity, port) as
 * zt_from_pod would. Allowed: the conntrack entry of the endpoint is
 * written with the original tuple, so the reply (from the Service
 * address, after un-NAT) passes as REPLY. Denied: dropped and counted
 * there, with hook ZT_HOOK_NF. The agent sets svc_mark only once the
 * netfilter program is attached. The socket hooks pass Service
 * addresses (tc and netfilter decide).
 */
#ifndef ZT_ABI_H
#define ZT_ABI_H

#include <linux/types.h>

#define ZT_MAX_IPS 4

/* Default map sizes; userspace may override max_entries before loading. */
#define ZT_IPCACHE_MAX   524288 /* ipcache (preallocated) and ipcidr (LPM, per entry) */
#define ZT_ENDPOINTS_MAX 4096
#define ZT_POLICY_MAX    262144 /* preallocated */
#define ZT_CT_MAX        262144
#define ZT_NETNS_MAX     4096
#define ZT_SVCNETS_MAX   64
#define ZT_SVCPEND_MAX   65536
#define ZT_EVENTS_BYTES  (1 << 20)

/* Security identities: a __u32 whose reserved values are named here.
 * Userspace allocates from ZT_ID_USER_MIN upward. (Typed as an enum so that
 * Go gets one Identity type; any __u32 value is valid.) */
enum zt_identity : __u32 {
	ZT_ID_ANY = 0,   /* wildcard peer in policy keys, never an address */
	ZT_ID_HOST = 1,  /* this node */
	ZT_ID_WORLD = 2, /* anything not in ipcache */
	ZT_ID_USER_MIN = 256,
};

enum zt_dir : __u8 {
	ZT_DIR_INGRESS = 0, /* into the pod: tcx egress of the host veth, peer = src */
	ZT_DIR_EGRESS = 1,  /* out of the pod: tcx ingress of the host veth, peer = dst */
	ZT_DIR_MAX = 2,
};

enum zt_verdict : __u8 {
	ZT_VERDICT_ALLOW = 0,
	ZT_VERDICT_DROP = 1,
	ZT_VERDICT_AUDIT = 2, /* would drop, passed because the endpoint audits */
	ZT_VERDICT_MAX = 3,
};

/* Why a verdict was reached. Meta reasons (EV_*) count events that were not
 * emitted, under the verdict of the packet they described. */
enum zt_reason : __u8 {
	ZT_REASON_ALLOWED = 0,      /* an allow rule matched */
	ZT_REASON_NOT_ISOLATED = 1, /* this direction of the endpoint is not isolated */
	ZT_REASON_REPLY = 2,        /* reply of a connection allowed at this endpoint, or an ICMP error about one */
	ZT_REASON_HOST = 3,         /* from the host identity, endpoint has ALLOW_HOST */
	ZT_REASON_LINK_LOCAL = 4,   /* ARP, IPv6 neighbour discovery / MLD */
	ZT_REASON_NO_ENDPOINT = 5,  /* attached interface not in endpoints: pass */
	ZT_REASON_POLICY_DENIED = 6,/* isolated and no rule matched */
	ZT_REASON_DENY_RULE = 7,    /* an explicit deny rule matched */
	ZT_REASON_SPOOFED = 8,      /* source IP is not the endpoint's */
	ZT_REASON_MALFORMED = 9,    /* truncated or invalid headers */
	ZT_REASON_UNSUPPORTED = 10, /* unparseable L3 (e.g. too many IPv6 ext headers, non-IP) */
	ZT_REASON_SOCK_DENIED = 11, /* connect/sendmsg refused by the socket hook */
	ZT_REASON_EV_RATELIMITED = 12, /* event suppressed by the token bucket */
	ZT_REASON_EV_LOST = 13,     /* event not emitted: ring buffer full */
	ZT_REASON_MAX = 14,
};

enum zt_action : __u8 {
	ZT_ACTION_NONE = 0,
	ZT_ACTION_ALLOW = 1,
	ZT_ACTION_DENY = 2,
};

enum zt_hook : __u8 {
	ZT_HOOK_TC = 0,
	ZT_HOOK_SOCK = 1,
	ZT_HOOK_NF = 2, /* netfilter, after the Service NAT */
};

enum zt_ep_flags : __u32 {
	ZT_EP_INGRESS_ISOLATED = 1 << 0,
	ZT_EP_EGRESS_ISOLATED = 1 << 1,
	ZT_EP_AUDIT = 1 << 2,      /* would-drop passes, counted/evented as AUDIT */
	ZT_EP_ALLOW_HOST = 1 << 3, /* ingress from ZT_ID_HOST passes */
};

enum zt_cfg_flags : __u32 {
	ZT_CFG_EVENTS_ALLOWED = 1 << 0, /* also emit events for allowed new connections */
};

/* AF_INET / AF_INET6, kept here so the ABI does not depend on libc. */
enum zt_family : __u8 {
	ZT_AF_INET = 2,
	ZT_AF_INET6 = 10,
};

#define ZT_CTR_IDX(dir, verdict, reason) \
	((((__u32)(dir)) * ZT_VERDICT_MAX + (__u32)(verdict)) * ZT_REASON_MAX + (__u32)(reason))
#define ZT_COUNTERS_MAX (ZT_DIR_MAX * ZT_VERDICT_MAX * ZT_REASON_MAX)

struct zt_ipcache_key {
	__u32 prefixlen;
	enum zt_family family;
	__u8 pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct zt_ipcache_key) == 24, "zt_ipcache_key size");
_Static_assert(__builtin_offsetof(struct zt_ipcache_key, addr) % 4 == 0, "zt_ipcache_key addr alignment");

struct zt_ipcache_val {
	enum zt_identity identity;
	/* ipcache (host) entries: the identity of the address as a member of
	 * the referenced prefixes, ZT_ID_ANY (0) for none; see "Prefix
	 * identity of an address" above. ipcidr entries: 0. */
	enum zt_identity cidr_identity;
};
_Static_assert(sizeof(struct zt_ipcache_val) == 8, "zt_ipcache_val size");

struct zt_ep_ip {
	enum zt_family family;
	__u8 pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct zt_ep_ip) == 20, "zt_ep_ip size");
_Static_assert(__builtin_offsetof(struct zt_ep_ip, addr) % 4 == 0, "zt_ep_ip addr alignment");

struct zt_endpoint {
	__u32 ep_id;
	enum zt_ep_flags flags;
	__u8 nr_ips;
	__u8 pad[3];
	struct zt_ep_ip ips[ZT_MAX_IPS];
};
_Static_assert(sizeof(struct zt_endpoint) == 92, "zt_endpoint size");
_Static_assert(__builtin_offsetof(struct zt_endpoint, ips) % 4 == 0, "zt_endpoint ips alignment");

#define ZT_POLICY_PREFIX_ANY   72 /* ep_id + peer_id + dir */
#define ZT_POLICY_PREFIX_PROTO 80 /* + proto */
#define ZT_POLICY_PREFIX_FULL  96 /* + port */

struct zt_policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	enum zt_identity peer_id;
	enum zt_dir dir;
	__u8 proto;
	__be16 port;
};
_Static_assert(sizeof(struct zt_policy_key) == 16, "zt_policy_key size");

struct zt_policy_val {
	__u32 rule_id;
	enum zt_action action;
	__u8 pad[3];
};
_Static_assert(sizeof(struct zt_policy_val) == 8, "zt_policy_val size");

/* Prefix lengths of policy keys in use, per direction: bit i = prefix
 * length ZT_POLICY_PREFIX_ANY + i. */
struct zt_polmask {
	__u32 plens[ZT_DIR_MAX];
};
_Static_assert(sizeof(struct zt_polmask) == 8, "zt_polmask size");

struct zt_ct_key {
	__u32 ifindex; /* the endpoint's host interface */
	enum zt_family family;
	__u8 proto;
	enum zt_dir dir;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};
_Static_assert(sizeof(struct zt_ct_key) == 44, "zt_ct_key size");
_Static_assert(__builtin_offsetof(struct zt_ct_key, saddr) % 4 == 0 && __builtin_offsetof(struct zt_ct_key, daddr) % 4 == 0, "zt_ct_key address alignment");

/* Bit 0 is unused: ZT_CT_REVOKED has always been written as 1 << 1 (a
 * macro of lib/ct.h once shadowed this enum), so pinned entries keep it. */
enum zt_ct_flags : __u32 {
	ZT_CT_REVOKED  = 1 << 1, /* policy dropped the flow: cut both ways */
	ZT_CT_VIA_HOST = 1 << 2, /* verified_gen's verdict: allowed from the host */
	ZT_CT_NOT_ISOLATED = 1 << 3, /* verified_gen's verdict: direction not isolated */
};

struct zt_ct_val {
	__u64 last_seen_ns;
	__u32 rule_id;
	enum zt_ct_flags flags;
	__u64 verified_gen; /* polgen the forward verdict was taken at; 0: none */
	__u64 reply_gen;    /* polgen its replies were last passed (or vouched for) at; 0: none */
};
_Static_assert(sizeof(struct zt_ct_val) == 32, "zt_ct_val size");

struct zt_counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct zt_counter) == 16, "zt_counter size");

struct zt_flow_event {
	__u64 ts_ns;
	__u32 ep_id;
	__u32 ifindex;
	enum zt_identity peer_id;
	__u32 rule_id;
	enum zt_family family;
	__u8 proto;
	enum zt_dir dir;
	enum zt_reason reason;
	enum zt_verdict verdict;
	__u8 tcp_flags;
	enum zt_hook hook;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 len;
};
_Static_assert(sizeof(struct zt_flow_event) == 72, "zt_flow_event size");
_Static_assert(__builtin_offsetof(struct zt_flow_event, saddr) % 4 == 0 && __builtin_offsetof(struct zt_flow_event, daddr) % 4 == 0, "zt_flow_event address alignment");

/* Conntrack entries refresh last_seen_ns at most this often; an idle entry
 * expires between ct_timeout_ns and ct_timeout_ns + ZT_CT_REFRESH_NS after
 * its last packet. */
#define ZT_CT_REFRESH_NS 1000000000ULL

/* Token bucket: ev_rate events per second per CPU, up to ev_burst at once.
 * ev_rate == 0 emits no events (all counted as EV_RATELIMITED).
 * svc_mark: the skb mark bit(s) flagging Service egress whose verdict
 * waits for the NAT; 0 decides it before the NAT (no deferral).
 * ct_timeout_ns == 0: conntrack entries never expire (LRU only). */
struct zt_config {
	enum zt_cfg_flags flags;
	__u32 ev_rate;
	__u32 ev_burst;
	__u32 svc_mark;
	__u64 ct_timeout_ns;
};
_Static_assert(sizeof(struct zt_config) == 24, "zt_config size");

struct zt_netns_val {
	__u32 ep_id;
	__u32 ifindex; /* host-side ifindex: key into endpoints */
};
_Static_assert(sizeof(struct zt_netns_val) == 8, "zt_netns_val size");

struct zt_bucket {
	__u64 tokens_ns; /* tokens scaled by 1e9 */
	__u64 last_ns;
};
_Static_assert(sizeof(struct zt_bucket) == 16, "zt_bucket size");

#endif /* ZT_ABI_H */
