package kernel

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/pkg/policy"
)

// Addresses used inside the test's private namespaces only.
var (
	nodeIP4 = netip.MustParseAddr("10.250.0.1")
	nodeIP6 = netip.MustParseAddr("fd00:250::1")
	// The pod's default gateway: link-local, answered by a static
	// neighbour entry pointing at the host-side veth (as Calico does).
	gw4 = netip.MustParseAddr("169.254.1.1")
	gw6 = netip.MustParseAddr("fe80::1")
)

func podIP4(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 200, 0, byte(n)}) }
func podIP6(n int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:200::%x", n))
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// inNS runs fn on a locked OS thread inside ns.
func inNS(ns netns.NsHandle, fn func() error) error { return netnsutil.Do(int(ns), fn) }

func mustNS(t testing.TB, ns netns.NsHandle, fn func() error) {
	t.Helper()
	if err := inNS(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// newNS creates an anonymous network namespace, alive as long as its
// handle (closed at cleanup), sockets or processes in it. It is not bind
// mounted under /run/netns: such mounts can become undeletable (EBUSY)
// when anything on the machine runs "ip netns add" meanwhile, which
// re-binds /run/netns over itself with ours underneath. Helpers reach the
// namespace by /proc/self/fd path or an inherited descriptor.
func newNS(t testing.TB) netns.NsHandle {
	t.Helper()
	fd, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	ns := netns.NsHandle(fd)
	track(func() { created.netns++ })
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("close netns: %v", err)
		}
		track(func() { created.netnsClosed++ })
	})
	return ns
}

// nsPath names a namespace handle of this process as a path.
func nsPath(ns netns.NsHandle) string { return fmt.Sprintf("/proc/self/fd/%d", int(ns)) }

// node is the per-test namespace playing the Kubernetes node: it routes
// between the pods (forwarding on), owns the host-side veths and carries
// the node's own addresses on its loopback.
type node struct {
	t      testing.TB
	tag    string // unique per test
	ns     netns.NsHandle
	h      *netlink.Handle
	pods   []*pod
	nextIf int
}

func newNode(t testing.TB) *node {
	t.Helper()
	n := &node{t: t, tag: randHex(4)}
	n.ns = newNS(t)
	h, err := netlink.NewHandleAt(n.ns)
	if err != nil {
		t.Fatal(err)
	}
	n.h = h
	t.Cleanup(h.Close)
	mustNS(t, n.ns, func() error {
		for _, s := range []string{
			"/proc/sys/net/ipv4/ip_forward",
			"/proc/sys/net/ipv6/conf/all/forwarding",
			"/proc/sys/net/ipv6/conf/default/forwarding",
		} {
			if err := os.WriteFile(s, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	// The node's own addresses live on lo (no dummy module here).
	for _, a := range []netip.Addr{nodeIP4, nodeIP6} {
		if err := h.AddrAdd(lo, hostAddr(a)); err != nil {
			t.Fatalf("node addr %s: %v", a, err)
		}
	}
	return n
}

func hostAddr(a netip.Addr) *netlink.Addr {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: unix.IFA_F_NODAD}
}

func hostRoute(link int, a netip.Addr) *netlink.Route {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return &netlink.Route{LinkIndex: link, Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Scope: netlink.SCOPE_LINK}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// pod is one pod: a network namespace with eth0 (pod IPs /32 and /128)
// whose peer is a host-side veth in the node namespace.
type pod struct {
	node        *node
	Namespace   string
	Name        string
	Labels      map[string]string
	Ports       []policy.ContainerPort
	ns          netns.NsHandle
	hostIf      string
	hostIfindex int
	ip4, ip6    netip.Addr
}

func (p *pod) key() policy.PodKey { return policy.PodKey{Namespace: p.Namespace, Name: p.Name} }
func (p *pod) String() string     { return p.Namespace + "/" + p.Name }

func (p *pod) ip(v6 bool) netip.Addr {
	if v6 {
		return p.ip6
	}
	return p.ip4
}

// policyPod is the compiler's view of the pod.
func (p *pod) policyPod() policy.Pod {
	return policy.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels,
		IPs: []netip.Addr{p.ip4, p.ip6}, Ports: p.Ports}
}

type podSpec struct {
	Namespace, Name string
	Labels          map[string]string
	Ports           []policy.ContainerPort
	Index           int // address: 10.200.0.<Index>, fd00:200::<Index>
}

// addPod creates the pod namespace and wires it to the node.
func (n *node) addPod(s podSpec) *pod {
	t := n.t
	t.Helper()
	n.nextIf++
	p := &pod{node: n, Namespace: s.Namespace, Name: s.Name, Labels: s.Labels, Ports: s.Ports,
		ip4: podIP4(s.Index), ip6: podIP6(s.Index), hostIf: fmt.Sprintf("zv%d", n.nextIf)}
	p.ns = newNS(t)
	ph, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	hh := n.h

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostIf}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(p.ns))}
	if err := hh.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", p.hostIf, err)
	}
	host, err := hh.LinkByName(p.hostIf)
	if err != nil {
		t.Fatal(err)
	}
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	lo, err := ph.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	p.hostIfindex = host.Attrs().Index
	hostMAC, podMAC := host.Attrs().HardwareAddr, eth0.Attrs().HardwareAddr

	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("pod %s: %s: %v", p, what, err)
		}
	}
	for _, a := range []netip.Addr{p.ip4, p.ip6} {
		check("addr", ph.AddrAdd(eth0, hostAddr(a)))
	}
	check("lo up", ph.LinkSetUp(lo))
	check("eth0 up", ph.LinkSetUp(eth0))
	check("host veth up", hh.LinkSetUp(host))
	// Pod: default routes via the link-local gateway, static neighbours.
	podIdx := eth0.Attrs().Index
	check("gw4 route", ph.RouteAdd(hostRoute(podIdx, gw4)))
	check("default4", ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: gw4.AsSlice()}))
	check("default6", ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: gw6.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}))
	for _, g := range []netip.Addr{gw4, gw6} {
		check("gw neigh", ph.NeighAdd(&netlink.Neigh{LinkIndex: podIdx, Family: family(g),
			State: netlink.NUD_PERMANENT, IP: g.AsSlice(), HardwareAddr: hostMAC}))
	}
	// Node: host routes to the pod and static neighbours.
	for _, a := range []netip.Addr{p.ip4, p.ip6} {
		check("host route", hh.RouteAdd(hostRoute(p.hostIfindex, a)))
		check("host neigh", hh.NeighAdd(&netlink.Neigh{LinkIndex: p.hostIfindex, Family: family(a),
			State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: podMAC}))
	}
	n.pods = append(n.pods, p)
	return p
}

