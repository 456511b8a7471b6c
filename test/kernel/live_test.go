package kernel

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/policy"
)

// TestRevokeCutsLiveStream: removing the allow of an established TCP
// stream cuts it at the next packet (continuous verification), measured
// from the moment Apply returns to the last byte the server reads.
func TestRevokeCutsLiveStream(t *testing.T) {
	w := newRevokeWorld(t, 9000)
	cl, srv, cli := w.cl, w.srv, w.cli
	sink := newTCPSink(t, srv, 9000, 100)
	ev := collectEvents(t, cl.dp)

	const interval = time.Millisecond
	w.eachFamily(t, func(t *testing.T, name string, v6 bool) {
		st := startTCPStream(t, cli, netip.AddrPortFrom(srv.ip(v6), 9000), 100, interval, 5000)
		defer st.halt()
		time.Sleep(300 * time.Millisecond)
		before := sink.bytes.Load()
		if since := time.Since(time.Unix(0, sink.lastRead.Load())); before == 0 || since > 200*time.Millisecond {
			t.Fatalf("stream not flowing before the revoke: %d bytes, last %v ago", before, since)
		}
		drops := cl.counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonPolicyDenied)

		cl.c.DeletePolicy(policy.PolicyKey{Namespace: "prod", Name: "srv-allow"})
		cl.c.Sync()
		desired := cl.desired()
		monoStart := monotonic()
		start := time.Now()
		stats, err := cl.syncer.Apply(desired)
		applied := time.Now()
		monoApplied := monotonic()
		if err != nil {
			t.Fatal(err)
		}
		atApply := sink.bytes.Load()
		time.Sleep(500 * time.Millisecond)
		last := time.Unix(0, sink.lastRead.Load())
		after := sink.bytes.Load()
		lastSent := sink.lastSent.Load()
		lat := last.Sub(applied)
		t.Logf("revoke %s: Apply took %v (%+v); last byte read %v after Apply returned; "+
			"the last delivered record was sent %v after Apply returned; %d bytes before, %d while applying, %d after; packet interval %v",
			name, applied.Sub(start), stats, lat, time.Duration(int64(lastSent)-int64(monoApplied)),
			before, atApply-before, after-atApply, interval)
		// Nothing written after the revoke is delivered: the record
		// stamps come from the sender, so reader delays do not matter.
		if lastSent > monoApplied {
			t.Errorf("a record sent %v after the revoke was applied was delivered",
				time.Duration(lastSent-monoApplied))
		}
		// The kernel's side: the first segment dropped after the revoke
		// (event timestamps are CLOCK_MONOTONIC).
		first, ok := ev.wait(time.Second, func(e *datapath.FlowEvent) bool {
			return e.Verdict == datapath.VerdictDrop && e.DstPort() == 9000 && e.TsNs >= monoStart
		})
		if !ok {
			t.Error("no drop event for the revoked stream")
		} else {
			t.Logf("revoke %s: first dropped segment %v after Apply returned (%v after it started), reason %s",
				name, time.Duration(int64(first.TsNs)-int64(monoApplied)), time.Duration(first.TsNs-monoStart), first.Reason)
		}
		if d := cl.counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonPolicyDenied) - drops; d == 0 {
			t.Error("no policy-denied drop counted after the revoke")
		}
		// And the stream stays cut: a later window sees nothing.
		mark := sink.bytes.Load()
		time.Sleep(200 * time.Millisecond)
		if got := sink.bytes.Load() - mark; got != 0 {
			t.Errorf("%d bytes delivered long after the revoke", got)
		}
	})
}

// revokeWorld is the world of the revoke tests: a node with a server pod
// (prod/srv, app=srv) and a client pod (prod/cli, role=cli), the server
// isolated for ingress by srv-isolate, and srv-allow, which admits the
// client to one TCP port of the server, not yet set.
type revokeWorld struct {
	cl       *cluster
	srv, cli *pod
	allow    *networkingv1.NetworkPolicy
}

// newRevokeWorld builds a revokeWorld on a node of its own (network
// namespaces, links and bpffs root of this test alone), srv-allow
// admitting the client to the server's TCP port tcpPort.
func newRevokeWorld(t *testing.T, tcpPort int) *revokeWorld {
	t.Helper()
	n := newNode(t)
	w := &revokeWorld{
		srv: n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10}),
		cli: n.addPod(podSpec{Namespace: "prod", Name: "cli", Labels: labels("role", "cli"), Index: 11}),
	}
	n.waitReady(t)
	w.cl = newCluster(t, n, map[string]map[string]string{"prod": nil})
	w.cl.setPolicy(netpol("prod", "srv-isolate", labels("app", "srv"), ingressOnly, nil, nil))
	w.allow = netpol("prod", "srv-allow", labels("app", "srv"), ingressOnly,
		[]networkingIngress{ingressRule(peers(podSel(labels("role", "cli"))), port("tcp", tcpPort))}, nil)
	return w
}

