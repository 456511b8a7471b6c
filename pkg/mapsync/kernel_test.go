package mapsync

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/ztnet/zt/pkg/datapath"
)

// TestReconcileKernelMaps writes host addresses and CIDRs of both families
// and policy keys of several prefix lengths to the real maps: the dump
// returns exactly what was written, writes only add prefix lengths to the
// policy mask, and Reconcile sets it to exactly the lengths in use.
func TestReconcileKernelMaps(t *testing.T) {
	d := openDatapath(t, 0)
	s := New(d)
	want := newState()
	for p, id := range map[string]datapath.Identity{
		"10.1.2.3/32": 300, "10.1.0.0/16": 301, "0.0.0.0/0": 302,
		"fd00::5/128": 300, "fd00::/64": 303,
	} {
		want.IPCache[netip.MustParsePrefix(p)] = datapath.IPCacheVal{Identity: id}
	}
	ep, err := datapath.NewEndpoint(10, datapath.EndpointIngressIsolated, netip.MustParseAddr("10.9.9.9"))
	if err != nil {
		t.Fatal(err)
	}
	want.Endpoints[10] = ep
	rules := []datapath.PortRule{
		{EndpointID: 10, Dir: datapath.DirIngress, Peer: 300, Proto: 6, Port: 80},
		{EndpointID: 10, Dir: datapath.DirIngress, Peer: 301, Proto: 6, Port: 1000, EndPort: 1999},
		{EndpointID: 10, Dir: datapath.DirEgress, Peer: datapath.IdentityAny, Proto: 17},
	}
	keysOf := func(r datapath.PortRule) []datapath.PolicyKey {
		ks, err := datapath.PolicyKeys(r)
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	for i, r := range rules {
		for _, k := range keysOf(r) {
			want.Policy[k] = datapath.PolicyVal{RuleId: uint32(i + 1), Action: datapath.ActionAllow}
		}
	}
	check := func(step string, mask datapath.PolicyMask) {
		t.Helper()
		if got, err := d.IPCacheList(); err != nil || !maps.Equal(got, want.IPCache) {
			t.Fatalf("%s: ipcache %v (%v), want %v", step, got, err, want.IPCache)
		}
		if got, err := d.PolicyList(); err != nil || !maps.Equal(got, want.Policy) {
			t.Fatalf("%s: policy %v (%v), want %v", step, got, err, want.Policy)
		}
		if got, err := d.PolicyMask(); err != nil || got != mask {
			t.Fatalf("%s: policy mask %+v (%v), want %+v", step, got, err, mask)
		}
	}
	if _, err := s.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	full := datapath.PolicyMaskOf(maps.Keys(want.Policy))
	if full.Plens[datapath.DirIngress] == 0 || full.Plens[datapath.DirEgress] == 0 {
		t.Fatalf("mask of the test keys %+v: both directions expected", full)
	}
	check("first reconcile", full)

	// The range goes: an update leaves its lengths in the mask (a probe
	// that misses), the next reconcile drops them.
	want = want.clone()
	for _, k := range keysOf(rules[1]) {
		delete(want.Policy, k)
	}
	delete(want.IPCache, netip.MustParsePrefix("10.1.0.0/16"))
	if _, err := s.Apply(want); err != nil {
		t.Fatal(err)
	}
	check("apply", full)
	if _, err := s.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	trimmed := datapath.PolicyMaskOf(maps.Keys(want.Policy))
	if trimmed == full {
		t.Fatalf("removing the range left the mask %+v", trimmed)
	}
	check("reconcile", trimmed)
}
