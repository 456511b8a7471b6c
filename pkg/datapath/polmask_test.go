package datapath

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
)

// modelLookup is the documented precedence over the policy entries m:
// the peer's longest matching prefix, else the wildcard's.
func modelLookup(m map[PolicyKey]PolicyVal, ep uint32, dir Dir, peer Identity, proto uint8, port uint16) (PolicyVal, bool) {
	for _, p := range []Identity{peer, IdentityAny} {
		var best PolicyKey
		var val PolicyVal
		found := false
		for k, v := range m {
			if k.EpId != ep || k.Dir != dir || k.PeerId != p {
				continue
			}
			if k.Prefixlen >= policyPrefixProto && k.Proto != proto {
				continue
			}
			if k.Prefixlen > policyPrefixProto && !keyMatchesPort(k, port) {
				continue
			}
			if !found || k.Prefixlen > best.Prefixlen {
				best, val, found = k, v, true
			}
		}
		if found {
			return val, true
		}
	}
	return PolicyVal{}, false
}

// TestPolicyLookupMatchesModel writes random overlapping allow and deny
// rules of every shape (any protocol, protocol only, single ports, ranges)
// for a peer and the wildcard, and checks the programs' verdict of many
// packets against modelLookup: the probes over the prefix lengths in the
// mask must find what a longest-prefix match finds.
func TestPolicyLookupMatchesModel(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprint("v6=", v6), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, map[bool]uint64{false: 1, true: 2}[v6]))
			for world := range 6 {
				f := newFixture(t, v6)
				f.setEndpoint(EndpointIngressIsolated)
				ports := []uint16{1, 80, 443, 1023, 1024, 2047, 2048, 8080, 32767, 32768, 65535}
				for i := range 2 + rng.IntN(10) {
					r := PortRule{EndpointID: testEpID, Dir: DirIngress, Peer: peerID}
					if rng.IntN(3) == 0 {
						r.Peer = IdentityAny
					}
					switch rng.IntN(8) {
					case 0:
					case 1:
						r.Proto = protoTCP
					default:
						r.Proto = []uint8{protoTCP, protoUDP}[rng.IntN(2)]
						r.Port = ports[rng.IntN(len(ports))]
						if rng.IntN(2) == 0 {
							r.EndPort = r.Port + uint16(rng.IntN(3000))
							if r.EndPort < r.Port {
								r.EndPort = 65535
							}
						}
					}
					v := PolicyVal{RuleId: uint32(i + 1), Action: ActionAllow}
					if rng.IntN(4) == 0 {
						v.Action = ActionDeny
					}
					if err := f.d.PolicyPutRule(r, v); err != nil {
						t.Fatal(err)
					}
				}
				entries := must[map[PolicyKey]PolicyVal](t)(f.d.PolicyList())
				mask := must[PolicyMask](t)(f.d.PolicyMask())
				if want := PolicyMaskOf(maps.Keys(entries)); mask != want {
					t.Fatalf("world %d: mask %+v after the writes, want %+v", world, mask, want)
				}
				sport := uint16(10000)
				for _, src := range []struct {
					addr Identity
				}{{peerID}, {otherID}} {
					addr := f.peer
					if src.addr == otherID {
						addr = f.other
					}
					for _, proto := range []uint8{protoTCP, protoUDP} {
						for _, p := range ports {
							for _, port := range []uint16{p - 1, p, p + 1, p + 1500} {
								if port == 0 {
									continue
								}
								sport++
								want, wr := VerdictDrop, ReasonPolicyDenied
								if v, ok := modelLookup(entries, testEpID, DirIngress, src.addr, proto, port); ok {
									if v.Action == ActionAllow {
										want, wr = VerdictAllow, ReasonAllowed
									} else {
										wr = ReasonDenyRule
									}
								}
								f.expect(fmt.Sprintf("world %d from %d proto %d port %d", world, src.addr, proto, port),
									DirIngress, f.in(addr, proto, sport, port).bytes(), want, wr)
							}
						}
					}
				}
			}
		})
	}
}

