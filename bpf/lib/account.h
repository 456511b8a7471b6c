/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Exact counters and rate-bounded flow events. */
#ifndef ZT_LIB_ACCOUNT_H
#define ZT_LIB_ACCOUNT_H

#include "common.h"
#include "maps.h"

#define ZT_NSEC 1000000000ULL
/* Refill is computed from at most this much idle time, so that
 * elapsed * rate cannot overflow (rate is capped at 1e6/s by userspace). */
#define ZT_BUCKET_MAX_IDLE_NS (1000ULL * ZT_NSEC)

static __always_inline void zt_count(__u8 dir, __u8 verdict, __u8 reason, __u32 len)
{
	__u32 idx = ZT_CTR_IDX(dir, verdict, reason);
	struct zt_counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline struct zt_config *zt_config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

/* Per-CPU token bucket: returns 1 if an event may be emitted now. */
static __always_inline int zt_bucket_take(const struct zt_config *cfg, __u64 now)
{
	__u32 zero = 0;
	struct zt_bucket *b;
	__u64 cap, elapsed, tokens;

	if (!cfg || !cfg->ev_rate || !cfg->ev_burst)
		return 0;
	b = bpf_map_lookup_elem(&ev_bucket, &zero);
	if (!b)
		return 0;
	cap = (__u64)cfg->ev_burst * ZT_NSEC;
	elapsed = now - b->last_ns;
	if (b->last_ns == 0 || elapsed > ZT_BUCKET_MAX_IDLE_NS)
		elapsed = ZT_BUCKET_MAX_IDLE_NS;
	tokens = b->tokens_ns + elapsed * cfg->ev_rate;
	if (tokens > cap)
		tokens = cap;
	b->last_ns = now;
	if (tokens < ZT_NSEC) {
		b->tokens_ns = tokens;
		return 0;
	}
	b->tokens_ns = tokens - ZT_NSEC;
	return 1;
}

struct zt_verdict_info {
	__u32 ep_id;
	__u32 ifindex;
	__u32 peer_id;
	__u32 peer_cidr_id; /* the prefix identity of the peer's address, 0: none */
	__u32 rule_id;
	__u8 dir;
	__u8 verdict;
	__u8 reason;
	__u8 hook;
};

/* Not inlined: keeps struct zt_flow_event in the object's BTF for bpf2go. */
static __noinline void zt_event_fill(struct zt_flow_event *e, const struct zt_flow *f,
				     const struct zt_verdict_info *v, __u64 now)
{
	e->ts_ns = now;
	e->ep_id = v->ep_id;
	e->ifindex = v->ifindex;
	e->peer_id = v->peer_id;
	e->rule_id = v->rule_id;
	e->family = f->family;
	e->proto = f->proto;
	e->dir = v->dir;
	e->reason = v->reason;
	e->verdict = v->verdict;
	e->tcp_flags = f->tcp_flags;
	e->hook = v->hook;
	e->pad = 0;
	e->sport = f->sport;
	e->dport = f->dport;
	zt_addr_copy(e->saddr, f->saddr);
	zt_addr_copy(e->daddr, f->daddr);
	e->len = f->len;
}

/* Emit one flow event, or count why it was not emitted. */
static __always_inline void zt_emit(const struct zt_config *cfg, const struct zt_flow *f,
				    const struct zt_verdict_info *v)
{
	struct zt_flow_event *e;
	__u64 now = bpf_ktime_get_ns();

	if (!zt_bucket_take(cfg, now)) {
		zt_count(v->dir, v->verdict, ZT_REASON_EV_RATELIMITED, f->len);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		zt_count(v->dir, v->verdict, ZT_REASON_EV_LOST, f->len);
		return;
	}
	zt_event_fill(e, f, v, now);
	bpf_ringbuf_submit(e, 0);
}

#endif
