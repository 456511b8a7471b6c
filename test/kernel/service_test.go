package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/policy"
)

// Service addresses of the node in TestServiceEgress, inside its private
// namespaces: a ClusterIP translated to the server pod, one translated to
// the node itself (a hostNetwork backend), and one that is not translated
// at all but answered by the node (no NAT: decided on the address as sent).
var (
	svcRange4, svcRange6 = netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/112")
	svcPod4, svcPod6     = netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")
	svcHost4, svcHost6   = netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00:96::11")
	svcLocal4, svcLocal6 = netip.MustParseAddr("10.96.0.12"), netip.MustParseAddr("fd00:96::12")
)

// svcNAT is kube-proxy's part, as nftables rules in the node namespace:
// destination NAT at prerouting, before zt's netfilter hook.
func svcNAT(srv *pod) string {
	var b strings.Builder
	for _, fam := range []struct {
		table, match  string
		svcPod, svcH  netip.Addr
		backend, node string
	}{
		{"ip", "ip", svcPod4, svcHost4, srv.ip4.String(), nodeIP4.String()},
		{"ip6", "ip6", svcPod6, svcHost6, "[" + srv.ip6.String() + "]", "[" + nodeIP6.String() + "]"},
	} {
		fmt.Fprintf(&b, "table %s ztsvc {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n", fam.table)
		for _, pr := range []string{"tcp", "udp"} {
			fmt.Fprintf(&b, "  %s daddr %s %s dport 80 dnat to %s:8080\n", fam.match, fam.svcPod, pr, fam.backend)
		}
		fmt.Fprintf(&b, "  %s daddr %s tcp dport 80 dnat to %s:7070\n }\n}\n", fam.match, fam.svcH, fam.node)
	}
	return b.String()
}

func runInNS(t testing.TB, ns int, stdin string, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := netnsutil.Do(ns, cmd.Start); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out.String())
	}
}

// nodeListenTCP runs a TCP echo server on port in the node namespace (a
// hostNetwork process).
func (n *node) nodeListenTCP(t testing.TB, port int) {
	t.Helper()
	tmp := &pod{ns: n.ns, Name: "node"}
	tmp.listenTCP(t, port)
}

// svcProbe is one connection to a Service address and what must happen.
type svcProbe struct {
	from  *pod
	to    netip.Addr
	proto string
	port  int
	want  bool
}

func (p svcProbe) String() string {
	return fmt.Sprintf("%s -> %s %s", p.from, netip.AddrPortFrom(p.to, uint16(p.port)), p.proto)
}

func svcExpect(t *testing.T, cl *cluster, probes ...svcProbe) {
	t.Helper()
	rd, err := cl.dp.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timeout := 500 * time.Millisecond
			if p.want {
				timeout = 2 * time.Second
			}
			errs[i] = p.from.probe(p.proto, netip.AddrPortFrom(p.to, uint16(p.port)), timeout)
		}()
	}
	wg.Wait()
	failed := false
	for i, p := range probes {
		if got := errs[i] == nil; got != p.want {
			failed = true
			t.Errorf("%s: passed=%v (err %v), want %v", p, got, errs[i], p.want)
		}
		// Service addresses are the socket hooks' to pass: a denial is
		// a drop after the NAT, never an EPERM on the address.
		if errs[i] != nil && isEPERM(errs[i]) {
			t.Errorf("%s: EPERM from the socket hook on a Service address", p)
		}
	}
	if failed {
		t.Logf("counters:%s", nonZeroCounters(t, cl.dp))
		for {
			rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
			rec, err := rd.Read()
			if err != nil {
				break
			}
			if ev, err := datapath.DecodeEvent(rec.RawSample); err == nil {
				t.Logf("event: %s %s/%s %s %s:%d -> %s:%d proto %d ifindex %d peer %v",
					ev.Hook, ev.Dir, ev.Verdict, ev.Reason, ev.SrcAddr(), ev.SrcPort(), ev.DstAddr(), ev.DstPort(), ev.Proto, ev.Ifindex, ev.PeerId)
			}
		}
	}
}

