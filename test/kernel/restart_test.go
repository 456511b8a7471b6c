package kernel

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/mapsync"
	"github.com/ztnet/zt/pkg/policy"
)

// TestRestartKeepsEnforcing: the loader runs as a separate process and is
// SIGKILLed while an allowed client streams sequence-numbered datagrams
// and a denied client keeps trying. With no loader running, the pinned
// maps and links enforce unchanged. A new loader adopting the pins with the
// same identity numbering writes nothing; one numbering identities above
// the adopted ones (as the agent does) rewrites entries. Across the whole
// sequence not one allowed datagram is lost and not one denied passes.
func TestRestartKeepsEnforcing(t *testing.T) {
	n := newNode(t)
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10})
	good := n.addPod(podSpec{Namespace: "prod", Name: "good", Labels: labels("role", "good"), Index: 11})
	bad := n.addPod(podSpec{Namespace: "prod", Name: "bad", Labels: labels("role", "bad"), Index: 12})
	sink := newUDPSink(t, srv, 5000)
	blastSink := newUDPSink(t, srv, 5001)
	n.waitReady(t)

	snap := policy.Snapshot{
		Namespaces: []policy.Namespace{{Name: "prod"}},
		HostIPs:    []netip.Addr{nodeIP4, nodeIP6},
		Policies: []*networkingPolicy{netpol("prod", "srv", labels("app", "srv"), ingressOnly,
			[]networkingIngress{ingressRule(peers(podSel(labels("role", "good"))), portRange("udp", 5000, 5001))}, nil)},
	}
	var bindings []mapsync.Binding
	for _, p := range n.pods {
		snap.Pods = append(snap.Pods, p.policyPod())
		bindings = append(bindings, mapsync.Binding{Pod: p.key(), Ifindex: uint32(p.hostIfindex)})
	}
	root := testRoot(t)
	cfg := loaderConfig{Root: root, Snapshot: snap, Bindings: bindings}

	l1 := startLoader(t, n.ns, cfg)
	if l1.res.Writes == 0 {
		t.Fatalf("first loader wrote nothing: %+v", l1.res)
	}
	dp := openDatapath(t, root) // the test's own view of the pinned maps
	attached, err := dp.AttachedEndpoints()
	if err != nil || len(attached) != len(n.pods) {
		t.Fatalf("attached endpoints %v (%v), want %d", attached, err, len(n.pods))
	}
	drops := func() uint64 {
		c, err := dp.Counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonPolicyDenied)
		if err != nil {
			t.Fatal(err)
		}
		return c.Packets
	}
	drops0 := drops()

	const interval, maxCount = 2 * time.Millisecond, 5000
	streams := []*udpStream{
		startStream(t, "good-v4", good, netip.AddrPortFrom(srv.ip4, 5000), 1, interval, maxCount),
		startStream(t, "good-v6", good, netip.AddrPortFrom(srv.ip6, 5000), 2, interval, maxCount),
		startStream(t, "bad-v4", bad, netip.AddrPortFrom(srv.ip4, 5000), 3, interval, maxCount),
		startStream(t, "bad-v6", bad, netip.AddrPortFrom(srv.ip6, 5000), 4, interval, maxCount),
	}
	mark := func(what string) {
		t.Logf("%-38s good-v4 seq %d", what, streams[0].sent.Load())
	}
	time.Sleep(300 * time.Millisecond)

	mark("SIGKILL loader 1")
	l1.kill()
	time.Sleep(300 * time.Millisecond)

	mark("start loader 2 (same numbering)")
	b2 := startBlast(t, good, netip.AddrPortFrom(srv.ip4, 5001), 5)
	l2 := startLoader(t, n.ns, cfg)
	b2.halt()
	mark("loader 2 ready")
	if l2.res.Writes != 0 {
		t.Errorf("adopting loader wrote %d map entries, want 0: %+v", l2.res.Writes, l2.res.Stats)
	}
	time.Sleep(300 * time.Millisecond)
	mark("SIGKILL loader 2")
	l2.kill()
	time.Sleep(200 * time.Millisecond)

	renum := cfg
	renum.Renumber = true
	mark("start loader 3 (FirstIdentity above)")
	b3 := startBlast(t, good, netip.AddrPortFrom(srv.ip6, 5001), 6)
	l3 := startLoader(t, n.ns, renum)
	b3.halt()
	mark("loader 3 ready")
	if l3.res.Writes == 0 || l3.res.FirstIdentity <= l3.res.MaxAdopted {
		t.Errorf("renumbering loader: %+v, want rewrites with FirstIdentity above %d", l3.res, l3.res.MaxAdopted)
	}
	time.Sleep(300 * time.Millisecond)
	mark("SIGKILL loader 3")
	l3.kill()
	time.Sleep(200 * time.Millisecond)

	// Identities are now numbered above the adopted ones.
	ipc, err := dp.IPCacheList()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{good.ip4, good.ip6} {
		id := ipc[netip.PrefixFrom(a, a.BitLen())].Identity
		if uint32(id) < l3.res.FirstIdentity || id >= mapsync.TempIdentityBase {
			t.Errorf("%s has identity %d after renumbering, want >= %d", a, id, l3.res.FirstIdentity)
		}
	}

	// What the agent does: fresh numbers above the adopted ones, but a
	// label set the adopted ipcache shows keeps its number. Over the same
	// objects nothing is written.
	hinted := renum
	hinted.Hints = true
	mark("start loader 4 (keeps adopted numbers)")
	b4 := startBlast(t, good, netip.AddrPortFrom(srv.ip4, 5001), 7)
	l4 := startLoader(t, n.ns, hinted)
	b4.halt()
	mark("loader 4 ready")
	if l4.res.Writes != 0 || l4.res.FirstIdentity <= l4.res.MaxAdopted {
		t.Errorf("loader keeping adopted numbers: %+v, want 0 writes (FirstIdentity above %d)", l4.res, l4.res.MaxAdopted)
	}
	after, err := dp.IPCacheList()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(after, ipc) {
		t.Errorf("ipcache changed across a restart over the same objects:\nbefore %v\nafter  %v", ipc, after)
	}
	time.Sleep(300 * time.Millisecond)
	mark("SIGKILL loader 4")
	l4.kill()
	time.Sleep(200 * time.Millisecond)
	for _, s := range streams {
		s.halt()
	}
	time.Sleep(200 * time.Millisecond)

	var badSent int64
	for _, s := range streams {
		sent := int(s.sent.Load())
		got, missing := sink.received(s.flow, sent)
		t.Logf("%s: sent %d, received %d, send errors %d", s.name, sent, got, s.errs.Load())
		if s.flow <= 2 {
			if got != sent || missing != "" {
				t.Errorf("%s: %d of %d allowed datagrams lost (missing %s)", s.name, sent-got, sent, missing)
			}
			if s.errs.Load() != 0 {
				t.Errorf("%s: send errors: %v", s.name, s.last.Load())
			}
		} else {
			badSent += int64(sent)
			if got != 0 {
				t.Errorf("%s: %d of %d denied datagrams passed", s.name, got, sent)
			}
		}
	}
	// Datagrams blasted back to back while loaders 2, 3 and 4 reconciled
	// sample every intermediate state; a socket buffer may overflow, so
	// the kernel's drop counter is the proof: it counts exactly the
	// denied client's datagrams, none of the allowed ones.
	for _, b := range []*udpStream{b2, b3, b4} {
		sent := int(b.sent.Load())
		got, _ := blastSink.received(b.flow, sent)
		t.Logf("%s (during reconcile): sent %d, received %d", b.name, sent, got)
	}
	if d := drops() - drops0; d != uint64(badSent) {
		t.Errorf("policy-denied drops +%d, want exactly the %d denied datagrams", d, badSent)
	} else {
		t.Logf("policy-denied drops +%d for %d denied datagrams", d, badSent)
	}
}

// startBlast sends sequence-numbered datagrams back to back (at most
// 500000) until halted.
func startBlast(t testing.TB, from *pod, dst netip.AddrPort, flow uint32) *udpStream {
	t.Helper()
	c, err := from.dial("udp", dst, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := &udpStream{name: fmt.Sprintf("blast-%d", flow), flow: flow, done: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer c.Close()
		buf := datagram(flow, 0)
		for i := 0; i < 500000; i++ {
			if i%64 == 0 {
				select {
				case <-s.stop:
					return
				default:
				}
			}
			binary.BigEndian.PutUint32(buf[4:], uint32(s.sent.Load()))
			if _, err := c.Write(buf); err != nil {
				s.errs.Add(1)
				s.last.Store(err)
				continue
			}
			s.sent.Add(1)
		}
	}()
	t.Cleanup(s.halt)
	return s
}
