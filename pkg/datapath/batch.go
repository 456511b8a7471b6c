package datapath

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Ordered many-entry writes, for pkg/mapsync: each call writes its entries
// in slice order, with BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH where
// the kernel supports them for the map type (LPM tries have them since
// the generic batch ops) and one syscall per entry otherwise. A batch is
// not atomic: the datapath sees each entry as it is written, exactly as
// with single writes in the same order. On error the count is the number
// of leading entries written (or, for deletes, handled); the entries after
// it are untouched. The ipcache calls split their keys over two maps
// (host addresses, shorter prefixes), each written in order; on error
// their count is the number of entries written.
//
// Writing LPM trie keys in the trie's byte order (CompareIPCacheKeys)
// roughly halves the kernel's cost per insert into ipcidr: the walk from
// the root then stays on nodes the previous insert touched.

// PolicyPutMany writes keys[i] = vals[i] in order, after adding their
// prefix lengths to the policy mask. Every key is checked
// (CheckPolicyKey) before anything is written.
func (d *Datapath) PolicyPutMany(keys []PolicyKey, vals []PolicyVal) (int, error) {
	if err := d.addPolicyMask(keys); err != nil {
		return 0, err
	}
	return d.changedN(updateMany(d.tc.Policy, "policy", keys, vals))
}

// PolicyDeleteMany removes keys in order; missing keys are not an error.
func (d *Datapath) PolicyDeleteMany(keys []PolicyKey) (int, error) {
	return d.changedN(deleteMany(d.tc.Policy, "policy", keys))
}

// IPCachePutMany writes keys[i] = vals[i] (keys from IPCacheKeyFor): host
// addresses to ipcache, then shorter prefixes to ipcidr, each in order.
// On error the count is how many entries were written.
func (d *Datapath) IPCachePutMany(keys []IPCacheKey, vals []IPCacheVal) (int, error) {
	if len(keys) != len(vals) {
		return 0, fmt.Errorf("map ipcache: %d keys, %d values", len(keys), len(vals))
	}
	hk, hv, ck, cv := splitIPCache(keys, vals)
	n, err := updateMany(d.tc.Ipcache, "ipcache", hk, hv)
	if err == nil {
		var m int
		m, err = updateMany(d.tc.Ipcidr, "ipcidr", ck, cv)
		n += m
	}
	return d.changedN(n, err)
}

// IPCacheDeleteMany removes keys, host addresses from ipcache, then
// shorter prefixes from ipcidr, each in order; missing keys are not an
// error.
func (d *Datapath) IPCacheDeleteMany(keys []IPCacheKey) (int, error) {
	hk, _, ck, _ := splitIPCache(keys, []IPCacheVal(nil))
	n, err := deleteMany(d.tc.Ipcache, "ipcache", hk)
	if err == nil {
		var m int
		m, err = deleteMany(d.tc.Ipcidr, "ipcidr", ck)
		n += m
	}
	return d.changedN(n, err)
}

// splitIPCache separates host keys (and their values, when vals is not
// nil) from shorter prefixes, keeping the order of each; when all keys
// are of one kind the slices are returned as they are.
func splitIPCache(keys []IPCacheKey, vals []IPCacheVal) (hk []IPCacheKey, hv []IPCacheVal, ck []IPCacheKey, cv []IPCacheVal) {
	hosts := 0
	for i := range keys {
		if keys[i].IsHost() {
			hosts++
		}
	}
	switch hosts {
	case len(keys):
		return keys, vals, nil, nil
	case 0:
		return nil, nil, keys, vals
	}
	hk, ck = make([]IPCacheKey, 0, hosts), make([]IPCacheKey, 0, len(keys)-hosts)
	if vals != nil {
		hv, cv = make([]IPCacheVal, 0, hosts), make([]IPCacheVal, 0, len(keys)-hosts)
	}
	for i := range keys {
		if keys[i].IsHost() {
			hk = append(hk, keys[i])
			if vals != nil {
				hv = append(hv, vals[i])
			}
		} else {
			ck = append(ck, keys[i])
			if vals != nil {
				cv = append(cv, vals[i])
			}
		}
	}
	return hk, hv, ck, cv
}

