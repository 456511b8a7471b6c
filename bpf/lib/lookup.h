/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Identity and policy lookups, and the policy verdict built on them, shared
 * by the tc, netfilter and socket programs. */
#ifndef ZT_LIB_LOOKUP_H
#define ZT_LIB_LOOKUP_H

#include "common.h"
#include "maps.h"
#include "account.h"

/* The entry of an address: its host entry in ipcache, else the longest
 * prefix in ipcidr, else NULL (ZT_ID_WORLD). A host entry is the longest
 * prefix there is, so this is one longest-prefix match over both maps. */
static __always_inline struct zt_ipcache_val *zt_ipcache_entry(__u8 family, const __u8 *addr)
{
	struct zt_ipcache_key k = {};
	struct zt_ipcache_val *v;

	k.family = family;
	k.prefixlen = 32 + (family == ZT_AF_INET ? 32 : 128);
	zt_addr_copy(k.addr, addr);
	v = bpf_map_lookup_elem(&ipcache, &k);
	if (!v)
		v = bpf_map_lookup_elem(&ipcidr, &k);
	return v;
}

/* Identity of an address (zt_ipcache_entry). */
static __always_inline __u32 zt_identity(__u8 family, const __u8 *addr)
{
	struct zt_ipcache_val *v = zt_ipcache_entry(family, addr);

	return v ? v->identity : ZT_ID_WORLD;
}

/* Sets the peer of a verdict: its identity, and the prefix identity of its
 * address (zt_abi.h, "Prefix identity of an address"; 0 for none). */
static __always_inline void zt_set_peer(struct zt_verdict_info *vi, __u8 family, const __u8 *addr)
{
	struct zt_ipcache_val *v = zt_ipcache_entry(family, addr);

	vi->peer_id = v ? v->identity : ZT_ID_WORLD;
	vi->peer_cidr_id = v ? v->cidr_identity : ZT_ID_ANY;
}

/* The policy entry of (ep, dir, peer, proto, port) with the longest prefix
 * length among those mask names (bit i: prefix length ZT_POLICY_PREFIX_ANY
 * + i), or NULL. Keys are exact: proto is zero below
 * ZT_POLICY_PREFIX_PROTO and the port keeps its top (prefixlen -
 * ZT_POLICY_PREFIX_PROTO) bits, as userspace writes them. */
static __always_inline struct zt_policy_val *zt_policy_probe(struct zt_policy_key *k, __u32 mask,
							     __u8 proto, __be16 port)
{
	struct zt_policy_val *v;
	int i;

#pragma clang loop unroll(disable)
	for (i = ZT_POLICY_PREFIX_FULL - ZT_POLICY_PREFIX_ANY; i >= 0; i--) {
		__u32 plen = ZT_POLICY_PREFIX_ANY + i;

		if (!(mask & ((2u << i) - 1)))
			break; /* no shorter length left */
		if (!(mask & (1u << i)))
			continue;
		k->prefixlen = plen;
		k->proto = plen >= ZT_POLICY_PREFIX_PROTO ? proto : 0;
		k->port = plen > ZT_POLICY_PREFIX_PROTO ?
			port & bpf_htons((__u16)(0xffff << (ZT_POLICY_PREFIX_FULL - plen))) : 0;
		v = bpf_map_lookup_elem(&policy, k);
		if (v)
			return v;
	}
	return NULL;
}

/* Returns the action of the best policy entry for this packet, or
 * ZT_ACTION_NONE; *rule_id is set on a hit.
 *
 * Lookup precedence (first hit wins):
 *   1. (ep, dir, peer identity, proto, port)   longest prefix of proto/port
 *   2. (ep, dir, ZT_ID_ANY,     proto, port)   longest prefix of proto/port
 *   3. (ep, dir, cidr_id,       proto, port)   when cidr_id is set (the
 *      prefix identity of the peer's address) and differs from the peer's
 *      identity; longest prefix of proto/port
 * Within one peer a specific port beats a port range block beats "proto,
 * any port" beats "any proto": the probes go from the longest prefix length
 * in use (polmask) to the shortest. A deny entry wins only if it is found
 * first in that order. */
