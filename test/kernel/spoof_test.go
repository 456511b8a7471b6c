package kernel

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/pkg/datapath"
)

// TestSpoofedSourceDropped: a datagram leaving a pod with a source address
// that is not the pod's (another pod's address written with a raw socket,
// or an extra address added inside the pod) is dropped at the host veth,
// counted under SPOOFED and reported as an event, whatever the policy;
// the pod's own traffic passes.
func TestSpoofedSourceDropped(t *testing.T) {
	n := newNode(t)
	srv := n.addPod(podSpec{Namespace: "prod", Name: "srv", Labels: labels("app", "srv"), Index: 10})
	a := n.addPod(podSpec{Namespace: "prod", Name: "a", Labels: labels("role", "a"), Index: 11})
	b := n.addPod(podSpec{Namespace: "prod", Name: "b", Labels: labels("role", "b"), Index: 12})
	sink := newUDPSink(t, srv, 5353)
	n.waitReady(t)
	cl := newCluster(t, n, map[string]map[string]string{"prod": nil})
	ev := collectEvents(t, cl.dp)

	// Extra addresses inside pod a (the pod's own choice: root in the pod).
	extra4, extra6 := netip.MustParseAddr("10.200.0.99"), netip.MustParseAddr("fd00:200::99")
	ph, err := netlink.NewHandleAt(a.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []netip.Addr{extra4, extra6} {
		if err := ph.AddrAdd(eth0, hostAddr(x)); err != nil {
			t.Fatal(err)
		}
	}

	const perCase = 5
	spoofedBefore := cl.counter(datapath.DirEgress, datapath.VerdictDrop, datapath.ReasonSpoofed)
	send := func(flow uint32, src netip.Addr, dst netip.Addr) {
		t.Helper()
		mustNS(t, a.ns, func() error {
			c, err := net.ListenUDP(netFor("udp", dst), net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
			if err != nil {
				return err
			}
			defer c.Close()
			for i := range perCase {
				if _, err := c.WriteTo(datagram(flow, uint32(i)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 5353))); err != nil {
					return err
				}
			}
			return nil
		})
	}
	// Control: the pod's own addresses pass.
	send(1, a.ip4, srv.ip4)
	send(2, a.ip6, srv.ip6)
	// Spoofed: extra addresses.
	send(3, extra4, srv.ip4)
	send(4, extra6, srv.ip6)
	// Spoofed: pod b's address, written by a raw socket in pod a.
	mustNS(t, a.ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for i := range perCase {
			pkt := rawUDP4(b.ip4, srv.ip4, 40000, 5353, datagram(5, uint32(i)))
			if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: srv.ip4.As4()}); err != nil {
				return err
			}
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)

	for flow, what := range map[uint32]string{1: "own v4", 2: "own v6"} {
		if got, missing := sink.received(flow, perCase); got != perCase {
			t.Errorf("%s: %d of %d arrived (missing %s)", what, got, perCase, missing)
		}
	}
	for flow, what := range map[uint32]string{3: "extra v4 address", 4: "extra v6 address", 5: "raw socket, pod b's v4 address"} {
		if got, _ := sink.received(flow, perCase); got != 0 {
			t.Errorf("spoofed (%s): %d datagrams reached the server", what, got)
		}
	}
	got := cl.counter(datapath.DirEgress, datapath.VerdictDrop, datapath.ReasonSpoofed) - spoofedBefore
	t.Logf("spoofed drops counted: %d (sent %d)", got, 3*perCase)
	if got != 3*perCase {
		t.Errorf("spoofed counter +%d, want +%d", got, 3*perCase)
	}
	for _, src := range []netip.Addr{extra4, extra6, b.ip4} {
		e, ok := ev.wait(2*time.Second, func(e *datapath.FlowEvent) bool {
			return e.Reason == datapath.ReasonSpoofed && e.SrcAddr() == src
		})
		if !ok {
			t.Errorf("no SPOOFED event from %s", src)
			continue
		}
		if e.Verdict != datapath.VerdictDrop || e.Dir != datapath.DirEgress || e.Hook != datapath.HookTC ||
			int(e.Ifindex) != a.hostIfindex || e.EpId != uint32(a.hostIfindex) ||
			e.DstAddr() != srv.ip(src.Is6()) || e.DstPort() != 5353 {
			t.Errorf("spoof event from %s: %+v", src, e)
		}
	}
}

func datagram(flow, seq uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, flow)
	binary.BigEndian.PutUint32(b[4:], seq)
	return b
}

// rawUDP4 builds an IPv4 packet (header checksum and id are filled by the
// kernel for IP_HDRINCL sockets; UDP checksum 0 = none).
func rawUDP4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	ip := make([]byte, 20+8+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	return ip
}
