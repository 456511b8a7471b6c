package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Typed access to the maps. pkg/mapsync is the only writer in the agent;
// these methods are the primitive operations it composes. Every write to
// ipcache, endpoints, policy or config ends by moving the policy
// generation on (changed), so no cached verdict outlives it.

// ipcacheMap is the map a key lives in: ipcache for a host address,
// ipcidr for any shorter prefix.
func (d *Datapath) ipcacheMap(k *IPCacheKey) (*ebpf.Map, string) {
	if k.IsHost() {
		return d.tc.Ipcache, "ipcache"
	}
	return d.tc.Ipcidr, "ipcidr"
}

// IPCachePut maps prefix to identity.
func (d *Datapath) IPCachePut(p netip.Prefix, v IPCacheVal) error {
	k, err := IPCacheKeyFor(p)
	if err != nil {
		return err
	}
	m, name := d.ipcacheMap(&k)
	if err := m.Put(&k, &v); err != nil {
		return d.changed(mapErr(name, err))
	}
	return d.changed(nil)
}

// IPCacheDelete removes prefix; a missing prefix is not an error.
func (d *Datapath) IPCacheDelete(p netip.Prefix) error {
	k, err := IPCacheKeyFor(p)
	if err != nil {
		return err
	}
	m, name := d.ipcacheMap(&k)
	return d.changed(deleteIgnoreMissing(m, name, &k))
}

// IPCacheList dumps the ipcache: host addresses and shorter prefixes.
func (d *Datapath) IPCacheList() (map[netip.Prefix]IPCacheVal, error) {
	out := map[netip.Prefix]IPCacheVal{}
	for _, m := range []*ebpf.Map{d.tc.Ipcache, d.tc.Ipcidr} {
		var k IPCacheKey
		var v IPCacheVal
		it := m.Iterate()
		for it.Next(&k, &v) {
			out[k.Prefix()] = v
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("iterate ipcache: %w", err)
		}
	}
	return out, nil
}

// IPCachePutBatch writes many prefixes, in batch syscalls where the
// kernel supports them and in a loop otherwise.
func (d *Datapath) IPCachePutBatch(entries map[netip.Prefix]IPCacheVal) error {
	keys := make([]IPCacheKey, 0, len(entries))
	vals := make([]IPCacheVal, 0, len(entries))
	for p, v := range entries {
		k, err := IPCacheKeyFor(p)
		if err != nil {
			return err
		}
		keys = append(keys, k)
		vals = append(vals, v)
	}
	_, err := d.IPCachePutMany(keys, vals)
	return err
}

// EndpointPut sets the endpoint behind host ifindex.
func (d *Datapath) EndpointPut(ifindex uint32, ep Endpoint) error {
	if int(ep.NrIps) > MaxEndpointIPs {
		return fmt.Errorf("endpoint %d: %d addresses, at most %d", ep.EpId, ep.NrIps, MaxEndpointIPs)
	}
	if err := d.tc.Endpoints.Put(&ifindex, &ep); err != nil {
		return d.changed(mapErr("endpoints", err))
	}
	return d.changed(nil)
}

// EndpointDelete removes the endpoint behind ifindex. Its traffic then
// passes with reason no-endpoint until the programs are detached.
func (d *Datapath) EndpointDelete(ifindex uint32) error {
	return d.changed(deleteIgnoreMissing(d.tc.Endpoints, "endpoints", &ifindex))
}

// EndpointList dumps the endpoints map keyed by host ifindex.
func (d *Datapath) EndpointList() (map[uint32]Endpoint, error) {
	out := map[uint32]Endpoint{}
	var k uint32
	var v Endpoint
	it := d.tc.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate endpoints: %w", err)
	}
	return out, nil
}

// EndpointPutBatch writes many endpoints with one batch syscall.
func (d *Datapath) EndpointPutBatch(eps map[uint32]Endpoint) error {
	keys := make([]uint32, 0, len(eps))
	vals := make([]Endpoint, 0, len(eps))
	for k, v := range eps {
		keys = append(keys, k)
		vals = append(vals, v)
	}
	return d.changed(putBatch(d.tc.Endpoints, "endpoints", keys, vals))
}

// PolicyPut writes one policy entry (see PolicyKeys).
func (d *Datapath) PolicyPut(k PolicyKey, v PolicyVal) error {
	if err := d.addPolicyMask([]PolicyKey{k}); err != nil {
		return err
	}
	if err := d.tc.Policy.Put(&k, &v); err != nil {
		return d.changed(mapErr("policy", err))
	}
	return d.changed(nil)
}

// PolicyDelete removes one policy entry; a missing key is not an error.
func (d *Datapath) PolicyDelete(k PolicyKey) error {
	return d.changed(deleteIgnoreMissing(d.tc.Policy, "policy", &k))
}

// PolicyPutRule writes every key of r with value v, in one call.
func (d *Datapath) PolicyPutRule(r PortRule, v PolicyVal) error {
	keys, err := PolicyKeys(r)
	if err != nil {
		return err
	}
	_, err = d.PolicyPutMany(keys, slices.Repeat([]PolicyVal{v}, len(keys)))
	return err
}

// PolicyDeleteRule removes every key of r, in one call.
func (d *Datapath) PolicyDeleteRule(r PortRule) error {
	keys, err := PolicyKeys(r)
	if err != nil {
		return err
	}
	_, err = d.PolicyDeleteMany(keys)
	return err
}

