package kernel

import (
	"errors"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
)

// TestICMPErrorsReachIsolatedPods: a pod isolated both ways sends an
// allowed UDP datagram to a port nobody listens on. The peer's kernel
// answers with an ICMP port unreachable (ICMPv6 in IPv6), which is not
// allowed by any rule, but is about the pod's own allowed flow: it passes
// the pod's ingress isolation, so the connected socket fails at once with
// ECONNREFUSED instead of waiting out its timeout. The same datagram to a
// pod the policy does not allow gets nothing back.
func TestICMPErrorsReachIsolatedPods(t *testing.T) {
	n := newNode(t)
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10})
	other := n.addPod(podSpec{Namespace: "prod", Name: "other", Labels: labels("app", "other"), Index: 12})
	cli := n.addPod(podSpec{Namespace: "prod", Name: "cli", Labels: labels("role", "cli"), Index: 11})
	n.waitReady(t)
	cl := newCluster(t, n, map[string]map[string]string{"prod": nil})
	cl.setPolicy(netpol("prod", "cli", labels("role", "cli"), bothTypes, nil,
		[]networkingEgress{egressRule(peers(podSel(labels("app", "srv"))), port("udp", 6000))}))
	cl.apply()

	send := func(dst netip.Addr) error {
		c, err := cli.dial("udp", netip.AddrPortFrom(dst, 6000), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 16)
		for range 3 {
			if _, err := c.Write([]byte("anyone?")); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
		}
		return os.ErrDeadlineExceeded
	}
	for _, v6 := range []bool{false, true} {
		related := cl.counter(datapath.DirIngress, datapath.VerdictAllow, datapath.ReasonReply)
		start := time.Now()
		if err := send(srv.ip(v6)); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("v6=%v: UDP to a closed port of an allowed peer: %v, want ECONNREFUSED from its ICMP error", v6, err)
		} else {
			t.Logf("v6=%v: ECONNREFUSED after %s", v6, time.Since(start).Round(time.Microsecond))
		}
		if got := cl.counter(datapath.DirIngress, datapath.VerdictAllow, datapath.ReasonReply); got <= related {
			t.Errorf("v6=%v: the ICMP error was not counted as part of the allowed flow", v6)
		}
		// Not allowed: the socket hooks are off here, so tc drops the
		// datagram on its way out and nothing comes back.
		if err := send(other.ip(v6)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("v6=%v: UDP to a peer the policy does not allow: %v, want no answer", v6, err)
		}
	}
}