// TestServiceEgress: egress to a Service address is decided on the pod
// (or node) kube-proxy's NAT sends it to, as upstream NetworkPolicy
// requires, in both families, for TCP and UDP, with the client's ingress
// isolated too (the reply from the Service address must pass as a reply):
//   - allowed to the server pod: the ClusterIP works, a ClusterIP sent to
//     the node (a hostNetwork backend) does not;
//   - an ipBlock whose except holds the server: the ClusterIP of the
//     server is blocked although the ipBlock covers the Service range;
//   - an address in the Service range that no NAT translates is decided as
//     sent (here delivered to the node, through the local-in hook);
//   - a live connection is cut when the allow is revoked;
//   - the drop is counted and reported by the netfilter hook, naming the
//     translated destination.
func TestServiceEgress(t *testing.T) {
	n := newNode(t)
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 20})
	cli := n.addPod(podSpec{Namespace: "prod", Name: "cli", Labels: labels("role", "cli"), Index: 21})
	srv.listenTCP(t, 8080)
	srv.listenUDP(t, 8080)
	n.nodeListenTCP(t, 7070)
	n.waitReady(t)
	for _, a := range []netip.Addr{svcLocal4, svcLocal6} {
		lo, err := n.h.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if err := n.h.AddrAdd(lo, hostAddr(a)); err != nil {
			t.Fatalf("node addr %s: %v", a, err)
		}
	}
	runInNS(t, int(n.ns), svcNAT(srv), "nft", "-f", "-")

	cl := newCluster(t, n, map[string]map[string]string{"prod": nil})
	cl.enableSocketHooks()
	mustNS(t, n.ns, cl.dp.AttachNetfilter)
	recordLinks(cl.root)
	if err := cl.dp.SetServiceCIDRs([]netip.Prefix{svcRange4, svcRange6}); err != nil {
		t.Fatal(err)
	}
	if err := cl.dp.SetServiceMark(datapath.DefaultServiceMark); err != nil {
		t.Fatal(err)
	}
	if got, err := cl.dp.ServiceCIDRs(); err != nil || len(got) != 2 {
		t.Fatalf("service ranges read back: %v, %v", got, err)
	}

	all := func(from *pod, want map[string]bool) []svcProbe {
		var out []svcProbe
		for _, v6 := range []bool{false, true} {
			pick := func(a, b netip.Addr) netip.Addr {
				if v6 {
					return b
				}
				return a
			}
			out = append(out,
				svcProbe{from, pick(svcPod4, svcPod6), "tcp", 80, want["pod"]},
				svcProbe{from, pick(svcPod4, svcPod6), "udp", 80, want["pod"]},
				svcProbe{from, pick(svcHost4, svcHost6), "tcp", 80, want["host"]},
				svcProbe{from, pick(svcLocal4, svcLocal6), "tcp", 7070, want["local"]},
			)
		}
		return out
	}

	// Not isolated: every address works, and nothing is deferred.
	svcExpect(t, cl, all(cli, map[string]bool{"pod": true, "host": true, "local": true})...)

	// Isolated both ways, egress allowed to the server pod on 8080.
	toSrv := netpol("prod", "cli-out", labels("role", "cli"), bothTypes, nil,
		[]networkingEgress{egressRule(peers(podSel(labels("app", "srv"))), port("tcp", 8080), port("udp", 8080))})
	cl.setPolicy(toSrv)
	cl.apply()
	drops := cl.counter(datapath.DirEgress, datapath.VerdictDrop, datapath.ReasonPolicyDenied)
	allowed := cl.counter(datapath.DirEgress, datapath.VerdictAllow, datapath.ReasonAllowed)
	svcExpect(t, cl, all(cli, map[string]bool{"pod": true})...)
	if got := cl.counter(datapath.DirEgress, datapath.VerdictDrop, datapath.ReasonPolicyDenied); got <= drops {
		t.Errorf("no egress policy drop counted for the Service to the node (%d before, %d after)", drops, got)
	}
	if got := cl.counter(datapath.DirEgress, datapath.VerdictAllow, datapath.ReasonAllowed); got <= allowed {
		t.Errorf("no allowed egress counted for the Service to the pod (%d before, %d after)", allowed, got)
	}
	checkNFDrop(t, cl, cli)

	// An agent restart attaches the program again: the kernel refuses a
	// second BPF link at one priority of a hook (EBUSY), so the new link
	// takes the other priority before the old one goes; twice over, with
	// the verdicts unchanged (the leftovers check sees every link go).
	for i := 0; i < 2; i++ {
		mustNS(t, n.ns, cl.dp.AttachNetfilter)
		recordLinks(cl.root)
		if !cl.dp.NetfilterAttached() {
			t.Fatalf("re-attach %d: netfilter links not pinned", i+1)
		}
	}
	svcExpect(t, cl, all(cli, map[string]bool{"pod": true})...)

	// Also an ipBlock over the whole Service range: the untranslated
	// address (the node answers it) now passes; the one translated to the
	// node's own address still does not.
	cl.setPolicy(netpol("prod", "cli-out-svc", labels("role", "cli"), egressOnly, nil,
		[]networkingEgress{egressRule(peers(ipBlock(svcRange4.String()), ipBlock(svcRange6.String())))}))
	cl.apply()
	svcExpect(t, cl, all(cli, map[string]bool{"pod": true, "local": true})...)
	cl.c.DeletePolicy(policy.PolicyKey{Namespace: "prod", Name: "cli-out-svc"})

	// An ipBlock that covers the pods, the node and the Service range but
	// excepts the server: its ClusterIP is blocked (decided on the server's
	// address, not on the ClusterIP the ipBlock covers).
	cl.setPolicy(netpol("prod", "cli-out", labels("role", "cli"), bothTypes, nil,
		[]networkingEgress{egressRule(peers(
			ipBlock("10.0.0.0/8", srv.ip4.String()+"/32"),
			ipBlock("fd00::/16", srv.ip6.String()+"/128")))}))
	cl.apply()
	// (The node's addresses are in those ipBlocks: a hostNetwork backend
	// is reachable, as it is directly.)
	svcExpect(t, cl, all(cli, map[string]bool{"host": true, "local": true})...)

	// A live connection through the ClusterIP is cut when its allow goes.
	cl.setPolicy(toSrv)
	cl.apply()
	c, err := cli.dial("tcp", netip.AddrPortFrom(svcPod4, 80), 2*time.Second)
	if err != nil {
		t.Fatalf("dial the ClusterIP: %v", err)
	}
	defer c.Close()
	if err := echo(c, "before"); err != nil {
		t.Fatalf("echo through the ClusterIP while allowed: %v", err)
	}
	cl.setPolicy(netpol("prod", "cli-out", labels("role", "cli"), bothTypes, nil, nil))
	cl.apply()
	if err := echo(c, "after"); err == nil {
		t.Error("a live connection through the ClusterIP still echoes after its allow was revoked")
	}
}

