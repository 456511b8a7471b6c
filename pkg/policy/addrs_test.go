package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestAddrsIn: every owned address in some of the prefixes, each once and
// in order, whatever the prefixes' nesting; none outside them.
func TestAddrsIn(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 200 {
		c := New(Options{})
		var owned []netip.Addr
		for j := range 1 + r.IntN(40) {
			a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(256))})
			if r.IntN(4) == 0 {
				a = netip.AddrFrom16([16]byte{0xfd, 15: byte(r.IntN(256))})
			}
			c.SetPod(Pod{Namespace: "x", Name: fmt.Sprint("p", j), IPs: []netip.Addr{a}})
			owned = append(owned, a)
		}
		pfxs := set[netip.Prefix]{}
		for range 1 + r.IntN(6) {
			a := owned[r.IntN(len(owned))]
			bits := []int{0, 8, 14, 16, 22, 24, 30, 32}[r.IntN(8)]
			if a.Is6() {
				bits = []int{0, 64, 120, 128}[r.IntN(4)]
			}
			pfxs.add(netip.PrefixFrom(a, bits).Masked())
		}
		var got []netip.Addr
		c.addrsIn(pfxs, func(a netip.Addr) { got = append(got, a) })
		var want []netip.Addr
		for _, a := range owned {
			for p := range pfxs {
				if p.Contains(a) {
					want = append(want, a)
					break
				}
			}
		}
		slices.SortFunc(want, netip.Addr.Compare)
		want = slices.Compact(want)
		if !slices.Equal(got, want) {
			t.Fatalf("case %d: prefixes %v: walked %v, want %v", i, pfxs, got, want)
		}
	}
}
