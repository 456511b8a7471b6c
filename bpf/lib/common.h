/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
#ifndef ZT_LIB_COMMON_H
#define ZT_LIB_COMMON_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "../zt_abi.h"

#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

#define ZT_IPPROTO_ICMP   1
#define ZT_IPPROTO_TCP    6
#define ZT_IPPROTO_UDP    17
#define ZT_IPPROTO_ICMPV6 58
#define ZT_IPPROTO_SCTP   132

/* The parsed view of one packet or socket operation. */
struct zt_flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;      /* conntrack ports (ICMP echo: id, see zt_abi.h) */
	__be16 dport;
	__be16 pol_port;   /* port used for the policy lookup (0 = none) */
	enum zt_family family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 hop_limit;
	__u8 icmp_err;     /* an ICMP error: the packet it answers is at l4_off + 8 */
	__u32 len;
	__u32 l4_off;
};

/* A pointer known to be 4-byte aligned. Clang copies memory of unknown
 * alignment one byte at a time for BPF (a load, a shift and an or per
 * byte); every address in the ABI and in struct zt_flow sits at a 4-byte
 * offset of a 4-byte aligned struct (zt_abi.h asserts the offsets), so
 * copies of them are word copies. */
#define ZT_ALIGNED4(p) __builtin_assume_aligned((p), 4)

_Static_assert(_Alignof(struct zt_flow) >= 4 && __builtin_offsetof(struct zt_flow, saddr) % 4 == 0 &&
		       __builtin_offsetof(struct zt_flow, daddr) % 4 == 0,
	       "zt_flow addresses are 4-byte aligned");

static __always_inline void zt_addr_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(ZT_ALIGNED4(dst), ZT_ALIGNED4(src), 16);
}

static __always_inline int zt_addr_eq(const __u8 *a, const __u8 *b)
{
	/* Every address in the ABI is 4-byte aligned. */
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

#endif
