package datapath

import (
	"maps"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// TestMigrateTriesToHashes: maps pinned by a version whose ipcache and
// policy were LPM tries are converted on Open: host addresses stay in the
// ipcache (now a hash), shorter prefixes move to ipcidr, policy keys are
// copied and their prefix lengths set in the mask, so the new programs
// enforce the old state before any reconcile.
func TestMigrateTriesToHashes(t *testing.T) {
	root := testRoot(t)
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	ipc := map[netip.Prefix]IPCacheVal{
		netip.MustParsePrefix("10.0.0.20/32"): {Identity: peerID},
		netip.MustParsePrefix("10.1.0.0/16"):  {Identity: 400},
		netip.MustParsePrefix("fd00::20/128"): {Identity: peerID},
		netip.MustParsePrefix("fd00:1::/64"):  {Identity: 401},
	}
	pol := map[PolicyKey]PolicyVal{}
	for _, r := range []PortRule{
		{EndpointID: testEpID, Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80},
		{EndpointID: testEpID, Dir: DirIngress, Peer: 400, Proto: protoTCP, Port: 1000, EndPort: 1999},
	} {
		for _, k := range must[[]PolicyKey](t)(PolicyKeys(r)) {
			pol[k] = PolicyVal{RuleId: 7, Action: ActionAllow}
		}
	}
	for name, fill := range map[string]func(*ebpf.Map) error{
		"ipcache": func(m *ebpf.Map) error {
			for p, v := range ipc {
				k := must[IPCacheKey](t)(IPCacheKeyFor(p))
				if err := m.Put(&k, &v); err != nil {
					return err
				}
			}
			return nil
		},
		"policy": func(m *ebpf.Map) error {
			for k, v := range pol {
				if err := m.Put(&k, &v); err != nil {
					return err
				}
			}
			return nil
		},
	} {
		keySize := map[string]uint32{"ipcache": 24, "policy": 16}[name]
		old, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.LPMTrie, KeySize: keySize, ValueSize: 8,
			MaxEntries: 1024, Flags: 1 /* BPF_F_NO_PREALLOC */})
		if err != nil {
			t.Fatal(err)
		}
		if err := fill(old); err != nil {
			t.Fatal(err)
		}
		if err := old.Pin(root + "/" + name); err != nil {
			t.Fatal(err)
		}
		old.Close()
	}

	d := newTestDatapath(t, Options{BPFFSRoot: root, Migrate: true})
	got := map[string]MapMigration{}
	for _, m := range d.Migrated() {
		got[m.Map] = m
	}
	if m := got["ipcache"]; m.Copied != 2 || m.Moved != 2 || m.MovedTo != "ipcidr" || m.Empty {
		t.Errorf("ipcache migration %+v, want 2 copied, 2 moved to ipcidr", m)
	}
	if m := got["policy"]; m.Copied != len(pol) || m.Empty {
		t.Errorf("policy migration %+v, want %d copied", m, len(pol))
	}
	if l := must[map[netip.Prefix]IPCacheVal](t)(d.IPCacheList()); !maps.Equal(l, ipc) {
		t.Errorf("ipcache after migration %v, want %v", l, ipc)
	}
	if l := must[map[PolicyKey]PolicyVal](t)(d.PolicyList()); !maps.Equal(l, pol) {
		t.Errorf("policy after migration %v, want %v", l, pol)
	}
	if m, want := must[PolicyMask](t)(d.PolicyMask()), PolicyMaskOf(maps.Keys(pol)); m != want {
		t.Errorf("policy mask %+v, want %+v", m, want)
	}

	f := &fixture{t: t, d: d, pod: netip.MustParseAddr("10.0.0.10"), peer: netip.MustParseAddr("10.0.0.20")}
	f.setEndpoint(EndpointIngressIsolated)
	inCIDR := netip.MustParseAddr("10.1.2.3")
	f.expect("peer port 80", DirIngress, f.in(f.peer, protoTCP, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
	f.expect("cidr in range", DirIngress, f.in(inCIDR, protoTCP, 40000, 1500).bytes(), VerdictAllow, ReasonAllowed)
	f.expect("cidr past range", DirIngress, f.in(inCIDR, protoTCP, 40001, 2000).bytes(), VerdictDrop, ReasonPolicyDenied)
}
