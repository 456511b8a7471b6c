/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Minimal per-endpoint connection tracking: no TCP state machine, entries age
 * out by config.ct_timeout_ns (if set) and by LRU eviction. */
#ifndef ZT_LIB_CT_H
#define ZT_LIB_CT_H

#include "common.h"
#include "maps.h"
#include "parse.h"

/* The flags that say how verified_gen's verdict was taken. */
#define ZT_CT_VERDICT (ZT_CT_VIA_HOST | ZT_CT_NOT_ISOLATED)

static __always_inline void zt_ct_key_fwd(struct zt_ct_key *k, __u32 ifindex, __u8 dir,
					  const struct zt_flow *f)
{
	k->ifindex = ifindex;
	k->family = f->family;
	k->proto = f->proto;
	k->dir = dir;
	k->pad = 0;
	k->sport = f->sport;
	k->dport = f->dport;
	zt_addr_copy(k->saddr, f->saddr);
	zt_addr_copy(k->daddr, f->daddr);
}

static __always_inline void zt_ct_key_rev(struct zt_ct_key *k, __u32 ifindex, __u8 dir,
					  const struct zt_flow *f)
{
	k->ifindex = ifindex;
	k->family = f->family;
	k->proto = f->proto;
	k->dir = dir ^ 1;
	k->pad = 0;
	k->sport = f->dport;
	k->dport = f->sport;
	zt_addr_copy(k->saddr, f->daddr);
	zt_addr_copy(k->daddr, f->saddr);
}

/* last_seen_ns is refreshed at most once per ZT_CT_REFRESH_NS (see
 * zt_abi.h), so that a busy flow does not write its entry (a cache line
 * shared by the CPUs of both directions) on every packet. The slack keeps
 * an active flow from expiring early: an idle entry expires between
 * ct_timeout_ns and ct_timeout_ns + ZT_CT_REFRESH_NS after its last packet. */
static __always_inline int zt_ct_live(const struct zt_config *cfg, const struct zt_ct_val *v,
				      __u64 now)
{
	__u64 timeout, idle;

	/* Written by a clock a tick ahead (zt_nf_service): not idle. */
	if (now < v->last_seen_ns)
		return 1;
	idle = now - v->last_seen_ns;
	/* Live whatever the timeout (the test below holds for any): a busy
	 * flow's packets do not read config, a cache line of its own. */
	if (idle <= ZT_CT_REFRESH_NS)
		return 1;
	timeout = cfg ? cfg->ct_timeout_ns : 0;

	/* idle <= timeout + ZT_CT_REFRESH_NS, without overflow */
	return !timeout || idle <= timeout || idle - timeout <= ZT_CT_REFRESH_NS;
}

/* The conntrack clock: CLOCK_MONOTONIC at tick granularity, which reads no
 * clocksource (bpf_ktime_get_ns does, and is several times dearer); far
 * finer than ZT_CT_REFRESH_NS. */
static __always_inline __u64 zt_ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

static __always_inline void zt_ct_touch(struct zt_ct_val *v, __u64 now)
{
	if (now > v->last_seen_ns && now - v->last_seen_ns >= ZT_CT_REFRESH_NS)
		v->last_seen_ns = now;
}

/* The reason a verdict stamped on a forward entry (verified_gen) passes
 * its packets under, and the flags that stamp it. */
static __always_inline __u8 zt_ct_reason(const struct zt_ct_val *v)
{
	if (v->flags & ZT_CT_NOT_ISOLATED)
		return ZT_REASON_NOT_ISOLATED;
	return (v->flags & ZT_CT_VIA_HOST) ? ZT_REASON_HOST : ZT_REASON_ALLOWED;
}

static __always_inline __u32 zt_ct_how(__u8 reason)
{
	if (reason == ZT_REASON_NOT_ISOLATED)
		return ZT_CT_NOT_ISOLATED;
	return reason == ZT_REASON_HOST ? ZT_CT_VIA_HOST : 0;
}

/* A TCP SYN without ACK: it opens a connection. */
static __always_inline int zt_tcp_syn(const struct zt_flow *f)
{
	return f->proto == ZT_IPPROTO_TCP && (f->tcp_flags & 0x12) == 0x02;
}

/* The reverse entry of this packet (of the flow it would answer), or NULL. */
static __always_inline struct zt_ct_val *zt_ct_rev_get(__u32 ifindex, __u8 dir,
						       const struct zt_flow *f)
{
	struct zt_ct_key k;

	zt_ct_key_rev(&k, ifindex, dir, f);
	return bpf_map_lookup_elem(&conntrack, &k);
}

/* What zt_ct_is_reply found. (Not ZT_CT_*: those are the entry flags of
 * zt_abi.h, which a macro of that name would silently replace.) */
