// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/* tc (tcx) programs on a pod's host-side veth.
 *
 *   zt_from_pod: tcx ingress of the host veth = traffic leaving the pod
 *                (ZT_DIR_EGRESS, peer = destination, anti-spoofing).
 *   zt_to_pod:   tcx egress of the host veth = traffic entering the pod
 *                (ZT_DIR_INGRESS, peer = source).
 *
 * Both return TC_ACT_UNSPEC (tcx: next program) to pass, so they compose
 * with whatever else is attached, and TC_ACT_SHOT to drop.
 */
#include <linux/pkt_cls.h>

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/account.h"
#include "lib/lookup.h"
#include "lib/parse.h"
#include "lib/ct.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Is addr (of family) one of the endpoint's addresses? */
static __always_inline int zt_addr_is_endpoint(const struct zt_endpoint *ep, __u8 family,
					       const __u8 *addr)
{
	__u8 n = ep->nr_ips;

#pragma unroll
	for (int i = 0; i < ZT_MAX_IPS; i++) {
		if (i >= n)
			break;
		if (ep->ips[i].family == family && zt_addr_eq(ep->ips[i].addr, addr))
			return 1;
	}
	return 0;
}

/* Anti-spoofing: is the packet's source one of the endpoint's addresses? */
static __always_inline int zt_ip_is_endpoint(const struct zt_endpoint *ep, const struct zt_flow *f)
{
	return zt_addr_is_endpoint(ep, f->family, f->saddr);
}

