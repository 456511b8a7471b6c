// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/* Netfilter program (BPF_PROG_TYPE_NETFILTER) in the node's namespace, at
 * the IPv4 and IPv6 forward and local-in hooks, after the Service NAT.
 *
 *   zt_nf_service: the egress verdict of a packet zt_from_pod deferred
 *                  because it went to a Service address (skb mark
 *                  config.svc_mark): decided on the translated destination.
 *
 * See "Service egress" in zt_abi.h. Every other packet is accepted at the
 * cost of one config lookup and one mark test.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/account.h"
#include "lib/lookup.h"
#include "lib/ct.h"

#include <bpf/bpf_core_read.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define NF_DROP   0
#define NF_ACCEPT 1

/* The kernel structures read here, by name: CO-RE relocates every field
 * offset against the running kernel's BTF (nf_conntrack is part of it). */
struct sk_buff {
	__u32 len;
	__u32 mark;
	unsigned long _nfct;
} __attribute__((preserve_access_index));

union nf_inet_addr {
	__u32 all[4];
} __attribute__((preserve_access_index));

union nf_conntrack_man_proto {
	__be16 all;
} __attribute__((preserve_access_index));

struct nf_conntrack_man {
	union nf_inet_addr u3;
	union nf_conntrack_man_proto u;
	__u16 l3num;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple {
	struct nf_conntrack_man src;
	struct {
		union nf_inet_addr u3;
		union {
			__be16 all;
		} u;
		__u8 protonum;
	} dst;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple_hash {
	struct nf_conntrack_tuple tuple;
} __attribute__((preserve_access_index));

struct nf_conn {
	struct nf_conntrack_tuple_hash tuplehash[2];
} __attribute__((preserve_access_index));

/* The program's context (include/net/netfilter/nf_bpf_link.h). */
struct nf_hook_state;
struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
};

#define ZT_NFCT_PTRMASK (~7UL)
#define ZT_IP_CT_IS_REPLY 3 /* enum ip_conntrack_info: >= is the reply direction */

/* The tuple of direction dir (0 original, 1 reply): the packet as sent. */
#define ZT_NF_READ_TUPLE(ct, i, t)                                                   \
	do {                                                                          \
		__u16 l3num = 0;                                                      \
		BPF_CORE_READ_INTO(&l3num, ct, tuplehash[i].tuple.src.l3num);         \
		BPF_CORE_READ_INTO(&(t)->proto, ct, tuplehash[i].tuple.dst.protonum); \
		BPF_CORE_READ_INTO(&(t)->saddr, ct, tuplehash[i].tuple.src.u3);       \
		BPF_CORE_READ_INTO(&(t)->sport, ct, tuplehash[i].tuple.src.u.all);    \
		BPF_CORE_READ_INTO(&(t)->daddr, ct, tuplehash[i].tuple.dst.u3);       \
		BPF_CORE_READ_INTO(&(t)->dport, ct, tuplehash[i].tuple.dst.u.all);    \
		(t)->family = l3num == ZT_AF_INET6 ? ZT_AF_INET6 : ZT_AF_INET;        \
	} while (0)

static __always_inline void zt_nf_tuple(struct nf_conn *ct, int dir, struct zt_flow *t)
{
	if (dir)
		ZT_NF_READ_TUPLE(ct, 1, t);
	else
		ZT_NF_READ_TUPLE(ct, 0, t);
	if (t->family == ZT_AF_INET) {
		/* IPv4 uses the first 4 bytes; conntrack's other 12 are not ours */
		__builtin_memset(t->saddr + 4, 0, 12);
		__builtin_memset(t->daddr + 4, 0, 12);
	}
}

/* Where the NAT sends the packet: the source of the other direction. */
static __always_inline void zt_nf_peer(struct nf_conn *ct, int other, struct zt_flow *f)
{
	if (other) {
		BPF_CORE_READ_INTO(&f->daddr, ct, tuplehash[1].tuple.src.u3);
		BPF_CORE_READ_INTO(&f->dport, ct, tuplehash[1].tuple.src.u.all);
	} else {
		BPF_CORE_READ_INTO(&f->daddr, ct, tuplehash[0].tuple.src.u3);
		BPF_CORE_READ_INTO(&f->dport, ct, tuplehash[0].tuple.src.u.all);
	}
}

static __always_inline int zt_nf_finish(struct zt_config *cfg, struct zt_flow *f,
					struct zt_verdict_info *v, int emit)
{
	zt_count(v->dir, v->verdict, v->reason, f->len);
	if (emit)
		zt_emit(cfg, f, v);
	return v->verdict == ZT_VERDICT_DROP ? NF_DROP : NF_ACCEPT;
}

SEC("netfilter")
int zt_nf_service(struct bpf_nf_ctx *ctx)
{
	struct zt_verdict_info v = { .dir = ZT_DIR_EGRESS, .hook = ZT_HOOK_NF };
	struct sk_buff *skb = ctx->skb;
	struct zt_flow f = {}, orig = {};
	struct zt_config *cfg;
	struct zt_endpoint *ep;
	struct nf_conn *ct;
	struct zt_ct_key pk;
	__u32 *ifindex;
	int created;

	cfg = zt_config_get();
	if (!cfg || !cfg->svc_mark || !(skb->mark & cfg->svc_mark))
		return NF_ACCEPT;
	f.len = skb->len;

	/* The connection as the pod opened it (original tuple) and where the
	 * NAT sends it (the source of the reply tuple). Untracked: the NAT is
	 * unknown, and so is the verdict. */
	ct = (struct nf_conn *)(skb->_nfct & ZT_NFCT_PTRMASK);
	if (!ct) {
		v.verdict = ZT_VERDICT_DROP;
		v.reason = ZT_REASON_UNSUPPORTED;
		return zt_nf_finish(cfg, &f, &v, 1);
	}
	/* The direction of this packet in netfilter's connection: a pod's
	 * packet is normally of the original direction. */
	if ((skb->_nfct & ~ZT_NFCT_PTRMASK) >= ZT_IP_CT_IS_REPLY) {
		zt_nf_tuple(ct, 1, &orig);
		zt_nf_peer(ct, 0, &f);
	} else {
		zt_nf_tuple(ct, 0, &orig);
		zt_nf_peer(ct, 1, &f);
	}
	f.family = orig.family;
	f.proto = orig.proto;
	zt_addr_copy(f.saddr, orig.saddr);
	f.sport = orig.sport;
	if (f.family == ZT_AF_INET)
		__builtin_memset(f.daddr + 4, 0, 12);
	f.pol_port = f.dport;

	zt_ct_key_fwd(&pk, 0, ZT_DIR_EGRESS, &orig);
	ifindex = bpf_map_lookup_elem(&svcpend, &pk);
	ep = ifindex ? zt_endpoint_get(*ifindex) : NULL;
	if (!ifindex || !ep) {
		/* The deferring endpoint is unknown (evicted, or removed
		 * since): fail closed. */
		v.verdict = ZT_VERDICT_DROP;
		v.reason = ZT_REASON_UNSUPPORTED;
		return zt_nf_finish(cfg, &f, &v, 1);
	}
	v.ep_id = ep->ep_id;
	v.ifindex = *ifindex; /* conntrack's key, as tc's */
	zt_set_peer(&v, f.family, f.daddr);

	if (!(ep->flags & ZT_EP_EGRESS_ISOLATED)) {
		v.reason = ZT_REASON_NOT_ISOLATED;
	} else {
		zt_policy_verdict(ep, f.proto, f.pol_port, &v);
	}

	if (v.verdict == ZT_VERDICT_DROP) {
		/* continuous verification: a revoked allow cuts the live flow */
		zt_ct_revoke(v.ifindex, ZT_DIR_EGRESS, &orig);
		return zt_nf_finish(cfg, &f, &v, 1);
	}

	/* Track the connection as the pod sees it, so the reply from the
	 * Service address passes the endpoint's ingress isolation. */
	created = zt_ct_upsert(cfg, v.ifindex, ZT_DIR_EGRESS, &orig, v.rule_id,
			       /* netfilter programs have no coarse clock; the
				* precise one is at most a tick ahead of it */
			       bpf_ktime_get_ns(), 0, 0, 0, 0);
	if (v.verdict == ZT_VERDICT_AUDIT)
		return zt_nf_finish(cfg, &f, &v, 1);
	return zt_nf_finish(cfg, &f, &v, (cfg->flags & ZT_CFG_EVENTS_ALLOWED) && created);
}