// TestPolicyMask: writes add the prefix lengths of their keys to the mask,
// SetPolicyMask drops unused ones, a length missing from the mask is not
// probed, and keys with bits past their prefix length are refused.
func TestPolicyMask(t *testing.T) {
	f := newFixture(t, false)
	f.setEndpoint(EndpointIngressIsolated)
	if m := must[PolicyMask](t)(f.d.PolicyMask()); m != (PolicyMask{}) {
		t.Fatalf("new map: mask %+v", m)
	}
	f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}, 1)
	f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoUDP}, 2)
	m := must[PolicyMask](t)(f.d.PolicyMask())
	want := PolicyMask{Plens: [2]uint32{1<<(policyPrefixFull-policyPrefixAny) | 1<<(policyPrefixProto-policyPrefixAny), 0}}
	if m != want {
		t.Fatalf("mask %+v, want %+v", m, want)
	}
	f.expect("port rule", DirIngress, f.in(f.peer, protoTCP, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
	f.expect("proto rule", DirIngress, f.in(f.peer, protoUDP, 40000, 53).bytes(), VerdictAllow, ReasonAllowed)

	// Without its length in the mask a key is not found.
	if err := f.d.SetPolicyMask(PolicyMask{Plens: [2]uint32{1 << (policyPrefixProto - policyPrefixAny), 0}}); err != nil {
		t.Fatal(err)
	}
	f.expect("port rule unmasked", DirIngress, f.in(f.peer, protoTCP, 40001, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
	f.expect("proto rule kept", DirIngress, f.in(f.peer, protoUDP, 40001, 53).bytes(), VerdictAllow, ReasonAllowed)
	// The next write of that length adds it back.
	f.allow(PortRule{Dir: DirIngress, Peer: otherID, Proto: protoTCP, Port: 81}, 3)
	f.expect("port rule again", DirIngress, f.in(f.peer, protoTCP, 40002, 80).bytes(), VerdictAllow, ReasonAllowed)

	bad := []PolicyKey{
		{Prefixlen: policyPrefixFull - 4, EpId: testEpID, PeerId: peerID, Proto: protoTCP, Port: htons(81)}, // low bits set
		{Prefixlen: policyPrefixProto, EpId: testEpID, PeerId: peerID, Proto: protoTCP, Port: htons(80)},
		{Prefixlen: policyPrefixAny, EpId: testEpID, PeerId: peerID, Proto: protoTCP},
		{Prefixlen: 75, EpId: testEpID, PeerId: peerID},
		{Prefixlen: policyPrefixFull, EpId: testEpID, PeerId: peerID, Port: htons(80)}, // port, no protocol
		{Prefixlen: policyPrefixFull, EpId: testEpID, PeerId: peerID, Proto: protoTCP, Port: htons(80), Dir: 2},
	}
	before := must[map[PolicyKey]PolicyVal](t)(f.d.PolicyList())
	for _, k := range bad {
		if err := f.d.PolicyPut(k, PolicyVal{RuleId: 9, Action: ActionAllow}); err == nil {
			t.Errorf("PolicyPut %+v: no error", k)
		}
		if _, err := f.d.PolicyPutMany([]PolicyKey{{Prefixlen: policyPrefixProto, EpId: testEpID, PeerId: 999, Proto: protoTCP}, k},
			[]PolicyVal{{RuleId: 9, Action: ActionAllow}, {RuleId: 9, Action: ActionAllow}}); err == nil {
			t.Errorf("PolicyPutMany with %+v: no error", k)
		}
	}
	if after := must[map[PolicyKey]PolicyVal](t)(f.d.PolicyList()); !maps.Equal(before, after) {
		t.Errorf("refused writes changed the map: %v, was %v", after, before)
	}

	// The exact mask of what is left drops the lengths nobody uses.
	if err := f.d.PolicyDeleteRule(PortRule{EndpointID: testEpID, Dir: DirIngress, Peer: peerID, Proto: protoUDP}); err != nil {
		t.Fatal(err)
	}
	left := must[map[PolicyKey]PolicyVal](t)(f.d.PolicyList())
	if err := f.d.SetPolicyMask(PolicyMaskOf(maps.Keys(left))); err != nil {
		t.Fatal(err)
	}
	if m := must[PolicyMask](t)(f.d.PolicyMask()); m.Plens != [2]uint32{1 << (policyPrefixFull - policyPrefixAny), 0} {
		t.Errorf("trimmed mask %+v", m)
	}
	f.expect("port rule after trim", DirIngress, f.in(f.peer, protoTCP, 40003, 80).bytes(), VerdictAllow, ReasonAllowed)
}