#define ZT_CT_IS_NONE    0
#define ZT_CT_IS_REPLY   1 /* reply of a live flow allowed at this endpoint */
#define ZT_CT_IS_REVOKED 2 /* reply of a flow policy has since cut */

/* Is this packet the reply of a flow allowed earlier at this endpoint
 * (ZT_CT_IS_REPLY), or of one that policy cut since (ZT_CT_IS_REVOKED)?
 * A reply stamps the entry's reply_gen with gen (read before the endpoint
 * was), so that the fast path passes the next ones while it holds. */
static __always_inline int zt_ct_is_reply(const struct zt_config *cfg, __u32 ifindex, __u8 dir,
					  const struct zt_flow *f, __u64 now, __u64 gen,
					  __u32 *rule_id)
{
	struct zt_ct_key k;
	struct zt_ct_val *v, *fwd;

	/* A TCP SYN without ACK opens a connection: it is never a reply, even
	 * when the reversed tuple is known (a reused source port towards a
	 * port the pod sent from would otherwise slip past ingress policy). */
	if (zt_tcp_syn(f))
		return ZT_CT_IS_NONE;
	zt_ct_key_rev(&k, ifindex, dir, f);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (!v)
		return ZT_CT_IS_NONE;
	if (!zt_ct_live(cfg, v, now)) {
		bpf_map_delete_elem(&conntrack, &k);
		return ZT_CT_IS_NONE;
	}
	if (v->flags & ZT_CT_REVOKED) {
		/* Unless this direction opened a flow of its own since (a live,
		 * not revoked forward entry): then it is a forward packet. */
		zt_ct_key_fwd(&k, ifindex, dir, f);
		fwd = bpf_map_lookup_elem(&conntrack, &k);
		if (fwd && !(fwd->flags & ZT_CT_REVOKED) && zt_ct_live(cfg, fwd, now))
			return ZT_CT_IS_NONE;
		*rule_id = v->rule_id;
		return ZT_CT_IS_REVOKED;
	}
	zt_ct_touch(v, now);
	if (v->reply_gen != gen)
		v->reply_gen = gen; /* the fast path passes its next replies */
	return ZT_CT_IS_REPLY;
}

/* Is this an ICMP error about a flow allowed earlier at this endpoint (a
 * port unreachable, fragmentation needed / packet too big for path MTU
 * discovery, a time exceeded)? The error travels against the flow it
 * answers and quotes that flow's first packet as it was sent, so the quoted
 * tuple is a forward entry of the other direction. An error is no sign of
 * life: the entry is not refreshed. */
static __always_inline int zt_ct_is_related(const struct zt_config *cfg, __u32 ifindex, __u8 dir,
					    struct __sk_buff *skb, const struct zt_flow *f,
					    __u64 now)
{
	struct zt_flow in = {};
	struct zt_ct_key k;
	struct zt_ct_val *v;

	if (zt_parse_icmp_inner(skb, f, &in))
		return 0;
	zt_ct_key_fwd(&k, ifindex, dir ^ 1, &in);
	v = bpf_map_lookup_elem(&conntrack, &k);
	return v && !(v->flags & ZT_CT_REVOKED) && zt_ct_live(cfg, v, now);
}

/* The policy generation (see zt_abi.h, "Verdict cache"): a plain read,
 * for comparing with a stamp. */
static __always_inline __u64 zt_polgen(void)
{
	__u32 zero = 0;
	__u64 *g = bpf_map_lookup_elem(&polgen, &zero);

	return g ? *g : 0;
}

/* The generation a verdict about to be taken from the maps is stamped
 * with: a plain read, then a fully ordered atomic, so the lookups after it
 * cannot see maps older than it, whatever the CPU's memory order. The
 * atomic is on a word of this program's stack, not on polgen: an atomic
 * on polgen would take its cache line for writing, and every other CPU,
 * whose every packet reads polgen, would then miss it; a new flow on one
 * CPU would slow the established flows of all the others. Its result is
 * used (the word's 0), so it is a fetching atomic, fully ordered on every
 * JIT (x86: lock xadd; arm64: ldaddal). */
static __always_inline __u64 zt_polgen_ordered(void)
{
	__u64 gen = zt_polgen(), fence = 0;

	return gen + __sync_fetch_and_add(&fence, 1);
}

/* The live, unrevoked forward entry of this packet whose verdict was
 * taken at generation gen (non-zero), or NULL. */