// eachFamily runs revoke in a subtest per address family, "v4" then "v6",
// each starting with srv-allow set and applied; while it runs, the cluster
// reports to the subtest.
func (w *revokeWorld) eachFamily(t *testing.T, revoke func(t *testing.T, name string, v6 bool)) {
	for _, v6 := range []bool{false, true} {
		name := "v4"
		if v6 {
			name = "v6"
		}
		t.Run(name, func(t *testing.T) {
			cl := w.cl
			parent := cl.t
			cl.t = t
			defer func() { cl.t = parent }()
			cl.setPolicy(w.allow)
			cl.apply()
			revoke(t, name, v6)
		})
	}
}

// TestRelabelKeepsFlow: while traffic flows, the client is relabelled
// again and again; each relabel moves it to a new identity that another
// rule still allows. Not one datagram or TCP segment of it may be dropped,
// while a denied client stays denied throughout.
func TestRelabelKeepsFlow(t *testing.T) {
	n := newNode(t)
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10})
	l1 := labels("role", "fe", "tier", "web", "ver", "a")
	cli := n.addPod(podSpec{Namespace: "prod", Name: "cli", Labels: l1, Index: 11})
	bad := n.addPod(podSpec{Namespace: "prod", Name: "bad", Labels: labels("role", "bad"), Index: 12})
	sink := newUDPSink(t, srv, 5000)
	tsink := newTCPSink(t, srv, 6000, 200)
	n.waitReady(t)
	cl := newCluster(t, n, map[string]map[string]string{"prod": nil})
	ports := []networkingPort{port("udp", 5000), port("tcp", 6000)}
	cl.setPolicy(netpol("prod", "srv", labels("app", "srv"), ingressOnly, []networkingIngress{
		ingressRule(peers(podSel(labels("role", "fe"))), ports...),
		ingressRule(peers(podSel(labels("tier", "web"))), ports...),
	}, nil))
	cl.apply()
	ev := collectEvents(t, cl.dp)

	ingressDrops := func() uint64 {
		return cl.counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonPolicyDenied) +
			cl.counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonDenyRule)
	}
	drops0 := ingressDrops()
	const maxCount = 4000
	s4 := startStream(t, "cli-v4", cli, netip.AddrPortFrom(srv.ip4, 5000), 1, time.Millisecond, maxCount)
	s6 := startStream(t, "cli-v6", cli, netip.AddrPortFrom(srv.ip6, 5000), 2, time.Millisecond, maxCount)
	sb := startStream(t, "bad-v4", bad, netip.AddrPortFrom(srv.ip4, 5000), 3, 2*time.Millisecond, maxCount)
	ts := startTCPStream(t, cli, netip.AddrPortFrom(srv.ip6, 6000), 200, time.Millisecond, maxCount)
	time.Sleep(100 * time.Millisecond)

	sets := []map[string]string{
		labels("tier", "web", "ver", "b"), // only the tier rule
		labels("role", "fe", "ver", "c"),  // only the role rule
		l1,                                // both
	}
	ids := map[uint32]bool{}
	frozen, writes := 0, 0
	var applyTimes []time.Duration
	for i := range 15 {
		p := cli.policyPod()
		p.Labels = sets[i%len(sets)]
		cl.c.SetPod(p)
		start := time.Now()
		st := cl.apply()
		applyTimes = append(applyTimes, time.Since(start))
		frozen += st.Frozen
		writes += st.Writes()
		if ep, ok := cl.c.Endpoint(cli.key()); ok {
			for _, id := range ep.Identities {
				ids[uint32(id)] = true
			}
		}
		time.Sleep(40 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	for _, s := range []*udpStream{s4, s6, sb} {
		s.halt()
	}
	ts.halt()
	time.Sleep(200 * time.Millisecond)

	slices.Sort(applyTimes)
	t.Logf("15 relabels: %d identities used by the client, %d writes, %d prefixes parked on temporary identities; apply median %v max %v",
		len(ids), writes, frozen, applyTimes[len(applyTimes)/2], applyTimes[len(applyTimes)-1])
	if frozen == 0 {
		t.Error("no relabel went through the temporary-identity path")
	}
	for _, s := range []*udpStream{s4, s6} {
		sent := int(s.sent.Load())
		got, missing := sink.received(s.flow, sent)
		t.Logf("%s: sent %d, received %d, send errors %d", s.name, sent, got, s.errs.Load())
		if got != sent || missing != "" {
			t.Errorf("%s: %d of %d datagrams lost across the relabels (missing %s)", s.name, sent-got, sent, missing)
		}
		if s.errs.Load() != 0 {
			t.Errorf("%s: send errors: %v", s.name, s.last.Load())
		}
	}
	if got, _ := sink.received(sb.flow, int(sb.sent.Load())); got != 0 {
		t.Errorf("denied client: %d of %d datagrams passed", got, sb.sent.Load())
	} else {
		t.Logf("bad-v4: sent %d, received 0", sb.sent.Load())
	}
	// TCP hides a lost segment behind a retransmit, and a retransmit may
	// also be a timer firing on a busy machine: the drop counter is the
	// proof. Every policy drop at the server is one of the denied
	// client's datagrams.
	rt, err := ts.retransmits()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tcp v6 stream: %d bytes delivered, %d retransmits", tsink.bytes.Load(), rt)
	if d := ingressDrops() - drops0; d != uint64(sb.sent.Load()) {
		t.Errorf("ingress policy drops +%d, want exactly the denied client's %d datagrams", d, sb.sent.Load())
	}
	for _, e := range ev.all() {
		if e.Verdict == datapath.VerdictDrop && (e.SrcAddr() == cli.ip4 || e.SrcAddr() == cli.ip6) {
			t.Errorf("allowed client dropped: %s %s -> %s:%d reason %s", e.Dir, e.SrcAddr(), e.DstAddr(), e.DstPort(), e.Reason)
		}
	}
}

// monotonic reads CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// TestRevokeCutsBothWays: after an allow is revoked, the server's side of
// the flow cannot re-open it. The server's egress is not isolated; if its
// next segment (here a write of its own, as a delayed ACK or a UDP answer
// would be) created a conntrack entry of its direction, the client's
// retransmissions would pass as replies of it. They must not: the revoked
// flow is cut both ways, and the server's segment is dropped too.
func TestRevokeCutsBothWays(t *testing.T) {
	w := newRevokeWorld(t, 7000)
	cl, srv, cli := w.cl, w.srv, w.cli

	w.eachFamily(t, func(t *testing.T, _ string, v6 bool) {
		var ln net.Listener
		mustNS(t, srv.ns, func() (err error) {
			ln, err = net.Listen("tcp", ":7000")
			return err
		})
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- c
			}
		}()
		c, err := cli.dial("tcp", netip.AddrPortFrom(srv.ip(v6), 7000), 2*time.Second)
		if err != nil {
			t.Fatalf("dial while allowed: %v", err)
		}
		defer c.Close()
		var sc net.Conn
		select {
		case sc = <-accepted:
		case <-time.After(2 * time.Second):
			t.Fatal("server accepted nothing")
		}
		defer sc.Close()
		readN := func(conn net.Conn, d time.Duration) (string, error) {
			_ = conn.SetReadDeadline(time.Now().Add(d))
			buf := make([]byte, 64)
			k, err := conn.Read(buf)
			return string(buf[:k]), err
		}
		if _, err := c.Write([]byte("a")); err != nil {
			t.Fatal(err)
		}
		if got, err := readN(sc, time.Second); got != "a" {
			t.Fatalf("server read %q, %v while allowed", got, err)
		}
		if _, err := sc.Write([]byte("b")); err != nil {
			t.Fatal(err)
		}
		if got, err := readN(c, time.Second); got != "b" {
			t.Fatalf("client read %q, %v while allowed", got, err)
		}

		cl.c.DeletePolicy(policy.PolicyKey{Namespace: "prod", Name: "srv-allow"})
		cl.apply()
		// The client's next segment is dropped: the flow is revoked.
		if _, err := c.Write([]byte("c")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		// The server writes on its own: were its segment to open an
		// entry of its direction, "c" (retransmitted by the client
		// within the next second) would pass as a reply.
		if _, err := sc.Write([]byte("d")); err != nil {
			t.Fatal(err)
		}
		if got, err := readN(sc, 1500*time.Millisecond); err == nil || got != "" {
			t.Errorf("server read %q after the revoke (err %v): the flow was re-opened from the server's side", got, err)
		}
		if got, err := readN(c, 200*time.Millisecond); err == nil || got != "" {
			t.Errorf("client read %q after the revoke (err %v): the revoked flow passes the other way", got, err)
		}
	})
}
