package kernel

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/policy"
)

// srvAndClient is a node with prod/srv (app=srv) and prod/cli (role=cli),
// each serving TCP 8080 and UDP 5353, and its cluster.
func srvAndClient(t *testing.T) (srv, cli *pod, cl *cluster) {
	t.Helper()
	n := newNode(t)
	srv = n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10})
	cli = n.addPod(podSpec{Namespace: "prod", Name: "cli", Labels: labels("role", "cli"), Index: 11})
	for _, p := range n.pods {
		p.listenTCP(t, 8080)
		p.listenUDP(t, 5353)
	}
	n.waitReady(t)
	return srv, cli, newCluster(t, n, map[string]map[string]string{"prod": nil})
}

// TestDefaultDeny: a pod is open until a policy selects it; from that Apply
// on, traffic not allowed is dropped in both families and for TCP and UDP,
// while the node itself (kubelet probes) still reaches it and the pod's
// own egress stays open. Deleting the policy opens it again.
func TestDefaultDeny(t *testing.T) {
	srv, cli, cl := srvAndClient(t)

	open := func(want bool) []flow {
		return slices.Concat(
			both(cli, srv, "tcp", 8080, want), both(cli, srv, "udp", 5353, want),
			both(nil, srv, "tcp", 8080, true), both(nil, srv, "udp", 5353, true),
			both(srv, cli, "tcp", 8080, true), both(srv, cli, "udp", 5353, true))
	}
	cl.expect(open(true)...)

	cl.setPolicy(netpol("prod", "deny-srv", labels("app", "srv"), ingressOnly, nil, nil))
	drops := cl.counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonPolicyDenied)
	st := cl.apply()
	t.Logf("default deny: %+v", st)
	cl.expect(open(false)...)
	if got := cl.counter(datapath.DirIngress, datapath.VerdictDrop, datapath.ReasonPolicyDenied); got <= drops {
		t.Errorf("no policy-denied ingress drop counted (%d before, %d after)", drops, got)
	}
	if cl.counter(datapath.DirIngress, datapath.VerdictAllow, datapath.ReasonHost) == 0 {
		t.Error("node -> pod traffic not counted as host")
	}

	cl.c.DeletePolicy(policy.PolicyKey{Namespace: "prod", Name: "deny-srv"})
	cl.apply()
	cl.expect(open(true)...)
}

// TestEgressEPERM: a connect() or sendto() that egress policy denies fails
// at once with EPERM from the cgroup connect/sendmsg hooks, instead of
// timing out on a tc drop; allowed destinations are untouched.
func TestEgressEPERM(t *testing.T) {
	n := newNode(t)
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10})
	other := n.addPod(podSpec{Namespace: "prod", Name: "other", Labels: labels("app", "other"), Index: 12})
	cli := n.addPod(podSpec{Namespace: "prod", Name: "cli", Labels: labels("role", "cli"), Index: 11})
	for _, p := range []*pod{srv, other} {
		p.listenTCP(t, 8080, 9090)
		p.listenUDP(t, 5353, 5354)
	}
	n.waitReady(t)
	cl := newCluster(t, n, map[string]map[string]string{"prod": nil})
	cl.enableSocketHooks()
	cl.setPolicy(netpol("prod", "cli-out", labels("role", "cli"), egressOnly, nil,
		[]networkingEgress{egressRule(peers(podSel(labels("app", "srv"))), port("tcp", 8080), port("udp", 5353))}))
	cl.apply()

	cl.expect(slices.Concat(
		both(cli, srv, "tcp", 8080, true), both(cli, srv, "udp", 5353, true),
		both(cli, srv, "tcp", 9090, false), both(cli, other, "tcp", 8080, false),
		both(cli, srv, "udp", 5354, false))...)

	sockDenied := cl.counter(datapath.DirEgress, datapath.VerdictDrop, datapath.ReasonSockDenied)
	attempts := 0
	var worst time.Duration
	var lat []time.Duration
	for i := range 10 {
		for _, tc := range []struct {
			proto string
			dst   *pod
			port  int
		}{{"tcp", srv, 9090}, {"tcp", other, 8080}, {"udp", srv, 5354}} {
			for _, v6 := range []bool{false, true} {
				dst := netip.AddrPortFrom(tc.dst.ip(v6), uint16(tc.port))
				start := time.Now()
				c, err := cli.dial(tc.proto, dst, 2*time.Second)
				d := time.Since(start)
				attempts++
				if c != nil {
					c.Close()
				}
				if !isEPERM(err) {
					t.Errorf("attempt %d: connect %s %s: %v after %v, want EPERM", i, tc.proto, dst, err, d)
					continue
				}
				lat = append(lat, d)
				worst = max(worst, d)
			}
		}
	}
	// Unconnected UDP: sendto() goes through the sendmsg hooks.
	for _, v6 := range []bool{false, true} {
		var pc net.PacketConn
		mustNS(t, cli.ns, func() (err error) { pc, err = net.ListenPacket("udp", ":0"); return err })
		start := time.Now()
		_, err := pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(srv.ip(v6), 5354)))
		d := time.Since(start)
		pc.Close()
		attempts++
		if !isEPERM(err) {
			t.Errorf("sendto %s: %v, want EPERM", srv.ip(v6), err)
		} else {
			lat = append(lat, d)
			worst = max(worst, d)
		}
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		t.Logf("EPERM latency over %d denied connect/sendto: median %v, max %v", len(lat), lat[len(lat)/2], worst)
	}
	if worst >= 100*time.Millisecond {
		t.Errorf("a denied connect took %v to fail, want well under 100ms", worst)
	}
	if got := cl.counter(datapath.DirEgress, datapath.VerdictDrop, datapath.ReasonSockDenied) - sockDenied; got != uint64(attempts) {
		t.Errorf("sock-denied counted %d, want %d", got, attempts)
	}
}

