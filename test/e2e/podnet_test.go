package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/pkg/datapath"
)

// Ports every test pod serves (and declares as "http" and "echo").
const (
	httpPort = 8080
	echoPort = 9090
)

// The pods' default gateway: link-local, resolved by a static neighbour
// entry to the host-side veth's MAC (as Calico does). Never an address of
// the root namespace.
var gateway = netip.MustParseAddr("169.254.1.1")

// podNet builds pods as network namespaces behind host-side veths in the
// root namespace, the routed-CNI way: `<podIP>/32 dev <hostveth> scope
// link` in the root namespace, which is how the agent finds the interface.
// Addresses are 10.231.<subnet>.<n>, a range unlikely to exist on the
// machine, random per run; traffic never leaves the test's namespaces.
type podNet struct {
	t      testing.TB
	tag    string // 6 hex digits, unique per run
	subnet byte
	mu     sync.Mutex
	next   int
	pods   []*pod
}

// newPodNet turns on IPv4 forwarding in the root namespace (pod-to-pod
// traffic crosses it) and restores the previous value at cleanup.
func newPodNet(t testing.TB) *podNet {
	t.Helper()
	n := &podNet{t: t, tag: randHex(3), next: 10}
	b := make([]byte, 1)
	for n.subnet == 0 || n.subnet == 255 {
		_, _ = rand.Read(b)
		n.subnet = b[0]
	}
	setSysctl(t, "net/ipv4/ip_forward", "1")
	return n
}

// setSysctl writes value to /proc/sys/<key> and restores the old value at
// cleanup.
func setSysctl(t testing.TB, key, value string) {
	t.Helper()
	path := "/proc/sys/" + key
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	prev := strings.TrimSpace(string(old))
	if prev == value {
		return
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Fatalf("sysctl %s=%s: %v", key, value, err)
	}
	t.Logf("sysctl %s: %s -> %s (restored at cleanup)", key, prev, value)
	t.Cleanup(func() {
		if err := os.WriteFile(path, []byte(prev), 0o644); err != nil {
			t.Errorf("restore sysctl %s=%s: %v", key, prev, err)
		}
	})
}

// nextIP hands out the next pod address of this run.
func (n *podNet) nextIP() (netip.Addr, int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := n.next
	n.next++
	if i > 250 {
		n.t.Fatal("podNet: out of addresses")
	}
	return netip.AddrFrom4([4]byte{10, 231, n.subnet, byte(i)}), i
}

// pod is a pod's network namespace with eth0 (its IP/32) whose peer is a
// host-side veth in the root namespace, plus a TCP echo server on
// httpPort and a UDP echo server on echoPort.
type pod struct {
	Namespace, Name string
	Labels          map[string]string
	IP              netip.Addr
	netnsName       string
	ns              netns.NsHandle
	hostIf          string
	hostIfindex     int
	udp             *udpServer
}

func (p *pod) String() string { return p.Namespace + "/" + p.Name }

