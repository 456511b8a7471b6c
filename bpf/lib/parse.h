/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Header parsing: headers in the linear part of the skb (the usual case) are
 * read directly from the packet; anything beyond it goes through
 * bpf_skb_load_bytes, so non-linear skbs parse the same. */
#ifndef ZT_LIB_PARSE_H
#define ZT_LIB_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "common.h"

enum zt_parse {
	ZT_PARSE_OK = 0,
	ZT_PARSE_ARP,
	ZT_PARSE_MALFORMED,
	ZT_PARSE_UNSUPPORTED,
};

/* Copy len bytes at off into to (4-byte aligned), like bpf_skb_load_bytes:
 * directly from the linear data when they are in it (no helper call),
 * otherwise with the helper. len is a compile-time constant. (The rare IPv6
 * extension headers keep the helper: the loop is unrolled and inlining the
 * copy there would grow the program by half.)
 *
 * Headers are read a word at a time, as aligned: the IP header and the
 * headers after it start on a 4-byte boundary where the CPU needs it (the
 * stack's NET_IP_ALIGN; the verifier checks every such access on those
 * architectures and refuses the program if it cannot prove it), and where
 * it does not (x86, arm64) the unaligned loads cost what aligned ones do. */
static __always_inline int zt_load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	/* bounds the variable offset for the verifier: it tracks packet
	 * ranges only while offset + len stays within 0xffff */
	if (off <= 0xffff - len) {
		__u8 *p = (__u8 *)data + off;

		if ((void *)(p + len) <= data_end) {
			__builtin_memcpy(ZT_ALIGNED4(to), ZT_ALIGNED4(p), len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* IPv6 extension headers skipped before giving up with UNSUPPORTED. */
#define ZT_IPV6_MAX_EXT 6

#define ZT_NEXTHDR_HOP      0
#define ZT_NEXTHDR_ROUTING  43
#define ZT_NEXTHDR_FRAGMENT 44
#define ZT_NEXTHDR_AH       51
#define ZT_NEXTHDR_DEST     60

/* Fill ports (and TCP flags / ICMP type) from the L4 header at off.
 * first_frag is 0 for a non-first fragment: it carries no L4 header, so its
 * ports stay 0 and it only matches rules without a port (any-port rules). */
static __always_inline int zt_parse_l4(struct __sk_buff *skb, __u32 off, struct zt_flow *f,
				       int first_frag)
{
	__u8 buf[8] __attribute__((aligned(4)));
	__u32 min;

	if (!first_frag)
		return ZT_PARSE_OK;

	/* the fixed header each needs; all of them start with 8 bytes */
	switch (f->proto) {
	case ZT_IPPROTO_TCP:
		min = 20;
		break;
	case ZT_IPPROTO_SCTP:
		min = 12; /* sport, dport, vtag, checksum */
		break;
	case ZT_IPPROTO_UDP:
	case ZT_IPPROTO_ICMP:
	case ZT_IPPROTO_ICMPV6:
		min = 8;
		break;
	default:
		return ZT_PARSE_OK; /* other protocols: no ports */
	}
	if (off + min > skb->len || zt_load(skb, off, buf, 8))
		return ZT_PARSE_MALFORMED;

	if (f->proto == ZT_IPPROTO_ICMP || f->proto == ZT_IPPROTO_ICMPV6) {
		f->icmp_type = buf[0];
		f->l4_off = off;
		/* Destination unreachable (fragmentation needed among them),
		 * time exceeded, parameter problem; ICMPv6 adds packet too big. */
		if (f->proto == ZT_IPPROTO_ICMP)
			f->icmp_err = buf[0] == 3 || buf[0] == 11 || buf[0] == 12;
		else
			f->icmp_err = buf[0] >= 1 && buf[0] <= 4;
		/* echo request: (id, 0); echo reply: (0, id); see zt_abi.h */
		if ((f->proto == ZT_IPPROTO_ICMP && buf[0] == 8) ||
		    (f->proto == ZT_IPPROTO_ICMPV6 && buf[0] == 128)) {
			__builtin_memcpy(&f->sport, &buf[4], 2);
		} else if ((f->proto == ZT_IPPROTO_ICMP && buf[0] == 0) ||
			   (f->proto == ZT_IPPROTO_ICMPV6 && buf[0] == 129)) {
			__builtin_memcpy(&f->dport, &buf[4], 2);
		}
		return ZT_PARSE_OK; /* no policy port */
	}
	if (f->proto == ZT_IPPROTO_TCP) {
		/* data offset, flags (byte 13), window */
		__u8 fl[4] __attribute__((aligned(4)));

		if (zt_load(skb, off + 12, fl, 4))
			return ZT_PARSE_MALFORMED;
		f->tcp_flags = fl[1];
	}
	__builtin_memcpy(&f->sport, &buf[0], 2);
	__builtin_memcpy(&f->dport, &buf[2], 2);
	f->pol_port = f->dport;
	return ZT_PARSE_OK;
}

/* The IPv4 header: fills f, sets *off to the L4 header and *first_frag. */
static __always_inline int zt_parse_ipv4(struct __sk_buff *skb, struct zt_flow *f, __u32 *off,
					 int *first_frag)
{
	struct iphdr ip;
	__u32 ihl;

	if (zt_load(skb, ETH_HLEN, &ip, sizeof(ip)))
		return ZT_PARSE_MALFORMED;
	ihl = ip.ihl * 4;
	if (ip.version != 4 || ihl < sizeof(ip) || ETH_HLEN + ihl > skb->len)
		return ZT_PARSE_MALFORMED;
	f->family = ZT_AF_INET;
	f->proto = ip.protocol;
	f->hop_limit = ip.ttl;
	__builtin_memcpy(ZT_ALIGNED4(f->saddr), &ip.saddr, 4);
	__builtin_memcpy(ZT_ALIGNED4(f->daddr), &ip.daddr, 4);
	*off = ETH_HLEN + ihl;
	*first_frag = (bpf_ntohs(ip.frag_off) & 0x1fff) == 0;
	return ZT_PARSE_OK;
}

static __always_inline int zt_ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == ZT_NEXTHDR_HOP || nexthdr == ZT_NEXTHDR_ROUTING ||
	       nexthdr == ZT_NEXTHDR_DEST || nexthdr == ZT_NEXTHDR_AH ||
	       nexthdr == ZT_NEXTHDR_FRAGMENT;
}

/* Skip the IPv6 extension headers from *off (*nexthdr is the first): on
 * return they name the header after them. Rare, so not inlined: the fast
 * path's instructions stay together. */
static __noinline int zt_ipv6_skip_ext(struct __sk_buff *skb, __u32 *off, __u8 *nexthdr,
				       int *first_frag)
{
	__u8 nh = *nexthdr, ext[2];
	__u32 o = *off;

#pragma unroll
	for (int i = 0; i < ZT_IPV6_MAX_EXT; i++) {
		switch (nh) {
		case ZT_NEXTHDR_HOP:
		case ZT_NEXTHDR_ROUTING:
		case ZT_NEXTHDR_DEST:
			if (bpf_skb_load_bytes(skb, o, ext, 2))
				return ZT_PARSE_MALFORMED;
			nh = ext[0];
			o += ((__u32)ext[1] + 1) * 8;
			break;
		case ZT_NEXTHDR_AH:
			if (bpf_skb_load_bytes(skb, o, ext, 2))
				return ZT_PARSE_MALFORMED;
			nh = ext[0];
			o += ((__u32)ext[1] + 2) * 4;
			break;
		case ZT_NEXTHDR_FRAGMENT: {
			__u8 fh[4];
			if (bpf_skb_load_bytes(skb, o, fh, 4))
				return ZT_PARSE_MALFORMED;
			nh = fh[0];
			/* fragment offset: top 13 bits of bytes 2..3 */
			if ((((__u16)fh[2] << 8) | fh[3]) & 0xfff8)
				*first_frag = 0;
			o += 8;
			break;
		}
		default:
			goto done;
		}
	}
	/* still an extension header after the bound */
	if (zt_ipv6_is_ext(nh))
		return ZT_PARSE_UNSUPPORTED;
done:
	*off = o;
	*nexthdr = nh;
	return ZT_PARSE_OK;
}

/* The IPv6 header and its extension headers: fills f, sets *off to the L4
 * header and *first_frag. */
static __always_inline int zt_parse_ipv6(struct __sk_buff *skb, struct zt_flow *f, __u32 *off,
					 int *first_frag)
{
	struct ipv6hdr ip6;
	__u8 nexthdr;
	int rc;

	if (zt_load(skb, ETH_HLEN, &ip6, sizeof(ip6)))
		return ZT_PARSE_MALFORMED;
	if (ip6.version != 6)
		return ZT_PARSE_MALFORMED;
	f->family = ZT_AF_INET6;
	f->hop_limit = ip6.hop_limit;
	__builtin_memcpy(ZT_ALIGNED4(f->saddr), &ip6.saddr, 16);
	__builtin_memcpy(ZT_ALIGNED4(f->daddr), &ip6.daddr, 16);
	nexthdr = ip6.nexthdr;
	*off = ETH_HLEN + sizeof(ip6);
	if (zt_ipv6_is_ext(nexthdr)) {
		rc = zt_ipv6_skip_ext(skb, off, &nexthdr, first_frag);
		if (rc != ZT_PARSE_OK)
			return rc;
	}
	if (*off > skb->len)
		return ZT_PARSE_MALFORMED;
	f->proto = nexthdr;
	return ZT_PARSE_OK;
}

static __always_inline int zt_parse(struct __sk_buff *skb, struct zt_flow *f)
{
	int rc, first_frag = 1;
	__u32 off = 0;

	f->len = skb->len;
	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		rc = zt_parse_ipv4(skb, f, &off, &first_frag);
		break;
	case bpf_htons(ETH_P_IPV6):
		rc = zt_parse_ipv6(skb, f, &off, &first_frag);
		break;
	case bpf_htons(ETH_P_ARP):
		return ZT_PARSE_ARP;
	default:
		return ZT_PARSE_UNSUPPORTED;
	}
	if (rc != ZT_PARSE_OK)
		return rc;
	return zt_parse_l4(skb, off, f, first_frag);
}

/* The packet an ICMP error answers, as it was sent (RFC 792, RFC 4443: the
 * error quotes its IP header and at least the first 8 bytes after it):
 * family, protocol, addresses and conntrack ports. Returns 0 when it names a
 * flow conntrack could know (TCP, UDP, SCTP or an echo request, not a
 * later fragment, no IPv6 extension header). */
static __always_inline int zt_parse_icmp_inner(struct __sk_buff *skb, const struct zt_flow *f,
					       struct zt_flow *in)
{
	__u32 off = f->l4_off + 8;
	__u8 l4[8] __attribute__((aligned(4)));

	if (!f->icmp_err)
		return -1;
	in->family = f->family;
	if (f->family == ZT_AF_INET) {
		struct iphdr ip;
		__u32 ihl;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return -1;
		ihl = ip.ihl * 4;
		if (ip.version != 4 || ihl < sizeof(ip) || (bpf_ntohs(ip.frag_off) & 0x1fff))
			return -1;
		in->proto = ip.protocol;
		__builtin_memcpy(ZT_ALIGNED4(in->saddr), &ip.saddr, 4);
		__builtin_memcpy(ZT_ALIGNED4(in->daddr), &ip.daddr, 4);
		off += ihl;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return -1;
		if (ip6.version != 6)
			return -1;
		in->proto = ip6.nexthdr;
		__builtin_memcpy(ZT_ALIGNED4(in->saddr), &ip6.saddr, 16);
		__builtin_memcpy(ZT_ALIGNED4(in->daddr), &ip6.daddr, 16);
		off += sizeof(ip6);
	}
	if (bpf_skb_load_bytes(skb, off, l4, sizeof(l4)))
		return -1;
	switch (in->proto) {
	case ZT_IPPROTO_TCP:
	case ZT_IPPROTO_UDP:
	case ZT_IPPROTO_SCTP:
		__builtin_memcpy(&in->sport, &l4[0], 2);
		__builtin_memcpy(&in->dport, &l4[2], 2);
		return 0;
	case ZT_IPPROTO_ICMP:
	case ZT_IPPROTO_ICMPV6:
		if ((in->proto == ZT_IPPROTO_ICMP) != (f->family == ZT_AF_INET))
			return -1;
		if (l4[0] != (in->proto == ZT_IPPROTO_ICMP ? 8 : 128))
			return -1; /* only an echo request opens a tracked flow */
		__builtin_memcpy(&in->sport, &l4[4], 2);
		return 0;
	}
	return -1;
}

/* IPv6 neighbour discovery (RS 133, RA 134, NS 135, NA 136, redirect 137)
 * with hop limit 255, which RFC 4861 requires and which proves the packet was
 * not routed; MLD (130-132, 143) from a link-local or unspecified source. */
static __always_inline int zt_is_ipv6_link_control(const struct zt_flow *f)
{
	if (f->family != ZT_AF_INET6 || f->proto != ZT_IPPROTO_ICMPV6)
		return 0;
	if (f->icmp_type >= 133 && f->icmp_type <= 137)
		return f->hop_limit == 255;
	if ((f->icmp_type >= 130 && f->icmp_type <= 132) || f->icmp_type == 143) {
		const __u32 *s = (const __u32 *)f->saddr;
		int unspec = !s[0] && !s[1] && !s[2] && !s[3];
		int ll = f->saddr[0] == 0xfe && (f->saddr[1] & 0xc0) == 0x80;
		return unspec || ll;
	}
	return 0;
}

/* Sources allowed on link-control packets without being an endpoint IP:
 * fe80::/10 and :: (DAD). */
static __always_inline int zt_is_ipv6_ll_or_unspec(const __u8 *a)
{
	const __u32 *s = (const __u32 *)a;
	if (!s[0] && !s[1] && !s[2] && !s[3])
		return 1;
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

#endif
