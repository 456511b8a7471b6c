package datapath

import (
	"math/rand/v2"
	"testing"
)

// keyMatchesPort applies LPM semantics to the port part of a key.
func keyMatchesPort(k PolicyKey, port uint16) bool {
	if k.Prefixlen <= policyPrefixProto {
		return true
	}
	n := k.Prefixlen - policyPrefixProto
	shift := 16 - n
	return port>>shift == ntohs(k.Port)>>shift
}

// checkRange checks PolicyKeys for [lo, hi] against every one of the 65536
// ports, alignment, and the optimal key count.
func checkRange(t *testing.T, lo, hi uint16) {
	t.Helper()
	r := PortRule{EndpointID: 7, Dir: DirIngress, Peer: 300, Proto: 6, Port: lo, EndPort: hi}
	keys, err := PolicyKeys(r)
	if err != nil {
		t.Fatalf("[%d,%d]: %v", lo, hi, err)
	}
	if len(keys) > 30 {
		t.Errorf("[%d,%d]: %d keys", lo, hi, len(keys))
	}
	for _, k := range keys {
		if k.EpId != 7 || k.PeerId != 300 || k.Dir != DirIngress || k.Proto != 6 {
			t.Fatalf("[%d,%d]: key fields %+v", lo, hi, k)
		}
		if err := CheckPolicyKey(k); err != nil {
			t.Fatalf("[%d,%d]: %v", lo, hi, err)
		}
		// Host bits below the prefix must be zero: keys match exactly.
		n := k.Prefixlen - policyPrefixProto
		if n < 16 && ntohs(k.Port)&(1<<(16-n)-1) != 0 {
			t.Fatalf("[%d,%d]: unaligned key %+v", lo, hi, k)
		}
	}
	for p := 0; p < 1<<16; p++ {
		hits := 0
		for _, k := range keys {
			if keyMatchesPort(k, uint16(p)) {
				hits++
			}
		}
		in := uint16(p) >= lo && uint16(p) <= hi
		if (in && hits != 1) || (!in && hits != 0) {
			t.Fatalf("[%d,%d]: port %d matched %d keys", lo, hi, p, hits)
		}
	}
	// Minimal: no two keys are mergeable siblings of the same parent.
	for i, a := range keys {
		for _, b := range keys[i+1:] {
			if a.Prefixlen == b.Prefixlen && a.Prefixlen > policyPrefixProto+0 {
				n := a.Prefixlen - policyPrefixProto
				shift := 16 - n + 1
				if shift <= 16 && ntohs(a.Port)>>shift == ntohs(b.Port)>>shift {
					t.Fatalf("[%d,%d]: keys %+v and %+v could merge", lo, hi, a, b)
				}
			}
		}
	}
	// And the count matches the known optimum of the range-to-CIDR problem.
	if want := optimalBlocks(uint32(lo), uint32(hi)); len(keys) != want {
		t.Fatalf("[%d,%d]: %d keys, optimum %d", lo, hi, len(keys), want)
	}
}

// optimalBlocks counts blocks by the recursive split on the binary trie.
func optimalBlocks(lo, hi uint32) int {
	var rec func(base uint32, size uint32) int
	rec = func(base, size uint32) int {
		end := base + size - 1
		if hi < base || lo > end {
			return 0
		}
		if lo <= base && end <= hi {
			return 1
		}
		half := size / 2
		return rec(base, half) + rec(base+half, half)
	}
	return rec(0, 1<<16)
}

func TestPolicyKeysExhaustive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	edges := [][2]uint16{{1, 1}, {1, 65535}, {80, 80}, {1000, 2000}, {1024, 2047}, {1023, 2048},
		{65535, 65535}, {32768, 65535}, {1, 32767}, {443, 8443}}
	for _, e := range edges {
		checkRange(t, e[0], e[1])
	}
	for range 150 {
		a := uint16(rng.IntN(65535) + 1)
		b := uint16(rng.IntN(65535) + 1)
		if rng.IntN(3) == 0 { // short ranges too
			b = a + uint16(rng.IntN(100))
			if b < a {
				b = 65535
			}
		}
		if a > b {
			a, b = b, a
		}
		checkRange(t, a, b)
	}
}

func TestPolicyKeysShapes(t *testing.T) {
	k := must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: 1, Peer: IdentityAny}))
	if len(k) != 1 || k[0].Prefixlen != policyPrefixAny {
		t.Errorf("any proto: %+v", k)
	}
	k = must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: 1, Proto: 17}))
	if len(k) != 1 || k[0].Prefixlen != policyPrefixProto {
		t.Errorf("proto only: %+v", k)
	}
	k = must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: 1, Proto: 17, Port: 53}))
	if len(k) != 1 || k[0].Prefixlen != policyPrefixFull || ntohs(k[0].Port) != 53 {
		t.Errorf("single port: %+v", k)
	}
	if lo, hi, ok := k[0].PortRange(); !ok || lo != 53 || hi != 53 {
		t.Errorf("PortRange: %d %d %v", lo, hi, ok)
	}
	for _, bad := range []PortRule{
		{Proto: 0, Port: 80},
		{Proto: 6, Port: 0, EndPort: 10},
		{Proto: 6, Port: 100, EndPort: 10},
		{Proto: 6, Port: 1, Dir: 5},
	} {
		if _, err := PolicyKeys(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