// echo writes msg on c and waits 500 ms for it to come back.
func echo(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 64)
	k, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:k]) != msg {
		return fmt.Errorf("echo %q, want %q", buf[:k], msg)
	}
	return nil
}

// checkNFDrop: the event of a denied Service connection comes from the
// netfilter hook and names the client and the translated destination
// (the node's address, port 7070), not the ClusterIP.
func checkNFDrop(t *testing.T, cl *cluster, cli *pod) {
	t.Helper()
	rd, err := cl.dp.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	_ = cli.probe("tcp", netip.AddrPortFrom(svcHost4, 80), 300*time.Millisecond)
	var seen []string
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
		rec, err := rd.Read()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			t.Fatal(err)
		}
		ev, err := datapath.DecodeEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Hook != datapath.HookNF {
			continue
		}
		seen = append(seen, fmt.Sprintf("%s %s %s -> %s:%d", ev.Verdict, ev.Reason, ev.SrcAddr(), ev.DstAddr(), ev.DstPort()))
		if ev.SrcAddr() == cli.ip4 && ev.DstAddr() == nodeIP4 && ev.DstPort() == 7070 &&
			ev.Verdict == datapath.VerdictDrop && ev.Reason == datapath.ReasonPolicyDenied &&
			ev.Ifindex == uint32(cli.hostIfindex) && ev.PeerId == datapath.IdentityHost {
			return
		}
	}
	t.Errorf("no netfilter drop event %s -> %s:7070 policy-denied from host peer at ifindex %d; netfilter events: %q",
		cli.ip4, nodeIP4, cli.hostIfindex, seen)
}