static __always_inline int zt_finish(struct zt_config *cfg, struct zt_flow *f,
				     struct zt_verdict_info *v, int emit)
{
	zt_count(v->dir, v->verdict, v->reason, f->len);
	if (emit)
		zt_emit(cfg, f, v);
	return v->verdict == ZT_VERDICT_DROP ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

/* What the fast path hands zt_slow. */
struct zt_pre {
	__u64 gen;      /* the policy generation, read (ordered) before the endpoint */
	__u8 dir;
	__u8 parse;     /* zt_parse's result */
	__u8 fwd_tried; /* its forward entry was looked up: none passes it */
	__u8 no_rev;    /* its reverse entry was looked up: there is none */
	__u8 pad[4];
};

/* Everything but the fast path (zt_handle): the packet as parsed (pre->parse
 * is zt_parse's result), with what the fast path already looked up. Not
 * inlined, so that the fast path's instructions stay together, and global,
 * so that the verifier checks it once, with its arguments as their types
 * say, rather than once for every way the fast path can end. */
__noinline int zt_slow(struct __sk_buff *skb, struct zt_endpoint *ep, struct zt_flow *fp,
		       const struct zt_pre *pre)
{
	struct zt_verdict_info v = { .hook = ZT_HOOK_TC };
	struct zt_config *cfg;
	struct zt_flow f;
	__u32 isolated_flag, ifindex;
	__u64 now, gen;
	int rc, created;
	__u8 dir;

	if (!skb || !ep || !fp || !pre)
		return TC_ACT_SHOT; /* never: zt_handle passes all of them */
	dir = pre->dir;
	gen = pre->gen;
	ifindex = skb->ifindex;
	f = *fp;
	v.ifindex = skb->ifindex;
	v.dir = dir;
	v.ep_id = ep->ep_id;
	cfg = zt_config_get();
	isolated_flag = dir == ZT_DIR_INGRESS ? ZT_EP_INGRESS_ISOLATED : ZT_EP_EGRESS_ISOLATED;

	rc = pre->parse;
	switch (rc) {
	case ZT_PARSE_OK:
		break;
	case ZT_PARSE_ARP:
		v.reason = ZT_REASON_LINK_LOCAL;
		return zt_finish(cfg, &f, &v, 0);
	case ZT_PARSE_MALFORMED:
		v.verdict = ZT_VERDICT_DROP;
		v.reason = ZT_REASON_MALFORMED;
		return zt_finish(cfg, &f, &v, 1);
	default:
		/* Non-IP, non-ARP frames: pods speak IP. Leaving the pod they
		 * are always dropped (no source to check); entering, only when
		 * ingress is isolated. */
		v.reason = ZT_REASON_UNSUPPORTED;
		if (dir == ZT_DIR_EGRESS || (ep->flags & isolated_flag))
			v.verdict = ZT_VERDICT_DROP;
		return zt_finish(cfg, &f, &v, v.verdict == ZT_VERDICT_DROP);
	}

	/* Neighbour discovery / MLD: link-local control, never policy. Leaving
	 * the pod it must come from a link-local or unspecified source or from
	 * one of the pod's IPs. */
	if (zt_is_ipv6_link_control(&f) &&
	    (dir == ZT_DIR_INGRESS || zt_is_ipv6_ll_or_unspec(f.saddr) || zt_ip_is_endpoint(ep, &f))) {
		v.reason = ZT_REASON_LINK_LOCAL;
		return zt_finish(cfg, &f, &v, 0);
	}

	if (dir == ZT_DIR_EGRESS && !zt_ip_is_endpoint(ep, &f)) {
		v.verdict = ZT_VERDICT_DROP;
		v.reason = ZT_REASON_SPOOFED;
		return zt_finish(cfg, &f, &v, 1);
	}

	now = zt_ct_now();
	struct zt_ct_val *cached = NULL, *fwd = NULL;
	int fwd_seen = 0;

	/* (0) a likely forward packet of an established flow whose entry
	 * passes it whatever the reverse entry says (zt_ct_fwd_live): one
	 * conntrack lookup instead of two. Only a verdict verified at the
	 * current generation is taken, as in (3); the generation also moves
	 * on with any config change, so a flow verified before Service
	 * egress was deferred to the NAT (2) is decided again. */
	if (pre->fwd_tried) {
		fwd_seen = 1; /* the fast path found no entry that passes it */
	} else if (zt_ct_likely_fwd(&f)) {
		fwd_seen = 1;
		fwd = zt_ct_fwd_live(cfg, ifindex, dir, &f, now);
	}
	if (fwd) {
		if (!(ep->flags & isolated_flag)) {
			v.reason = ZT_REASON_NOT_ISOLATED;
			goto pass;
		}
		if (gen && fwd->verified_gen == gen && !(fwd->flags & ZT_CT_NOT_ISOLATED)) {
			v.reason = zt_ct_reason(fwd);
			v.rule_id = fwd->rule_id;
			cached = fwd;
			goto pass;
		}
		fwd = NULL;
	}

	/* (1) reply of a flow allowed earlier at this endpoint, or an ICMP
	 * error about one; the reply of a flow policy cut since is cut too */
	rc = pre->no_rev ? ZT_CT_IS_NONE : zt_ct_is_reply(cfg, ifindex, dir, &f, now, gen, &v.rule_id);
	if (rc == ZT_CT_IS_REVOKED) {
		v.peer_id = zt_identity(f.family, dir == ZT_DIR_INGRESS ? f.saddr : f.daddr);
		zt_deny(ep, &v, ZT_REASON_POLICY_DENIED);
		return zt_finish(cfg, &f, &v, 1);
	}
	if (rc == ZT_CT_IS_REPLY || zt_ct_is_related(cfg, ifindex, dir, skb, &f, now)) {
		v.rule_id = 0;
		v.reason = ZT_REASON_REPLY;
		return zt_finish(cfg, &f, &v, 0);
	}

	/* (2) egress to a Service address: decided after the NAT, by
	 * zt_nf_service (see zt_abi.h, "Service egress"); not counted here */
	if (dir == ZT_DIR_EGRESS && (ep->flags & ZT_EP_EGRESS_ISOLATED) && cfg && cfg->svc_mark &&
	    !f.icmp_err && zt_svc_proto(f.proto) && zt_is_service(f.family, f.daddr)) {
		struct zt_ct_key pk;
		__u32 *pend;

		zt_ct_key_fwd(&pk, 0, ZT_DIR_EGRESS, &f);
		pend = bpf_map_lookup_elem(&svcpend, &pk);
		if (!pend || *pend != ifindex)
			bpf_map_update_elem(&svcpend, &pk, &ifindex, BPF_ANY);
		skb->mark |= cfg->svc_mark;
		return TC_ACT_UNSPEC;
	}

	/* (3) forward packet: verify against current policy, every packet.
	 * The peer's identity (ipcache lookups) is needed only by an
	 * isolated direction, or by an event. An established flow whose
	 * verdict was taken at the current policy generation takes it again
	 * without the lookups (zt_abi.h, "Verdict cache"). */
	if (!(ep->flags & isolated_flag)) {
		v.reason = ZT_REASON_NOT_ISOLATED;
	} else if (!fwd_seen /* else (0) found no verified entry */ &&
		   !zt_tcp_syn(&f) /* opens a connection: decided anew, its entry written anew */ &&
		   (cached = zt_ct_verified(cfg, ifindex, dir, &f, now, gen))) {
		v.reason = zt_ct_reason(cached);
		v.rule_id = cached->rule_id;
	} else {
		zt_set_peer(&v, f.family, dir == ZT_DIR_INGRESS ? f.saddr : f.daddr);
		if (dir == ZT_DIR_INGRESS && v.peer_id == ZT_ID_HOST &&
		    (ep->flags & ZT_EP_ALLOW_HOST)) {
			v.reason = ZT_REASON_HOST;
		} else {
			zt_policy_verdict(ep, f.proto, f.pol_port, &v);
		}
	}

	if (v.verdict == ZT_VERDICT_DROP) {
		/* continuous verification: a revoked allow cuts the live flow,
		 * both ways */
		zt_ct_revoke(ifindex, dir, &f);
		return zt_finish(cfg, &f, &v, 1);
	}

pass:
	/* Allowed (or audited): track it so replies pass the other direction's
	 * isolation. Audited flows are tracked too, so only the first
	 * offending direction reports; only allows are cached. */
	if (cached) {
		zt_ct_touch(cached, now);
		created = 0;
	} else if (fwd) {
		/* (0) in a direction that is not isolated: as zt_ct_upsert does
		 * with a live entry */
		zt_ct_refresh(fwd, 0, now, gen, ZT_CT_NOT_ISOLATED);
		created = 0;
	} else {
		int verified = v.verdict == ZT_VERDICT_ALLOW;
		/* Its replies pass as the fast path's endpoint step would pass
		 * them (zt_handle): entering the pod always, leaving it from
		 * one of its addresses (anti-spoofing). The endpoint was read
		 * after gen, so the stamp holds for it as theirs would. */
		__u64 reply_gen = dir == ZT_DIR_EGRESS || zt_addr_is_endpoint(ep, f.family, f.daddr) ?
					  gen : 0;

		created = zt_ct_upsert(cfg, ifindex, dir, &f, v.rule_id, now, verified ? gen : 0,
				       verified ? zt_ct_how(v.reason) : 0, reply_gen, zt_tcp_syn(&f));
	}
	if (v.verdict == ZT_VERDICT_AUDIT)
		return zt_finish(cfg, &f, &v, 1);
	if (cfg && (cfg->flags & ZT_CFG_EVENTS_ALLOWED)) {
		int new_conn = f.proto == ZT_IPPROTO_TCP ? zt_tcp_syn(&f) : created;
		if (new_conn && (v.reason == ZT_REASON_NOT_ISOLATED || cached))
			v.peer_id = zt_identity(f.family, dir == ZT_DIR_INGRESS ? f.saddr : f.daddr);
		return zt_finish(cfg, &f, &v, new_conn);
	}
	return zt_finish(cfg, &f, &v, 0);
}

/* The fast path: a TCP, UDP or SCTP packet of an established flow, passed
 * by one conntrack lookup while the policy generation holds, without its
 * endpoint (zt_abi.h, "Fast path"): a likely forward packet whose forward
 * entry's verdict was verified at the current generation, any other but a
 * TCP SYN whose reverse entry passed a reply at it. Both entries must be
 * live and unrevoked. Otherwise its endpoint is looked up, after the
 * generation is read with an ordered read: a live entry in a direction
 * that is not isolated, or a reply, passes here and is stamped with that
 * generation; every other packet goes to zt_slow, with what was looked up
 * here, so that no lookup is made twice. These packets emit no event. */
static __always_inline int zt_handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 isolated_flag = dir == ZT_DIR_INGRESS ? ZT_EP_INGRESS_ISOLATED : ZT_EP_EGRESS_ISOLATED;
	struct zt_ct_val *fwd = NULL, *rev = NULL;
	struct zt_pre pre = { .dir = dir };
	__u32 ifindex = skb->ifindex;
	struct zt_flow f = {};
	struct zt_endpoint *ep;
	struct zt_config *cfg;
	__u64 now = 0;
	int live = 0; /* fwd or rev is a live, unrevoked entry */