// PolicyList dumps the policy map.
func (d *Datapath) PolicyList() (map[PolicyKey]PolicyVal, error) {
	out := map[PolicyKey]PolicyVal{}
	var k PolicyKey
	var v PolicyVal
	it := d.tc.Policy.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate policy: %w", err)
	}
	return out, nil
}

// PolicyPutBatch writes many policy entries.
func (d *Datapath) PolicyPutBatch(entries map[PolicyKey]PolicyVal) error {
	keys := make([]PolicyKey, 0, len(entries))
	vals := make([]PolicyVal, 0, len(entries))
	for k, v := range entries {
		keys = append(keys, k)
		vals = append(vals, v)
	}
	_, err := d.PolicyPutMany(keys, vals)
	return err
}

// NetnsPut registers a network namespace cookie for the socket hooks.
func (d *Datapath) NetnsPut(cookie uint64, v NetnsVal) error {
	if err := d.tc.Netns.Put(&cookie, &v); err != nil {
		return mapErr("netns", err)
	}
	return nil
}

// NetnsDelete forgets a network namespace cookie.
func (d *Datapath) NetnsDelete(cookie uint64) error {
	return deleteIgnoreMissing(d.tc.Netns, "netns", &cookie)
}

// NetnsList dumps the netns map.
func (d *Datapath) NetnsList() (map[uint64]NetnsVal, error) {
	out := map[uint64]NetnsVal{}
	var k uint64
	var v NetnsVal
	it := d.tc.Netns.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate netns: %w", err)
	}
	return out, nil
}

// ConntrackFlushEndpoint deletes every conntrack entry of the endpoint
// behind host interface ifindex (conntrack's key), for when the endpoint
// goes away and the interface index may be reused.
func (d *Datapath) ConntrackFlushEndpoint(ifindex uint32) (int, error) {
	var keys []CTKey
	var k CTKey
	var v CTVal
	it := d.tc.Conntrack.Iterate()
	for it.Next(&k, &v) {
		if k.Ifindex == ifindex {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate conntrack: %w", err)
	}
	n := 0
	for i := range keys {
		if err := deleteIgnoreMissing(d.tc.Conntrack, "conntrack", &keys[i]); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// CounterEntry is one summed counter slot.
type CounterEntry struct {
	Dir     Dir
	Verdict Verdict
	Reason  Reason
	Packets uint64
	Bytes   uint64
}

// counterIndex mirrors ZT_CTR_IDX from zt_abi.h using generated constants.
func counterIndex(d Dir, v Verdict, r Reason) uint32 {
	return (uint32(d)*uint32(verdictMax)+uint32(v))*uint32(reasonMax) + uint32(r)
}

// Counters reads every counter slot summed over CPUs; zero slots included.
func (d *Datapath) Counters() ([]CounterEntry, error) {
	var out []CounterEntry
	per := make([]Counter, 0)
	for dir := Dir(0); dir < dirMax; dir++ {
		for v := Verdict(0); v < verdictMax; v++ {
			for r := Reason(0); r < reasonMax; r++ {
				idx := counterIndex(dir, v, r)
				if err := d.tc.Counters.Lookup(&idx, &per); err != nil {
					return nil, fmt.Errorf("read counter %d: %w", idx, err)
				}
				e := CounterEntry{Dir: dir, Verdict: v, Reason: r}
				for _, c := range per {
					e.Packets += c.Packets
					e.Bytes += c.Bytes
				}
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// Counter returns one counter slot summed over CPUs.
func (d *Datapath) Counter(dir Dir, v Verdict, r Reason) (Counter, error) {
	var per []Counter
	idx := counterIndex(dir, v, r)
	if err := d.tc.Counters.Lookup(&idx, &per); err != nil {
		return Counter{}, fmt.Errorf("read counter %d: %w", idx, err)
	}
	var c Counter
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
	}
	return c, nil
}

// SetConfig writes the datapath configuration.
func (d *Datapath) SetConfig(c Config) error {
	if c.EvRate > 1_000_000 {
		return fmt.Errorf("event rate %d/s per CPU: at most 1000000", c.EvRate)
	}
	var zero uint32
	if err := d.tc.Config.Put(&zero, &c); err != nil {
		return d.changed(mapErr("config", err))
	}
	// svc_mark decides which packets tc leaves to the netfilter program:
	// no verdict cached before a change may be taken after it.
	return d.changed(nil)
}

// Config reads the datapath configuration.
func (d *Datapath) Config() (Config, error) {
	var zero uint32
	var c Config
	if err := d.tc.Config.Lookup(&zero, &c); err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	return c, nil
}

func deleteIgnoreMissing(m *ebpf.Map, name string, k any) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from %s: %w", name, err)
	}
	return nil
}

// putBatch uses BPF_MAP_UPDATE_BATCH, falling back to one update per entry
// when the map type does not support batches.
func putBatch[K, V any](m *ebpf.Map, name string, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	n, err := m.BatchUpdate(keys, vals, nil)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("batch update (%d of %d written): %w", n, len(keys), mapErr(name, err))
	}
	for i := range keys {
		if err := m.Put(&keys[i], &vals[i]); err != nil {
			return fmt.Errorf("update (%d of %d written): %w", i, len(keys), mapErr(name, err))
		}
	}
	return nil
}