static __always_inline __u8 zt_policy_lookup(__u32 ep_id, __u8 dir, __u32 peer_id, __u32 cidr_id,
					     __u8 proto, __be16 port, __u32 *rule_id)
{
	struct zt_policy_key k = {
		.ep_id = ep_id,
		.peer_id = peer_id,
		.dir = dir,
	};
	struct zt_policy_val *v;
	struct zt_polmask *pm;
	__u32 zero = 0, mask;

	pm = bpf_map_lookup_elem(&polmask, &zero);
	if (!pm)
		return ZT_ACTION_NONE;
	mask = pm->plens[dir & 1];
	v = zt_policy_probe(&k, mask, proto, port);
	if (!v && peer_id != ZT_ID_ANY) {
		k.peer_id = ZT_ID_ANY;
		v = zt_policy_probe(&k, mask, proto, port);
	}
	if (!v && cidr_id != ZT_ID_ANY && cidr_id != peer_id) {
		k.peer_id = cidr_id;
		v = zt_policy_probe(&k, mask, proto, port);
	}
	if (!v)
		return ZT_ACTION_NONE;
	*rule_id = v->rule_id;
	return v->action;
}

/* A denial at endpoint ep: dropped, or passed as AUDIT when the endpoint
 * audits. */
static __always_inline void zt_deny(const struct zt_endpoint *ep, struct zt_verdict_info *v,
				    __u8 reason)
{
	v->reason = reason;
	v->verdict = (ep->flags & ZT_EP_AUDIT) ? ZT_VERDICT_AUDIT : ZT_VERDICT_DROP;
}

/* The verdict of a packet (proto, port) in direction v->dir of endpoint ep,
 * which isolates that direction, from the peer v->peer_id, whose address
 * has the prefix identity v->peer_cidr_id (zt_set_peer): ALLOWED on an
 * allow entry, else DENY_RULE (a deny entry) or POLICY_DENIED (no entry),
 * through zt_deny. Sets v->rule_id on a policy hit; v->verdict is expected
 * ZT_VERDICT_ALLOW on entry and is left so on an allow. The one place the tc,
 * netfilter and socket programs take this decision, so they cannot drift
 * apart. */
static __always_inline void zt_policy_verdict(const struct zt_endpoint *ep, __u8 proto,
					      __be16 port, struct zt_verdict_info *v)
{
	__u8 action = zt_policy_lookup(v->ep_id, v->dir, v->peer_id, v->peer_cidr_id, proto, port,
					&v->rule_id);

	if (action == ZT_ACTION_ALLOW)
		v->reason = ZT_REASON_ALLOWED;
	else
		zt_deny(ep, v, action == ZT_ACTION_DENY ? ZT_REASON_DENY_RULE : ZT_REASON_POLICY_DENIED);
}

/* Is addr in one of the cluster's Service ranges? */
static __always_inline int zt_is_service(__u8 family, const __u8 *addr)
{
	struct zt_ipcache_key k = {};

	k.family = family;
	k.prefixlen = 32 + (family == ZT_AF_INET ? 32 : 128);
	zt_addr_copy(k.addr, addr);
	return bpf_map_lookup_elem(&svcnets, &k) != NULL;
}

/* Protocols kube-proxy translates Service addresses for. */
static __always_inline int zt_svc_proto(__u8 proto)
{
	return proto == ZT_IPPROTO_TCP || proto == ZT_IPPROTO_UDP || proto == ZT_IPPROTO_SCTP;
}

static __always_inline struct zt_endpoint *zt_endpoint_get(__u32 ifindex)
{
	return bpf_map_lookup_elem(&endpoints, &ifindex);
}

#endif