	pre.parse = zt_parse(skb, &f);
	if (pre.parse == ZT_PARSE_OK &&
	    (f.proto == ZT_IPPROTO_TCP || f.proto == ZT_IPPROTO_UDP || f.proto == ZT_IPPROTO_SCTP)) {
		__u64 gen = zt_polgen();

		cfg = zt_config_get();
		now = zt_ct_now();
		if (zt_ct_likely_fwd(&f)) {
			pre.fwd_tried = 1;
			fwd = zt_ct_fwd_live(cfg, ifindex, dir, &f, now);
			live = fwd != NULL;
			if (fwd && gen && fwd->verified_gen == gen) {
				zt_ct_touch(fwd, now);
				zt_count(dir, ZT_VERDICT_ALLOW, zt_ct_reason(fwd), f.len);
				return TC_ACT_UNSPEC;
			}
		} else if (!zt_tcp_syn(&f)) {
			rev = zt_ct_rev_get(ifindex, dir, &f);
			if (!rev) {
				pre.no_rev = 1;
			} else if ((rev->flags & ZT_CT_REVOKED) || !zt_ct_live(cfg, rev, now)) {
				rev = NULL; /* zt_slow decides (and looks it up again) */
			} else if (gen && rev->reply_gen == gen) {
				zt_ct_touch(rev, now);
				zt_count(dir, ZT_VERDICT_ALLOW, ZT_REASON_REPLY, f.len);
				return TC_ACT_UNSPEC;
			} else {
				live = 1;
			}
		}
	}