// ---- sockets in namespaces ----

// listenTCP starts a TCP echo server on port (both families) in the pod.
func (p *pod) listenTCP(t testing.TB, ports ...int) {
	t.Helper()
	for _, port := range ports {
		var ln net.Listener
		mustNS(t, p.ns, func() (err error) {
			ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
			return err
		})
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 4096)
					for {
						_ = c.SetDeadline(time.Now().Add(10 * time.Second))
						n, err := c.Read(buf)
						if err != nil {
							return
						}
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
}

// listenUDP starts a UDP echo server on port (both families) in the pod.
// It answers with WriteTo on the unconnected socket, as DNS servers do.
func (p *pod) listenUDP(t testing.TB, ports ...int) {
	t.Helper()
	for _, port := range ports {
		var pc net.PacketConn
		mustNS(t, p.ns, func() (err error) {
			pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
			return err
		})
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue // e.g. EPERM from the socket hook on a reply
				}
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}()
	}
}

func netFor(proto string, dst netip.Addr) string {
	if dst.Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// dial opens a socket in the pod's namespace and connects it.
func (p *pod) dial(proto string, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNS(p.ns, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial(netFor(proto, dst.Addr()), dst.String())
		return err
	})
	return c, err
}

// probe reports whether a round trip proto/dst works from the pod: a TCP
// connect and a one-message echo, or a UDP datagram and its echo. The
// error says why not.
func (p *pod) probe(proto string, dst netip.AddrPort, timeout time.Duration) error {
	start := time.Now()
	c, err := p.dial(proto, dst, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := []byte("probe-" + randHex(6))
	buf := make([]byte, 64)
	// UDP: resend a couple of times within the timeout.
	tries := 1
	if proto == "udp" {
		tries = 3
	}
	for i := range tries {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		left := time.Until(start.Add(timeout * time.Duration(i+1) / time.Duration(tries)))
		_ = c.SetReadDeadline(time.Now().Add(max(left, 10*time.Millisecond)))
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return err
			}
			if string(buf[:n]) == string(msg) {
				return nil
			}
		}
	}
	return os.ErrDeadlineExceeded
}

// nodeEcho runs a UDP echo server on port 7 in the node namespace, for
// readiness checks.
func (n *node) nodeEcho(t testing.TB) {
	t.Helper()
	var pc net.PacketConn
	mustNS(t, n.ns, func() (err error) {
		pc, err = net.ListenPacket("udp", ":7")
		return err
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			_, _ = pc.WriteTo(buf[:k], from)
		}
	}()
}

// waitReady waits until every pod exchanges UDP with the node in both
// families: a fresh veth drops packets until link watch activates its
// qdisc (up to a second), which must not be mistaken for policy.
func (n *node) waitReady(t testing.TB) {
	t.Helper()
	n.nodeEcho(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(n.pods))
	for _, p := range n.pods {
		for _, dst := range []netip.Addr{nodeIP4, nodeIP6} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				deadline := time.Now().Add(10 * time.Second)
				for {
					err := p.probe("udp", netip.AddrPortFrom(dst, 7), 300*time.Millisecond)
					if err == nil {
						return
					}
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("pod %s never reached the node at %s: %v", p, dst, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	var all []string
	for err := range errs {
		all = append(all, err.Error())
	}
	if len(all) > 0 {
		t.Fatal(strings.Join(all, "\n"))
	}
}

// fromNode runs a probe from the node namespace itself (kubelet probes).
func (n *node) probe(proto string, dst netip.AddrPort, timeout time.Duration) error {
	tmp := &pod{ns: n.ns, Name: "node"}
	return tmp.probe(proto, dst, timeout)
}