// addPod creates the pod's network namespace, veth pair, addresses,
// routes and servers. Everything is removed at cleanup.
func (n *podNet) addPod(namespace, name string, labels map[string]string) *pod {
	t := n.t
	t.Helper()
	ip, idx := n.nextIP()
	p := &pod{Namespace: namespace, Name: name, Labels: labels, IP: ip,
		netnsName: fmt.Sprintf("zte2e-%s-%d", n.tag, idx),
		hostIf:    fmt.Sprintf("zte%s%d", n.tag, idx)}

	if out, err := exec.Command("ip", "netns", "add", p.netnsName).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", p.netnsName, err, out)
	}
	t.Cleanup(func() {
		if p.ns.IsOpen() {
			p.ns.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", p.netnsName).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", p.netnsName, err, out)
		}
	})
	ns, err := netns.GetFromName(p.netnsName)
	if err != nil {
		t.Fatal(err)
	}
	p.ns = ns

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostIf}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", p.hostIf, err)
	}
	// Deleting the host side deletes the peer and the host route with it.
	t.Cleanup(func() {
		l, err := netlink.LinkByName(p.hostIf)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				t.Errorf("find %s: %v", p.hostIf, err)
			}
			return
		}
		if err := netlink.LinkDel(l); err != nil {
			t.Errorf("delete %s: %v", p.hostIf, err)
		}
	})
	host, err := netlink.LinkByName(p.hostIf)
	if err != nil {
		t.Fatal(err)
	}
	p.hostIfindex = host.Attrs().Index
	ph, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	lo, err := ph.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("pod %s: %s: %v", p, what, err)
		}
	}
	hostMAC, podMAC := host.Attrs().HardwareAddr, eth0.Attrs().HardwareAddr
	podIdx := eth0.Attrs().Index
	check("address", ph.AddrAdd(eth0, &netlink.Addr{IPNet: prefix32(ip)}))
	check("lo up", ph.LinkSetUp(lo))
	check("eth0 up", ph.LinkSetUp(eth0))
	check("gateway route", ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Dst: prefix32(gateway), Scope: netlink.SCOPE_LINK}))
	check("default route", ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: gateway.AsSlice()}))
	check("gateway neighbour", ph.NeighAdd(&netlink.Neigh{LinkIndex: podIdx, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: gateway.AsSlice(), HardwareAddr: hostMAC}))
	// Root namespace: the host veth carries no address; a /32 route and a
	// static neighbour lead to the pod.
	check("host veth up", netlink.LinkSetUp(host))
	check("host route", netlink.RouteAdd(&netlink.Route{LinkIndex: p.hostIfindex, Dst: prefix32(ip), Scope: netlink.SCOPE_LINK}))
	check("host neighbour", netlink.NeighAdd(&netlink.Neigh{LinkIndex: p.hostIfindex, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: podMAC}))

	p.listenTCP(t)
	p.udp = p.listenUDP(t)
	n.mu.Lock()
	n.pods = append(n.pods, p)
	n.mu.Unlock()
	return p
}

func prefix32(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

// ifindexes are the host veths made so far.
func (n *podNet) ifindexes() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []int
	for _, p := range n.pods {
		out = append(out, p.hostIfindex)
	}
	return out
}

// inNS runs fn on a locked OS thread inside ns.
func inNS(ns netns.NsHandle, fn func() error) error { return netnsutil.Do(int(ns), fn) }