static __always_inline struct zt_ct_val *zt_ct_verified(const struct zt_config *cfg, __u32 ifindex,
							__u8 dir, const struct zt_flow *f, __u64 now,
							__u64 gen)
{
	struct zt_ct_key k;
	struct zt_ct_val *v;

	if (!gen)
		return NULL;
	zt_ct_key_fwd(&k, ifindex, dir, f);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (!v || v->verified_gen != gen || (v->flags & (ZT_CT_REVOKED | ZT_CT_NOT_ISOLATED)) ||
	    !zt_ct_live(cfg, v, now))
		return NULL;
	return v;
}

/* Refresh a live forward entry with the verdict just taken; fields are
 * written only when they change. */
static __always_inline void zt_ct_refresh(struct zt_ct_val *v, __u32 rule_id, __u64 now,
					  __u64 verified_gen, __u32 verdict)
{
	zt_ct_touch(v, now);
	if (v->rule_id != rule_id)
		v->rule_id = rule_id;
	if ((v->flags & ZT_CT_VERDICT) != verdict)
		v->flags = (v->flags & ~ZT_CT_VERDICT) | verdict;
	if (v->verified_gen != verified_gen)
		v->verified_gen = verified_gen;
}

/* The live, unrevoked forward entry of this packet, or NULL. Whatever the
 * reverse entry holds, such a packet passes where its direction is not
 * isolated, and where it is, passes on a verdict verified at the current
 * generation: a live reverse entry would pass it as a reply, a revoked one
 * yields to a live forward entry (zt_ct_is_reply). So a likely forward
 * packet looks this up first and skips the reverse lookup when it hits. */
static __always_inline struct zt_ct_val *zt_ct_fwd_live(const struct zt_config *cfg, __u32 ifindex,
							__u8 dir, const struct zt_flow *f, __u64 now)
{
	struct zt_ct_key k;
	struct zt_ct_val *v;

	zt_ct_key_fwd(&k, ifindex, dir, f);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (!v || (v->flags & ZT_CT_REVOKED) || !zt_ct_live(cfg, v, now))
		return NULL;
	return v;
}

/* Likely a forward packet of an established flow at this endpoint: its
 * source port is the higher (a client's ephemeral port towards a
 * service's; an echo request carries (id, 0)), and it is no TCP SYN (a new
 * connection has no entry yet). A guess only orders the lookups: a wrong
 * one costs the lookup it meant to save, never a different verdict. */
static __always_inline int zt_ct_likely_fwd(const struct zt_flow *f)
{
	if (f->icmp_err || zt_tcp_syn(f))
		return 0;
	return bpf_ntohs(f->sport) > bpf_ntohs(f->dport);
}

/* Create or refresh the forward entry; returns 1 if it was created.
 * verified_gen (0: none) and verdict (ZT_CT_VIA_HOST, ZT_CT_NOT_ISOLATED or 0) record the
 * verdict for the cache; fields are written only when they change, so a
 * busy flow does not dirty its entry. A created entry's reply_gen is
 * reply_gen: the generation at which the caller found that the flow's
 * replies would pass (0: none), so that its first reply takes the fast
 * path too. A packet that opens a connection (opens: a TCP SYN) writes a
 * new entry without looking for one: a live entry of its tuple belongs to
 * a connection the SYN starts again, and policy has just allowed it. */
static __always_inline int zt_ct_upsert(const struct zt_config *cfg, __u32 ifindex, __u8 dir,
					const struct zt_flow *f, __u32 rule_id, __u64 now,
					__u64 verified_gen, __u32 verdict, __u64 reply_gen, int opens)
{
	struct zt_ct_key k;
	struct zt_ct_val *v, nv = {};

	zt_ct_key_fwd(&k, ifindex, dir, f);
	if (!opens) {
		v = bpf_map_lookup_elem(&conntrack, &k);
		if (v && zt_ct_live(cfg, v, now) && !(v->flags & ZT_CT_REVOKED)) {
			zt_ct_refresh(v, rule_id, now, verified_gen, verdict);
			return 0;
		}
	}
	nv.last_seen_ns = now;
	nv.rule_id = rule_id;
	nv.flags = verdict;
	nv.verified_gen = verified_gen;
	nv.reply_gen = reply_gen;
	bpf_map_update_elem(&conntrack, &k, &nv, BPF_ANY);
	return 1;
}

/* Policy drops this forward packet: mark its flow revoked (see zt_abi.h,
 * "Revoked flows"), so neither direction passes as a reply any more. */
static __always_inline void zt_ct_revoke(__u32 ifindex, __u8 dir, const struct zt_flow *f)
{
	struct zt_ct_key k;
	struct zt_ct_val *v;

	zt_ct_key_fwd(&k, ifindex, dir, f);
	v = bpf_map_lookup_elem(&conntrack, &k);
	if (v)
		v->flags |= ZT_CT_REVOKED;
}

#endif