// TestAllowSelectors: each kind of NetworkPolicy peer and port, through the
// kernel, agreeing with the compiler's Evaluate.
func TestAllowSelectors(t *testing.T) {
	n := newNode(t)
	srvPorts := []policy.ContainerPort{
		{Name: "http", Port: 8080, Protocol: policy.ProtoTCP},
		{Name: "metrics", Port: 9100, Protocol: policy.ProtoTCP},
		{Name: "dns", Port: 5353, Protocol: policy.ProtoUDP},
	}
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Ports: srvPorts, Index: 10})
	a := n.addPod(podSpec{Namespace: "prod", Name: "a", Labels: labels("role", "fe"), Index: 11})
	b := n.addPod(podSpec{Namespace: "prod", Name: "b", Labels: labels("role", "be"), Index: 12})
	c := n.addPod(podSpec{Namespace: "dev", Name: "c", Labels: labels("role", "fe"), Index: 13})
	d := n.addPod(podSpec{Namespace: "other", Name: "d", Labels: labels("role", "fe"), Index: 14})
	srv.listenTCP(t, 8080, 9100, 6999, 7000, 7001, 7002, 7003)
	srv.listenUDP(t, 5353, 5354, 6999, 7000, 7001, 7002, 7003)
	for _, p := range []*pod{a, b, c, d} {
		p.listenTCP(t, 8080)
	}
	n.waitReady(t)
	cl := newCluster(t, n, map[string]map[string]string{
		"prod": labels("env", "prod"), "dev": labels("env", "dev"), "other": labels("env", "other")})

	run := func(name string, pols []*networkingPolicy, flows ...flow) {
		t.Run(name, func(t *testing.T) {
			parent := cl.t
			cl.t = t
			defer func() { cl.t = parent }()
			for _, p := range pols {
				cl.setPolicy(p)
			}
			st := cl.apply()
			t.Logf("apply: %+v", st)
			cl.expect(flows...)
			for _, p := range pols {
				cl.c.DeletePolicy(policy.PolicyKey{Namespace: p.Namespace, Name: p.Name})
			}
			cl.apply()
		})
	}
	srvIn := func(rules ...networkingIngress) []*networkingPolicy {
		return []*networkingPolicy{netpol("prod", "srv-in", labels("app", "srv"), ingressOnly, rules, nil)}
	}

	run("podSelector", srvIn(ingressRule(peers(podSel(labels("role", "fe"))), port("tcp", 8080))),
		slices.Concat(
			both(a, srv, "tcp", 8080, true), both(b, srv, "tcp", 8080, false),
			both(c, srv, "tcp", 8080, false), both(d, srv, "tcp", 8080, false),
			both(a, srv, "tcp", 9100, false), both(a, srv, "udp", 5353, false))...)

	run("namespaceSelector", srvIn(ingressRule(peers(nsSel(labels("env", "dev"))))),
		slices.Concat(
			both(c, srv, "tcp", 8080, true), both(c, srv, "udp", 5353, true),
			both(a, srv, "tcp", 8080, false), both(d, srv, "tcp", 8080, false))...)

	run("namespaceAndPodSelector", srvIn(ingressRule(peers(nsPodSel(labels("env", "other"), labels("role", "fe"))), port("tcp", 8080))),
		slices.Concat(
			both(d, srv, "tcp", 8080, true), both(c, srv, "tcp", 8080, false),
			both(a, srv, "tcp", 8080, false))...)

	run("ipBlockExcept", srvIn(ingressRule(peers(
		ipBlock("10.200.0.0/24", b.ip4.String()+"/32"),
		ipBlock("fd00:200::/64", b.ip6.String()+"/128")), port("tcp", 8080))),
		slices.Concat(
			both(a, srv, "tcp", 8080, true), both(b, srv, "tcp", 8080, false),
			both(c, srv, "tcp", 8080, true), both(d, srv, "tcp", 8080, true),
			both(nil, srv, "tcp", 8080, true))...)

	run("ipBlockExceptEgress", []*networkingPolicy{netpol("prod", "a-out", labels("role", "fe"), egressOnly, nil,
		[]networkingEgress{egressRule(peers(
			ipBlock("10.200.0.0/24", srv.ip4.String()+"/32"),
			ipBlock("fd00:200::/64", srv.ip6.String()+"/128")), port("tcp", 8080))})},
		slices.Concat(
			both(a, srv, "tcp", 8080, false), both(a, b, "tcp", 8080, true),
			both(a, c, "tcp", 8080, true))...)

	run("namedPort", srvIn(ingressRule(nil, namedPort("tcp", "http"), namedPort("udp", "dns"))),
		slices.Concat(
			both(a, srv, "tcp", 8080, true), both(a, srv, "tcp", 9100, false),
			both(d, srv, "udp", 5353, true), both(d, srv, "udp", 5354, false))...)

	run("namedPortEgress", []*networkingPolicy{netpol("prod", "a-out", labels("role", "fe"), egressOnly, nil,
		[]networkingEgress{egressRule(peers(podSel(labels("app", "srv"))), namedPort("tcp", "metrics"))})},
		slices.Concat(
			both(a, srv, "tcp", 9100, true), both(a, srv, "tcp", 8080, false))...)

	var rangeFlows []flow
	for _, pr := range []string{"tcp", "udp"} {
		for _, p := range []struct {
			port int
			want bool
		}{{6999, false}, {7000, true}, {7001, true}, {7002, true}, {7003, false}} {
			rangeFlows = append(rangeFlows, both(a, srv, pr, p.port, p.want)...)
		}
	}
	run("endPort", srvIn(ingressRule(nil, portRange("tcp", 7000, 7002), portRange("udp", 7000, 7002))), rangeFlows...)
}