// listenTCP serves a line echo on httpPort.
func (p *pod) listenTCP(t testing.TB) {
	var ln net.Listener
	if err := inNS(p.ns, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", httpPort))
		return err
	}); err != nil {
		t.Fatalf("pod %s: listen tcp: %v", p, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// udpServer echoes datagrams on echoPort, except stream datagrams
// ("S <flow> <seq>"), which it records.
type udpServer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	seen map[uint32]map[uint64]bool
}

func (p *pod) listenUDP(t testing.TB) *udpServer {
	s := &udpServer{seen: map[uint32]map[uint64]bool{}}
	if err := inNS(p.ns, func() (err error) {
		s.conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: echoPort})
		return err
	}); err != nil {
		t.Fatalf("pod %s: listen udp: %v", p, err)
	}
	_ = s.conn.SetReadBuffer(4 << 20)
	t.Cleanup(func() { s.conn.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := s.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if f := strings.Fields(string(buf[:n])); len(f) == 3 && f[0] == "S" {
				flow, _ := strconv.ParseUint(f[1], 10, 32)
				seq, _ := strconv.ParseUint(f[2], 10, 64)
				s.mu.Lock()
				if s.seen[uint32(flow)] == nil {
					s.seen[uint32(flow)] = map[uint64]bool{}
				}
				s.seen[uint32(flow)][seq] = true
				s.mu.Unlock()
				continue
			}
			_, _ = s.conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return s
}

// received reports how many of seqs 0..sent-1 of flow arrived and the
// first few missing ones.
func (s *udpServer) received(flow uint32, sent uint64) (int, []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []uint64
	got := 0
	for i := uint64(0); i < sent; i++ {
		if s.seen[flow][i] {
			got++
		} else if len(missing) < 10 {
			missing = append(missing, i)
		}
	}
	return got, missing
}

// ---- probes ----

type proto string

const (
	tcp proto = "tcp"
	udp proto = "udp"
)

func portOf(pr proto) int {
	if pr == tcp {
		return httpPort
	}
	return echoPort
}

// probe sends one request from a pod to another pod's echo server and
// waits for the answer: nil means the request and its reply passed.
func probe(from, to *pod, pr proto, timeout time.Duration) error {
	dst := netip.AddrPortFrom(to.IP, uint16(portOf(pr))).String()
	msg := []byte(fmt.Sprintf("probe %s->%s %s\n", from, to, randHex(4)))
	var c net.Conn
	if err := inNS(from.ns, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial(string(pr)+"4", dst)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo mismatch: %q", got)
	}
	return nil
}

// flow is an expected verdict.
type flow struct {
	from, to *pod
	pr       proto
	allow    bool
}

func (f flow) String() string {
	v := "deny"
	if f.allow {
		v = "allow"
	}
	return fmt.Sprintf("%s -> %s %s/%d: %s", f.from, f.to, f.pr, portOf(f.pr), v)
}

// expect probes every flow concurrently. An allowed flow gets two tries
// (1 s each); a denied one must fail within denyTimeout.
func expect(t testing.TB, flows ...flow) {
	t.Helper()
	const denyTimeout = 400 * time.Millisecond
	errs := make([]string, len(flows))
	var wg sync.WaitGroup
	for i, f := range flows {
		wg.Go(func() {
			if f.allow {
				err := probe(f.from, f.to, f.pr, time.Second)
				if err != nil {
					err = probe(f.from, f.to, f.pr, time.Second)
				}
				if err != nil {
					errs[i] = fmt.Sprintf("%s: blocked: %v", f, err)
				}
				return
			}
			if err := probe(f.from, f.to, f.pr, denyTimeout); err == nil {
				errs[i] = fmt.Sprintf("%s: passed", f)
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// allPairs is every ordered pair of distinct pods, both protocols.
func allPairs(allow bool, pods ...*pod) []flow {
	var out []flow
	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				out = append(out, flow{a, b, tcp, allow}, flow{a, b, udp, allow})
			}
		}
	}
	return out
}

// udpStream sends "S <flow> <seq>" from a pod every interval.
type udpStream struct {
	sent   atomic.Uint64
	errs   atomic.Uint64
	cancel context.CancelFunc
	done   chan struct{}
}

func startStream(t testing.TB, from, to *pod, id uint32, interval time.Duration) *udpStream {
	t.Helper()
	var c *net.UDPConn
	if err := inNS(from.ns, func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.IP, echoPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &udpStream{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer c.Close()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			seq := s.sent.Load()
			if _, err := c.Write([]byte(fmt.Sprintf("S %d %d", id, seq))); err != nil {
				// A refused send (EPERM from a socket hook, ECONNREFUSED
				// from an earlier ICMP error) still counts as sent: it is a
				// packet the application wanted delivered.
				s.errs.Add(1)
			}
			s.sent.Add(1)
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *udpStream) stop() {
	s.cancel()
	<-s.done
}

// ---- teardown ----

// removePins detaches and unpins everything the agent pinned under root
// (the agent leaves its pins on purpose: they keep enforcing).
func removePins(root string) error {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	dp, err := datapath.Open(datapath.Options{BPFFSRoot: root, Migrate: true})
	if err != nil {
		// Unpinning is enough to detach links nobody holds open.
		return errors.Join(fmt.Errorf("open datapath: %w", err), os.RemoveAll(root))
	}
	return errors.Join(dp.Remove(), dp.Close())
}

// tcxLinksOn lists tcx links (any program) still attached to ifindexes.
func tcxLinksOn(ifindexes []int) []string {
	want := map[int]bool{}
	for _, i := range ifindexes {
		want[i] = true
	}
	var out []string
	it := new(link.Iterator)
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.TCXType {
			continue
		}
		if x := info.TCX(); x != nil && want[int(x.Ifindex)] {
			out = append(out, fmt.Sprintf("link %d prog %d ifindex %d", it.ID, info.Program, x.Ifindex))
		}
	}
	return out
}
