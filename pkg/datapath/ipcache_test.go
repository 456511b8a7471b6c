package datapath

import (
	"fmt"
	"maps"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// TestIPCacheHostAndCIDR: host addresses go to the ipcache hash, shorter
// prefixes to the ipcidr trie, the dump joins both, and the programs
// resolve an address to its host entry first, else its longest prefix.
func TestIPCacheHostAndCIDR(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprint("v6=", v6), func(t *testing.T) {
			f := newFixture(t, v6)
			const cidrID, wideID = Identity(400), Identity(401)
			narrow, wide := netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.0.0/8")
			inCIDR := netip.MustParseAddr("10.0.0.77")
			if v6 {
				narrow, wide = netip.MustParsePrefix("fd00::/120"), netip.MustParsePrefix("fd00::/16")
				inCIDR = netip.MustParseAddr("fd00::77")
			}
			keys := []IPCacheKey{must[IPCacheKey](t)(IPCacheKeyFor(wide)), must[IPCacheKey](t)(IPCacheKeyFor(narrow))}
			if _, err := f.d.IPCachePutMany(keys, []IPCacheVal{{Identity: wideID}, {Identity: cidrID}}); err != nil {
				t.Fatal(err)
			}
			want := map[netip.Prefix]IPCacheVal{
				wide: {Identity: wideID}, narrow: {Identity: cidrID},
				netip.PrefixFrom(f.peer, f.peer.BitLen()):   {Identity: peerID},
				netip.PrefixFrom(f.other, f.other.BitLen()): {Identity: otherID},
				netip.PrefixFrom(f.host, f.host.BitLen()):   {Identity: IdentityHost},
			}
			if got := must[map[netip.Prefix]IPCacheVal](t)(f.d.IPCacheList()); !maps.Equal(got, want) {
				t.Fatalf("dump %v, want %v", got, want)
			}
			for _, m := range []struct {
				m    *ebpf.Map
				host bool
			}{{f.d.tc.Ipcache, true}, {f.d.tc.Ipcidr, false}} {
				var k IPCacheKey
				var v IPCacheVal
				n := 0
				for it := m.m.Iterate(); it.Next(&k, &v); n++ {
					if k.IsHost() != m.host {
						t.Errorf("%s holds %s", m.m, k.Prefix())
					}
				}
				if want := map[bool]int{true: 3, false: 2}[m.host]; n != want {
					t.Errorf("%s: %d entries, want %d", m.m, n, want)
				}
			}

			// Only the /24 (or /120) is allowed in: the peer's own entry
			// beats it, an address with no entry of its own gets it.
			f.setEndpoint(EndpointIngressIsolated)
			f.allow(PortRule{Dir: DirIngress, Peer: cidrID, Proto: protoTCP, Port: 80}, 1)
			f.expect("cidr member", DirIngress, f.in(inCIDR, protoTCP, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
			f.expect("host entry wins", DirIngress, f.in(f.peer, protoTCP, 40001, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
			if err := f.d.IPCacheDelete(netip.PrefixFrom(f.peer, f.peer.BitLen())); err != nil {
				t.Fatal(err)
			}
			f.expect("host entry gone", DirIngress, f.in(f.peer, protoTCP, 40002, 80).bytes(), VerdictAllow, ReasonAllowed)
			if _, err := f.d.IPCacheDeleteMany([]IPCacheKey{keys[1], must[IPCacheKey](t)(IPCacheKeyFor(netip.PrefixFrom(f.other, f.other.BitLen())))}); err != nil {
				t.Fatal(err)
			}
			f.expect("narrow gone", DirIngress, f.in(inCIDR, protoTCP, 40003, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
			got := must[map[netip.Prefix]IPCacheVal](t)(f.d.IPCacheList())
			if want := map[netip.Prefix]IPCacheVal{wide: {Identity: wideID}, netip.PrefixFrom(f.host, f.host.BitLen()): {Identity: IdentityHost}}; !maps.Equal(got, want) {
				t.Fatalf("dump after deletes %v, want %v", got, want)
			}
		})
	}
}
