// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/* cgroup socket hooks: an early, friendly EPERM for connect()/sendmsg() to
 * a destination that egress policy denies. tc (zt_from_pod) stays the
 * enforcement of record; these programs only refuse, they never allow what
 * tc would drop, and they never refuse what tc would pass: a datagram that
 * answers a flow allowed into this endpoint (a UDP server replying with
 * sendto() on an unconnected socket, or connect()ing a socket to its
 * client) passes, as tc passes it as a reply. They read conntrack, never
 * write it.
 *
 * The endpoint is found by network namespace cookie (netns map) and then by
 * host ifindex (endpoints map). Unknown namespaces are allowed (return 1).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/account.h"
#include "lib/lookup.h"
#include "lib/ct.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#define ZT_SOCK_ALLOW 1
#define ZT_SOCK_DENY  0

static __always_inline int zt_is_own_ip(const struct zt_endpoint *ep, __u8 family, const __u8 *a)
{
#pragma unroll
	for (int i = 0; i < ZT_MAX_IPS; i++) {
		if (i >= ep->nr_ips)
			break;
		if (ep->ips[i].family == family && zt_addr_eq(ep->ips[i].addr, a))
			return 1;
	}
	return 0;
}

/* Would tc pass this send as the reply of a flow allowed into the endpoint?
 * The forward entry was written at ingress (peer -> pod): its source is the
 * destination here and its destination port the socket's local port. The
 * local address is one of the endpoint's own of the family (the socket may
 * be bound to the wildcard address). */
static __always_inline int zt_sock_is_reply(struct bpf_sock_addr *ctx, __u32 ifindex,
					    const struct zt_endpoint *ep, const struct zt_flow *f)
{
	struct bpf_sock *sk = ctx->sk;
	struct zt_config *cfg;
	struct zt_ct_key k = {};
	struct zt_ct_val *v;
	__u16 lport;
	__u64 now;

	if (!sk)
		return 0;
	lport = (__u16)sk->src_port;
	if (!lport)
		return 0; /* not bound yet: a new flow */
	cfg = zt_config_get();
	now = zt_ct_now();
	k.ifindex = ifindex;
	k.family = f->family;
	k.proto = f->proto;
	k.dir = ZT_DIR_INGRESS;
	k.sport = f->dport;
	k.dport = bpf_htons(lport);
	zt_addr_copy(k.saddr, f->daddr);

#pragma unroll
	for (int i = 0; i < ZT_MAX_IPS; i++) {
		if (i >= ep->nr_ips)
			break;
		if (ep->ips[i].family != f->family)
			continue;
		zt_addr_copy(k.daddr, ep->ips[i].addr);
		v = bpf_map_lookup_elem(&conntrack, &k);
		if (v && !(v->flags & ZT_CT_REVOKED) && zt_ct_live(cfg, v, now))
			return 1;
	}
	return 0;
}

static __always_inline int zt_sock_check(struct bpf_sock_addr *ctx, struct zt_flow *f)
{
	struct zt_verdict_info v = { .dir = ZT_DIR_EGRESS, .hook = ZT_HOOK_SOCK };
	struct zt_netns_val *ns;
	struct zt_endpoint *ep;
	struct zt_config *cfg;
	__u64 cookie;

	cookie = bpf_get_netns_cookie(ctx);
	ns = bpf_map_lookup_elem(&netns, &cookie);
	if (!ns)
		return ZT_SOCK_ALLOW;
	ep = zt_endpoint_get(ns->ifindex);
	if (!ep || !(ep->flags & ZT_EP_EGRESS_ISOLATED))
		return ZT_SOCK_ALLOW;

	/* Traffic that never leaves the pod: loopback and its own addresses. */
	if (f->family == ZT_AF_INET && f->daddr[0] == 127)
		return ZT_SOCK_ALLOW;
	if (f->family == ZT_AF_INET6) {
		const __u32 *d = (const __u32 *)f->daddr;
		if (!d[0] && !d[1] && !d[2] && d[3] == bpf_htonl(1))
			return ZT_SOCK_ALLOW;
	}
	if (zt_is_own_ip(ep, f->family, f->daddr))
		return ZT_SOCK_ALLOW;

	/* A Service address: its egress is decided after the NAT (tc and
	 * netfilter), on the pod it is translated to. */
	cfg = zt_config_get();
	if (cfg && cfg->svc_mark && zt_svc_proto(f->proto) && zt_is_service(f->family, f->daddr))
		return ZT_SOCK_ALLOW;

	v.ep_id = ep->ep_id;
	v.ifindex = ns->ifindex;
	zt_set_peer(&v, f->family, f->daddr);
	zt_policy_verdict(ep, f->proto, f->dport, &v);
	if (v.verdict != ZT_VERDICT_DROP)
		return ZT_SOCK_ALLOW; /* allowed, or audited: tc counts and reports it */
	if (zt_sock_is_reply(ctx, v.ifindex, ep, f))
		return ZT_SOCK_ALLOW; /* tc passes it as a reply */

	/* tc drops it: refused here, under the socket hook's own reason */
	v.reason = ZT_REASON_SOCK_DENIED;
	zt_count(v.dir, v.verdict, v.reason, 0);
	zt_emit(cfg, f, &v);
	return ZT_SOCK_DENY;
}

static __always_inline __u8 zt_sock_proto(struct bpf_sock_addr *ctx)
{
	__u32 p = ctx->protocol;

	if (p)
		return p;
	return ctx->type == 1 /* SOCK_STREAM */ ? ZT_IPPROTO_TCP : ZT_IPPROTO_UDP;
}

static __always_inline int zt_sock4(struct bpf_sock_addr *ctx)
{
	struct zt_flow f = {};
	__u32 ip = ctx->user_ip4;

	f.family = ZT_AF_INET;
	f.proto = zt_sock_proto(ctx);
	__builtin_memcpy(ZT_ALIGNED4(f.daddr), &ip, 4);
	f.dport = (__be16)ctx->user_port;
	f.pol_port = f.dport;
	return zt_sock_check(ctx, &f);
}

static __always_inline int zt_sock6(struct bpf_sock_addr *ctx)
{
	struct zt_flow f = {};
	__u32 a[4];

	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	f.proto = zt_sock_proto(ctx);
	f.dport = (__be16)ctx->user_port;
	f.pol_port = f.dport;
	/* v4-mapped (::ffff:a.b.c.d) goes out as IPv4 */
	if (!a[0] && !a[1] && a[2] == bpf_htonl(0xffff)) {
		f.family = ZT_AF_INET;
		__builtin_memcpy(ZT_ALIGNED4(f.daddr), &a[3], 4);
	} else {
		f.family = ZT_AF_INET6;
		__builtin_memcpy(ZT_ALIGNED4(f.daddr), a, 16);
	}
	return zt_sock_check(ctx, &f);
}

SEC("cgroup/connect4")
int zt_connect4(struct bpf_sock_addr *ctx)
{
	return zt_sock4(ctx);
}

SEC("cgroup/connect6")
int zt_connect6(struct bpf_sock_addr *ctx)
{
	return zt_sock6(ctx);
}

SEC("cgroup/sendmsg4")
int zt_sendmsg4(struct bpf_sock_addr *ctx)
{
	return zt_sock4(ctx);
}

SEC("cgroup/sendmsg6")
int zt_sendmsg6(struct bpf_sock_addr *ctx)
{
	return zt_sock6(ctx);
}