// EndpointPutMany sets eps[i] behind host ifindex ids[i], in order. Every
// endpoint is checked before anything is written.
func (d *Datapath) EndpointPutMany(ids []uint32, eps []Endpoint) (int, error) {
	for i := range eps {
		if int(eps[i].NrIps) > MaxEndpointIPs {
			return 0, fmt.Errorf("endpoint %d: %d addresses, at most %d", eps[i].EpId, eps[i].NrIps, MaxEndpointIPs)
		}
	}
	return d.changedN(updateMany(d.tc.Endpoints, "endpoints", ids, eps))
}

// EndpointDeleteMany removes the endpoints behind ids in order; missing
// ones are not an error.
func (d *Datapath) EndpointDeleteMany(ids []uint32) (int, error) {
	return d.changedN(deleteMany(d.tc.Endpoints, "endpoints", ids))
}

func updateMany[K, V any](m *ebpf.Map, name string, keys []K, vals []V) (int, error) {
	if len(keys) != len(vals) {
		return 0, fmt.Errorf("map %s: %d keys, %d values", name, len(keys), len(vals))
	}
	if len(keys) == 0 {
		return 0, nil
	}
	if len(keys) > 1 {
		n, err := m.BatchUpdate(keys, vals, nil)
		if err == nil {
			return len(keys), nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return n, fmt.Errorf("batch update (%d of %d written): %w", n, len(keys), mapErr(name, err))
		}
	}
	for i := range keys {
		if err := m.Put(&keys[i], &vals[i]); err != nil {
			return i, fmt.Errorf("update (%d of %d written): %w", i, len(keys), mapErr(name, err))
		}
	}
	return len(keys), nil
}

func deleteMany[K any](m *ebpf.Map, name string, keys []K) (int, error) {
	done := 0
	for done < len(keys) && len(keys)-done > 1 {
		n, err := m.BatchDelete(keys[done:], nil)
		if err == nil {
			return len(keys), nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		done += n
		if !errors.Is(err, ebpf.ErrKeyNotExist) || done >= len(keys) {
			return done, fmt.Errorf("batch delete from %s (%d of %d deleted): %w", name, done, len(keys), err)
		}
		done++ // the missing key: nothing to delete
	}
	for ; done < len(keys); done++ {
		if err := deleteIgnoreMissing(m, name, &keys[done]); err != nil {
			return done, err
		}
	}
	return len(keys), nil
}

// byteOrder32 maps a native-endian uint32 field to a number whose order is
// the order of its bytes in memory, which is the order an LPM trie sees.
func byteOrder32(v uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return binary.BigEndian.Uint32(b[:])
}

func byteOrder16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// PolicyKeyRank places a policy key in its byte order (data bytes, then
// prefix length) as two words compared in turn: a fixed order of writes,
// so that two runs of the same update write alike.
func PolicyKeyRank(k *PolicyKey) [2]uint64 {
	return [2]uint64{
		uint64(byteOrder32(k.EpId))<<32 | uint64(byteOrder32(uint32(k.PeerId))),
		uint64(k.Dir)<<56 | uint64(k.Proto)<<48 | uint64(byteOrder16(k.Port))<<32 | uint64(k.Prefixlen),
	}
}

// IPCacheKeyRank places an ipcache key in the byte order of the ipcidr
// LPM trie (family, address, then prefix length) as three words compared
// in turn. For masked prefixes it is identity.ComparePrefix's order.
func IPCacheKeyRank(k *IPCacheKey) [3]uint64 {
	var b [8]byte
	b[0] = byte(k.Family)
	copy(b[1:], k.Addr[:7])
	return [3]uint64{
		binary.BigEndian.Uint64(b[:]),
		binary.BigEndian.Uint64(k.Addr[7:15]),
		uint64(k.Addr[15])<<32 | uint64(k.Prefixlen),
	}
}

// ComparePolicyKeys orders policy keys by PolicyKeyRank.
func ComparePolicyKeys(a, b PolicyKey) int {
	x, y := PolicyKeyRank(&a), PolicyKeyRank(&b)
	return cmp.Or(cmp.Compare(x[0], y[0]), cmp.Compare(x[1], y[1]))
}

// CompareIPCacheKeys orders ipcache keys by IPCacheKeyRank.
func CompareIPCacheKeys(a, b IPCacheKey) int {
	x, y := IPCacheKeyRank(&a), IPCacheKeyRank(&b)
	return cmp.Or(cmp.Compare(x[0], y[0]), cmp.Compare(x[1], y[1]), cmp.Compare(x[2], y[2]))
}
