/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Map definitions shared by zt_tc.c and zt_sock.c. Both objects declare the
 * same maps; the loader hands the tc object's maps to the sock object. */
#ifndef ZT_LIB_MAPS_H
#define ZT_LIB_MAPS_H

#include "common.h"

/* Host addresses (/32, /128): an exact-match hash, preallocated so that a
 * full load writes it at hash speed. Shorter prefixes live in ipcidr. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZT_IPCACHE_MAX);
	__type(key, struct zt_ipcache_key);
	__type(value, struct zt_ipcache_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, ZT_IPCACHE_MAX);
	__type(key, struct zt_ipcache_key);
	__type(value, struct zt_ipcache_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZT_ENDPOINTS_MAX);
	__type(key, __u32);
	__type(value, struct zt_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Exact keys, one probe per prefix length polmask names (lib/lookup.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZT_POLICY_MAX);
	__type(key, struct zt_policy_key);
	__type(value, struct zt_policy_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct zt_polmask);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} polmask SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ZT_CT_MAX);
	__type(key, struct zt_ct_key);
	__type(value, struct zt_ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ZT_COUNTERS_MAX);
	__type(key, __u32);
	__type(value, struct zt_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, ZT_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct zt_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZT_NETNS_MAX);
	__type(key, __u64);
	__type(value, struct zt_netns_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct zt_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ev_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, ZT_SVCNETS_MAX);
	__type(key, struct zt_ipcache_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svcnets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, ZT_SVCPEND_MAX);
	__type(key, struct zt_ct_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svcpend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} polgen SEC(".maps");

#endif
