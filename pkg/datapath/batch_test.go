package datapath

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"unsafe"
)

// TestManyWrites: the many-entry writes put and delete exactly their
// entries; deleting a missing key is no error, and a map that fills up
// stops the batch with ErrMapFull after the entries that fit.
func TestManyWrites(t *testing.T) {
	d := newTestDatapath(t, Options{MapSizes: MapSizes{Policy: 64, IPCache: 64}})
	var pks []PolicyKey
	var pvs []PolicyVal
	for i := range 40 {
		pks = append(pks, must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: 7, Dir: DirIngress, Peer: Identity(300 + i), Proto: protoTCP, Port: uint16(80 + i)}))...)
		pvs = append(pvs, PolicyVal{RuleId: uint32(i), Action: ActionAllow})
	}
	if n, err := d.PolicyPutMany(pks, pvs); err != nil || n != len(pks) {
		t.Fatalf("put many: %d, %v", n, err)
	}
	got := must[map[PolicyKey]PolicyVal](t)(d.PolicyList())
	if len(got) != len(pks) {
		t.Fatalf("%d policy entries, want %d", len(got), len(pks))
	}
	for i, k := range pks {
		if got[k] != pvs[i] {
			t.Fatalf("key %d: %+v, want %+v", i, got[k], pvs[i])
		}
	}
	// Delete every other key, with keys that are not there in between.
	var del []PolicyKey
	missing := PolicyKey{Prefixlen: 72, EpId: 99, PeerId: 5}
	for i := 0; i < len(pks); i += 2 {
		del = append(del, pks[i], missing)
	}
	if n, err := d.PolicyDeleteMany(del); err != nil || n != len(del) {
		t.Fatalf("delete many: %d, %v", n, err)
	}
	got = must[map[PolicyKey]PolicyVal](t)(d.PolicyList())
	for i, k := range pks {
		if _, ok := got[k]; ok != (i%2 == 1) {
			t.Fatalf("key %d present: %v after deleting the even ones", i, ok)
		}
	}

	var iks []IPCacheKey
	var ivs []IPCacheVal
	for i := range 70 {
		iks = append(iks, must[IPCacheKey](t)(IPCacheKeyFor(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 32))))
		ivs = append(ivs, IPCacheVal{Identity: Identity(400 + i)})
	}
	n, err := d.IPCachePutMany(iks, ivs)
	if !errors.Is(err, ErrMapFull) || n != 64 {
		t.Fatalf("70 entries into 64: wrote %d, err %v; want 64 and ErrMapFull", n, err)
	}
	ipc := must[map[netip.Prefix]IPCacheVal](t)(d.IPCacheList())
	for i, k := range iks {
		if _, ok := ipc[k.Prefix()]; ok != (i < 64) {
			t.Fatalf("ipcache entry %d present: %v", i, ok)
		}
	}
	if n, err := d.IPCacheDeleteMany(iks); err != nil || n != len(iks) {
		t.Fatalf("ipcache delete many: %d, %v", n, err)
	}
	if ipc := must[map[netip.Prefix]IPCacheVal](t)(d.IPCacheList()); len(ipc) != 0 {
		t.Fatalf("%d ipcache entries left", len(ipc))
	}

	ep := must[Endpoint](t)(NewEndpoint(3, EndpointIngressIsolated, netip.MustParseAddr("192.168.1.1")))
	ids, eps := []uint32{3, 4}, []Endpoint{ep, ep}
	if n, err := d.EndpointPutMany(ids, eps); err != nil || n != 2 {
		t.Fatalf("endpoints put many: %d, %v", n, err)
	}
	if got := must[map[uint32]Endpoint](t)(d.EndpointList()); len(got) != 2 || got[4] != ep {
		t.Fatalf("endpoints: %v", got)
	}
	bad := ep
	bad.NrIps = uint8(MaxEndpointIPs + 1)
	if n, err := d.EndpointPutMany([]uint32{5, 6}, []Endpoint{ep, bad}); err == nil || n != 0 {
		t.Fatalf("an invalid endpoint in the batch: %d written, %v; want none", n, err)
	}
	if n, err := d.EndpointDeleteMany([]uint32{3, 5, 4}); err != nil || n != 3 {
		t.Fatalf("endpoints delete many: %d, %v", n, err)
	}
	if got := must[map[uint32]Endpoint](t)(d.EndpointList()); len(got) != 0 {
		t.Fatalf("endpoints left: %v", got)
	}
}

// TestKeyRanks: the ranks order keys as the tries lay out their bytes.
func TestKeyRanks(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var pks []PolicyKey
	for range 2000 {
		pks = append(pks, PolicyKey{Prefixlen: uint32(72 + rng.IntN(25)), EpId: uint32(rng.IntN(3) << (8 * rng.IntN(4))),
			PeerId: Identity(rng.IntN(1 << 20)), Dir: Dir(rng.IntN(2)), Proto: uint8(rng.IntN(3)), Port: uint16(rng.IntN(1 << 16))})
	}
	data := func(k PolicyKey) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(&k)), unsafe.Sizeof(k))[4:] }
	byBytes := slices.Clone(pks)
	slices.SortStableFunc(byBytes, func(a, b PolicyKey) int {
		if c := bytes.Compare(data(a), data(b)); c != 0 {
			return c
		}
		return int(a.Prefixlen) - int(b.Prefixlen)
	})
	byRank := slices.Clone(pks)
	slices.SortStableFunc(byRank, ComparePolicyKeys)
	if !slices.Equal(byBytes, byRank) {
		t.Error("PolicyKeyRank does not follow the key bytes")
	}

	var pfxs []netip.Prefix
	for range 2000 {
		var a netip.Addr
		if rng.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{10, byte(rng.IntN(3)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		} else {
			a = netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(rng.IntN(256)), 7: byte(rng.IntN(3))})
		}
		pfxs = append(pfxs, netip.PrefixFrom(a, rng.IntN(a.BitLen()+1)).Masked())
	}
	slices.SortFunc(pfxs, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	keys := make([]IPCacheKey, len(pfxs))
	for i, p := range pfxs {
		keys[i] = must[IPCacheKey](t)(IPCacheKeyFor(p))
	}
	if !slices.IsSortedFunc(keys, CompareIPCacheKeys) {
		t.Error("IPCacheKeyRank does not follow address order")
	}
}
