package mapsync

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
)

// TestBuilderMatchesDesired: through random changes of pods, labels,
// namespaces, policies and bindings, a Builder's state equals Desired's,
// and ApplyDelta with its Deltas writes the maps Apply writes, with the
// same writes. verifyDelta makes every ApplyDelta also check that its
// Delta named every difference.
func TestBuilderMatchesDesired(t *testing.T) {
	verifyDelta = true
	t.Cleanup(func() { verifyDelta = false })
	partial, skipped, patched, hinted := 0, 0, 0, 0
	for seed := range uint64(80) {
		w := newWorld(seed)
		b := NewBuilder()
		full, delta := newFake(), newFake()
		sFull, sDelta := New(full.maps()), New(delta.maps())
		for step := range 12 {
			if step > 0 {
				w.mutate()
			}
			binds := w.compile(t)
			// Bindings come and go, and move to other interfaces.
			switch w.rng.IntN(4) {
			case 0:
				binds = binds[:w.rng.IntN(len(binds)+1)]
			case 1:
				binds[0].Ifindex = uint32(200 + w.rng.IntN(3))
			case 2:
				binds[0].Audit = !binds[0].Audit
			}
			if w.rng.IntN(5) == 0 { // a pod the compiler does not know
				binds = append(binds, Binding{Pod: policy.PodKey{Namespace: "a", Name: "gone"}, Ifindex: 300})
			}
			want, wantErr := Desired(w.c, binds, Options{})
			got, d, err := b.Update(w.c, binds, Options{})
			where := fmt.Sprintf("seed %d step %d", seed, step)
			if (err == nil) != (wantErr == nil) {
				t.Fatalf("%s: Update error %v, Desired error %v", where, err, wantErr)
			}
			if !equalState(got, want) {
				t.Fatalf("%s: the Builder's state differs from Desired's", where)
			}
			if step == 0 && !d.All {
				t.Fatalf("%s: a first Update named only some keys", where)
			}
			if !d.All {
				partial++
			}
			var stFull, stDelta Stats
			var errFull, errDelta error
			if step == 0 {
				stFull, errFull = sFull.Reconcile(want)
				stDelta, errDelta = sDelta.Reconcile(got)
			} else {
				stFull, errFull = sFull.Apply(want)
				stDelta, errDelta = sDelta.ApplyDelta(got, d)
			}
			if errFull != nil || errDelta != nil {
				t.Fatalf("%s: Apply: %v, ApplyDelta: %v", where, errFull, errDelta)
			}
			if !equalState(delta.st, want) || !equalState(full.st, want) {
				t.Fatalf("%s: maps differ from the desired state", where)
			}
			if stFull != stDelta {
				t.Fatalf("%s: Apply wrote %+v, ApplyDelta %+v", where, stFull, stDelta)
			}
			if d.Empty() {
				skipped++
			}
		}
		patched += b.patched
		hinted += b.hinted
	}
	if partial == 0 || skipped == 0 || patched == 0 || hinted == 0 || hinted == patched {
		t.Errorf("%d updates named some keys, %d none, %d endpoints patched (%d on the compiler's peers): the test misses a path",
			partial, skipped, patched, hinted)
	}
}

