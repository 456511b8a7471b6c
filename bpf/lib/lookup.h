/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Identity and policy lookups, and the policy verdict built on them, shared
 * by the tc, netfilter and socket programs. */
#ifndef ZT_LIB_LOOKUP_H
#define ZT_LIB_LOOKUP_H

#include "common.h"
#include "maps.h"
#include "account.h"

/* Identity of an address: longest prefix in ipcache, ZT_ID_WORLD on a miss. */
static __always_inline __u32 zt_identity(__u8 family, const __u8 *addr)
{
	struct zt_ipcache_key k = {};
	struct zt_ipcache_val *v;

	k.family = family;
	k.prefixlen = 32 + (family == ZT_AF_INET ? 32 : 128);
	zt_addr_copy(k.addr, addr);
	v = bpf_map_lookup_elem(&ipcache, &k);
	return v ? v->identity : ZT_ID_WORLD;
}

/* Returns the action of the best policy entry for this packet, or
 * ZT_ACTION_NONE; *rule_id is set on a hit.
 *
 * Lookup precedence (first hit wins):
 *   1. (ep, dir, peer identity, proto, port)   longest prefix of proto/port
 *   2. (ep, dir, ZT_ID_ANY,     proto, port)   longest prefix of proto/port
 * Within one lookup the LPM trie prefers a specific port over a port range
 * block over "proto, any port" over "any proto". A deny entry wins only if
 * it is found first in that order. */
static __always_inline __u8 zt_policy_lookup(__u32 ep_id, __u8 dir, __u32 peer_id, __u8 proto,
					     __be16 port, __u32 *rule_id)
{
	struct zt_policy_key k = {
		.prefixlen = ZT_POLICY_PREFIX_FULL,
		.ep_id = ep_id,
		.peer_id = peer_id,
		.dir = dir,
		.proto = proto,
		.port = port,
	};
	struct zt_policy_val *v;

	v = bpf_map_lookup_elem(&policy, &k);
	if (!v && peer_id != ZT_ID_ANY) {
		k.peer_id = ZT_ID_ANY;
		v = bpf_map_lookup_elem(&policy, &k);
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
 * which isolates that direction, from the peer v->peer_id: ALLOWED on an
 * allow entry, else DENY_RULE (a deny entry) or POLICY_DENIED (no entry),
 * through zt_deny. Sets v->rule_id on a policy hit; v->verdict is expected
 * ZT_VERDICT_ALLOW on entry and is left so on an allow. The one place the tc,
 * netfilter and socket programs take this decision, so they cannot drift
 * apart. */
static __always_inline void zt_policy_verdict(const struct zt_endpoint *ep, __u8 proto,
					      __be16 port, struct zt_verdict_info *v)
{
	__u8 action = zt_policy_lookup(v->ep_id, v->dir, v->peer_id, proto, port, &v->rule_id);

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