// TestRepliesPass: a server isolated for ingress and egress, with no egress
// allow at all, still answers the connections it accepts (TCP and UDP, a
// DNS-style server answering with sendto on an unconnected socket), while
// connections it starts itself are refused.
func TestRepliesPass(t *testing.T) {
	srv, cli, cl := srvAndClient(t)
	cl.enableSocketHooks()
	cl.setPolicy(netpol("prod", "srv", labels("app", "srv"), bothTypes,
		[]networkingIngress{ingressRule(peers(podSel(labels("role", "cli"))), port("tcp", 8080), port("udp", 5353))}, nil))
	cl.apply()

	replies := cl.counter(datapath.DirEgress, datapath.VerdictAllow, datapath.ReasonReply)
	cl.expect(slices.Concat(
		both(cli, srv, "tcp", 8080, true), both(cli, srv, "udp", 5353, true),
		both(srv, cli, "tcp", 8080, false), both(srv, cli, "udp", 5353, false),
		both(nil, srv, "tcp", 8080, true))...)
	if cl.counter(datapath.DirEgress, datapath.VerdictAllow, datapath.ReasonReply) == replies {
		t.Error("no reply counted at the server's egress")
	}

	// A longer conversation: every reply of an accepted connection passes.
	for _, v6 := range []bool{false, true} {
		conn, err := cli.dial("tcp", netip.AddrPortFrom(srv.ip(v6), 8080), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		for i := range 200 {
			msg := make([]byte, 1+i*7%1400)
			if _, err := conn.Write(msg); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			for got := 0; got < len(msg); {
				k, err := conn.Read(buf)
				if err != nil {
					t.Fatalf("round trip %d: %v", i, err)
				}
				got += k
			}
		}
		conn.Close()
	}

	// The server's own connections: refused at connect() by the hook.
	for _, v6 := range []bool{false, true} {
		for _, pr := range []string{"tcp", "udp"} {
			p := 8080
			if pr == "udp" {
				p = 5353
			}
			c, err := srv.dial(pr, netip.AddrPortFrom(cli.ip(v6), uint16(p)), time.Second)
			if c != nil {
				c.Close()
			}
			if !isEPERM(err) {
				t.Errorf("server connect %s to %s: %v, want EPERM", pr, cli.ip(v6), err)
			}
		}
	}
}