// TestApplyDeltaCatchesAMissedKey: the check the test above relies on
// fails when a Delta leaves out a key that changed.
func TestApplyDeltaCatchesAMissedKey(t *testing.T) {
	verifyDelta = true
	t.Cleanup(func() { verifyDelta = false })
	w := newWorld(1)
	b := NewBuilder()
	s := New(newFake().maps())
	st, _, err := b.Update(w.c, w.compile(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reconcile(st); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		w.mutate()
		st, d, err := b.Update(w.c, w.compile(t), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Policy) == 0 {
			if _, err := s.ApplyDelta(st, d); err != nil {
				t.Fatal(err)
			}
			continue
		}
		d.Policy = nil
		if _, err := s.ApplyDelta(st, d); err == nil {
			t.Fatal("a Delta without its policy keys went unnoticed")
		}
		return
	}
	t.Fatal("no mutation changed a policy entry")
}

// TestBuilderCheckRepairsDrift: Check finds a state the Builder patched
// wrong, counts the difference and rebuilds it; on a right one it finds
// nothing.
func TestBuilderCheckRepairsDrift(t *testing.T) {
	w := newWorld(2)
	b := NewBuilder()
	binds := w.compile(t)
	if _, _, err := b.Update(w.c, binds, Options{}); err != nil {
		t.Fatal(err)
	}
	w.mutate()
	binds = w.compile(t)
	b.Check()
	st, d, err := b.Update(w.c, binds, Options{})
	if err != nil || d.Drift != 0 || d.All {
		t.Fatalf("a right state: drift %d, all %v, %v", d.Drift, d.All, err)
	}
	// Corrupt the Builder's state as a wrong patch would.
	var victim datapath.PolicyKey
	for k := range st.Policy {
		victim = k
		break
	}
	delete(b.st.Policy, victim)
	b.st.IPCache[netip.MustParsePrefix("10.200.0.1/32")] = datapath.IPCacheVal{Identity: 999}
	st, d, err = b.Update(w.c, binds, Options{})
	if err != nil || d.Drift != 0 {
		t.Fatalf("drift %d without Check (%v)", d.Drift, err)
	}
	b.Check()
	st, d, err = b.Update(w.c, binds, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Drift != 2 || !d.All {
		t.Errorf("drift %d, all %v; want 2 differences found and the state rebuilt", d.Drift, d.All)
	}
	want, _ := Desired(w.c, binds, Options{})
	if !equalState(st, want) {
		t.Error("the state was not repaired")
	}
}

// TestChangedPeers checks changedPeers against the peers whose rules
// differ, computed from flat lists, for random pairs of rule lists, and
// pairs equal but for a few peers. (Lists sharing storage, as a patched
// endpoint's do, come through TestBuilderMatchesDesired.)
func TestChangedPeers(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 3))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d (rand.NewPCG(seed, 3))", seed)
		}
	})
	rules := func() []policy.Rule {
		var out []policy.Rule
		for range r.IntN(600) {
			out = append(out, policy.Rule{Peer: identity.ID(1 + r.IntN(80)), Protocol: policy.ProtoTCP, Port: uint16(1 + r.IntN(9)), ID: 1})
		}
		slices.SortFunc(out, func(a, b policy.Rule) int {
			return cmp.Or(cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Port, b.Port))
		})
		return slices.CompactFunc(out, func(a, b policy.Rule) bool { return a.Peer == b.Peer && a.Port == b.Port })
	}
	for run := range 300 {
		old := rules()
		new := rules()
		if run%2 == 0 {
			// the same list but for a few peers
			new = slices.DeleteFunc(slices.Clone(old), func(x policy.Rule) bool { return x.Peer%17 == identity.ID(run%17) })
		}
		got, ok := changedPeers(policy.MakeRules(slices.Clone(old)), policy.MakeRules(slices.Clone(new)))
		if !ok {
			t.Fatalf("run %d: sorted lists reported unsorted", run)
		}
		want := map[identity.ID]bool{}
		for p := range identity.ID(82) {
			o, n := peerOf(old, p), peerOf(new, p)
			if !slices.Equal(o, n) {
				want[p] = true
			}
		}
		for _, pr := range got {
			var p identity.ID
			if len(pr.old) > 0 {
				p = pr.old[0].Peer
			} else {
				p = pr.new[0].Peer
			}
			if !want[p] || !slices.Equal(pr.old, peerOf(old, p)) || !slices.Equal(pr.new, peerOf(new, p)) {
				t.Fatalf("run %d: run of peer %d: %v -> %v, want %v -> %v (differs: %v)", run, p, pr.old, pr.new, peerOf(old, p), peerOf(new, p), want[p])
			}
			delete(want, p)
		}
		if len(want) > 0 {
			t.Fatalf("run %d: peers %v differ but have no run", run, want)
		}
	}
}

func peerOf(rs []policy.Rule, p identity.ID) []policy.Rule {
	var out []policy.Rule
	for _, r := range rs {
		if r.Peer == p {
			out = append(out, r)
		}
	}
	return out
}