	/* Read before the endpoint, so that whatever is stamped with it was
	 * decided on maps at least as new (zt_abi.h, "Verdict cache"). */
	pre.gen = zt_polgen_ordered();
	ep = zt_endpoint_get(ifindex);
	if (!ep) {
		zt_count(dir, ZT_VERDICT_ALLOW, ZT_REASON_NO_ENDPOINT, skb->len);
		return TC_ACT_UNSPEC;
	}
	if (live && (dir == ZT_DIR_INGRESS || zt_ip_is_endpoint(ep, &f))) {
		if (fwd && !(ep->flags & isolated_flag)) {
			zt_ct_refresh(fwd, 0, now, pre.gen, ZT_CT_NOT_ISOLATED);
			zt_count(dir, ZT_VERDICT_ALLOW, ZT_REASON_NOT_ISOLATED, f.len);
			return TC_ACT_UNSPEC;
		}
		if (rev) {
			zt_ct_touch(rev, now);
			if (rev->reply_gen != pre.gen)
				rev->reply_gen = pre.gen;
			zt_count(dir, ZT_VERDICT_ALLOW, ZT_REASON_REPLY, f.len);
			return TC_ACT_UNSPEC;
		}
	}
	return zt_slow(skb, ep, &f, &pre);
}

SEC("tc")
int zt_from_pod(struct __sk_buff *skb)
{
	return zt_handle(skb, ZT_DIR_EGRESS);
}

SEC("tc")
int zt_to_pod(struct __sk_buff *skb)
{
	return zt_handle(skb, ZT_DIR_INGRESS);
}
