package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/pkg/policy"
)

// The layouts below live in an anonymous "node" namespace (links die with
// it); the pods' namespaces are bind-mounted under a test-unique folder
// passed to the finder as the agent's netns folder, as the container
// runtime does under /run/netns.

func tag(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testNode is a node namespace with pods behind veths.
type testNode struct {
	t      *testing.T
	fd     int    // the node namespace
	dir    string // pod namespaces' folder
	tag    string
	bridge *netlink.Bridge // bridge layout only
	pods   []*testPod
}

type testPod struct {
	name   string
	path   string // bind-mounted namespace
	ips    []netip.Addr
	hostIf string
	host   int // host veth ifindex
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	fd, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	n := &testNode{t: t, fd: fd, dir: t.TempDir(), tag: tag(t)}
	n.do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// do runs fn in the node namespace; failures are fatal.
func (n *testNode) do(fn func() error) {
	n.t.Helper()
	if err := netnsutil.Do(n.fd, fn); err != nil {
		n.t.Fatal(err)
	}
}

// withBridge adds the bridge the bridge CNI makes (cni0 with the gateway
// address and the subnet route).
func (n *testNode) withBridge(gw netip.Prefix) {
	n.do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "zb" + n.tag}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipnet(gw)}); err != nil {
			return err
		}
		n.bridge = br
		return netlink.LinkSetUp(br)
	})
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addPod creates a pod namespace under the node's folder with eth0 holding
// addrs, its host veth a bridge port (bridge layout) or carrying a /32
// route to the pod (ptp layout).
func (n *testNode) addPod(name string, addrs ...netip.Prefix) *testPod {
	n.t.Helper()
	p := &testPod{name: name, path: filepath.Join(n.dir, name), hostIf: fmt.Sprintf("v%s%s", n.tag, name)}
	if err := netnsutil.NewAt(p.path); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		if err := netnsutil.RemoveAt(p.path); err != nil {
			n.t.Error(err)
		}
	})
	podNS, err := os.Open(p.path)
	if err != nil {
		n.t.Fatal(err)
	}
	defer podNS.Close()
	n.do(func() error {
		attrs := netlink.LinkAttrs{Name: p.hostIf}
		if n.bridge != nil {
			attrs.MasterIndex = n.bridge.Index
		}
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(podNS.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", p.hostIf, err)
		}
		l, err := netlink.LinkByName(p.hostIf)
		if err != nil {
			return err
		}
		p.host = l.Attrs().Index
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if n.bridge != nil {
			return nil
		}
		for _, a := range addrs {
			r := &netlink.Route{LinkIndex: p.host, Dst: ipnet(netip.PrefixFrom(a.Addr(), a.Addr().BitLen())), Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("route to %s: %w", a.Addr(), err)
			}
		}
		return nil
	})
	if err := netnsutil.DoPath(p.path, func() error {
		for _, name := range []string{"lo", "eth0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		eth0, _ := netlink.LinkByName("eth0")
		for _, a := range addrs {
			// nodad: IPv6 addresses usable at once
			if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(a), Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("address %s: %w", a, err)
			}
			p.ips = append(p.ips, a.Addr())
		}
		return nil
	}); err != nil {
		n.t.Fatal(err)
	}
	n.pods = append(n.pods, p)
	return p
}

// removePod deletes the pod's namespace (and so its veth pair).
func (n *testNode) removePod(p *testPod) {
	n.t.Helper()
	if err := netnsutil.RemoveAt(p.path); err != nil {
		n.t.Fatal(err)
	}
	// The veth pair goes with the last reference to the namespace; wait
	// (bounded) until the host end is gone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var gone bool
		n.do(func() error {
			_, err := netlink.LinkByIndex(p.host)
			gone = err != nil
			return nil
		})
		if gone {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("host veth %s outlived its pod's namespace", p.hostIf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lookup runs one sync's worth of lookups in the node namespace.
func (n *testNode) lookup(a *Agent, pods ...*testPod) map[string]error {
	n.t.Helper()
	errs := map[string]error{}
	n.do(func() error {
		a.ifaces.begin()
		for _, p := range pods {
			l, err := a.hostInterface(p.ips)
			switch {
			case err != nil:
				errs[p.name] = err
			case l.Attrs().Index != p.host:
				errs[p.name] = fmt.Errorf("found %s (%d), want %s (%d)", l.Attrs().Name, l.Attrs().Index, p.hostIf, p.host)
			}
		}
		return nil
	})
	return errs
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// TestHostInterfaceBridge: the bridge CNI's layout (no per-pod route; host
// veths are ports of a bridge holding the gateway) is resolved through the
// pods' namespaces, once: later syncs enter no namespace; a pod recreated
// with the same address behind a new veth is found again by one scan.
func TestHostInterfaceBridge(t *testing.T) {
	n := newTestNode(t)
	n.withBridge(pfx("10.77.0.1/24"))
	a := &Agent{log: zap.NewNop(), ifaces: newIfaceFinder([]string{n.dir})}
	p0 := n.addPod("p0", pfx("10.77.0.10/24"), pfx("fd77::10/64"))
	p1 := n.addPod("p1", pfx("10.77.0.11/24"))
	p2 := n.addPod("p2", pfx("10.77.0.12/24"))

	// The route names the bridge, not a veth: the old lookup alone fails.
	n.do(func() error {
		_, err := routeInterface(p1.ips)
		if err == nil || !strings.Contains(err.Error(), "bridge") {
			t.Errorf("route lookup on the bridge layout: %v, want an error naming the bridge", err)
		}
		return nil
	})

	if errs := n.lookup(a, p0, p1, p2); len(errs) > 0 {
		t.Fatalf("bridge layout: %v", errs)
	}
	if a.ifaces.scans != 3 {
		t.Errorf("first sync entered %d namespaces, want 3", a.ifaces.scans)
	}
	// IPv6 alone finds the same veth.
	v6 := &testPod{name: "p0-v6", ips: []netip.Addr{netip.MustParseAddr("fd77::10")}, host: p0.host}
	for i := 0; i < 3; i++ {
		if errs := n.lookup(a, p0, p1, p2, v6); len(errs) > 0 {
			t.Fatalf("sync %d: %v", i, errs)
		}
	}
	if a.ifaces.scans != 3 {
		t.Errorf("cached syncs entered namespaces again: %d scans in all, want 3", a.ifaces.scans)
	}

	// p1 is recreated: new namespace, new veth, same address.
	n.removePod(p1)
	if errs := n.lookup(a, p1); errs["p1"] == nil {
		t.Fatal("a deleted pod's veth is still reported")
	}
	p1b := n.addPod("p1b", pfx("10.77.0.11/24"))
	before := a.ifaces.scans
	if errs := n.lookup(a, p0, p1b, p2); len(errs) > 0 {
		t.Fatalf("after the pod was recreated: %v", errs)
	}
	if got := a.ifaces.scans - before; got != 1 {
		t.Errorf("finding the recreated pod entered %d namespaces, want 1 (the new one)", got)
	}
	if p1b.host == p1.host {
		t.Fatalf("test setup: the new veth reuses ifindex %d", p1.host)
	}

	// An address no namespace has: a clear error naming it and what was
	// tried.
	ghost := &testPod{name: "ghost", ips: []netip.Addr{netip.MustParseAddr("10.77.0.99")}}
	err := n.lookup(a, ghost)["ghost"]
	if !errors.Is(err, errNoInterface) {
		t.Fatalf("unknown address: %v, want errNoInterface", err)
	}
	for _, want := range []string{"10.77.0.99", "bridge", n.dir, "by route", "by network namespace"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestHostInterfacePtp: the routed layout (`podIP dev vethX scope link`)
// is resolved from the route alone: no namespace is entered.
func TestHostInterfacePtp(t *testing.T) {
	n := newTestNode(t)
	a := &Agent{log: zap.NewNop(), ifaces: newIfaceFinder([]string{n.dir})}
	p0 := n.addPod("p0", pfx("10.78.0.10/24"), pfx("fd78::10/64"))
	p1 := n.addPod("p1", pfx("10.78.0.11/24"))
	if errs := n.lookup(a, p0, p1); len(errs) > 0 {
		t.Fatalf("ptp layout: %v", errs)
	}
	if a.ifaces.scans != 0 {
		t.Errorf("the routed layout entered %d namespaces, want 0", a.ifaces.scans)
	}
	// Only the /32 route is left to tell: the finder is not even needed.
	a.ifaces = nil
	if errs := n.lookup(a, p0, p1); len(errs) > 0 {
		t.Fatalf("ptp layout without namespaces: %v", errs)
	}
}

// TestInterfaceNotFoundReported: a local pod whose veth is nowhere (no
// route to a veth, no namespace with its address) is reported once, by
// name, with its addresses and both lookups, and counted.
func TestInterfaceNotFoundReported(t *testing.T) {
	n := newTestNode(t)
	n.withBridge(pfx("10.80.0.1/24"))
	n.addPod("other", pfx("10.80.0.10/24"))
	c := policy.New(policy.Options{NodeName: "n1"})
	pk := policy.PodKey{Namespace: "lost", Name: "pod-" + n.tag}
	c.SetPod(policy.Pod{Namespace: pk.Namespace, Name: pk.Name, NodeName: "n1",
		IPs: []netip.Addr{netip.MustParseAddr("10.80.0.77"), netip.MustParseAddr("fd80::77")}})
	c.Sync()
	a := &Agent{log: zap.NewNop(), compiler: c, metrics: newMetrics(nil),
		bound: map[policy.PodKey]binding{}, missing: map[policy.PodKey]string{},
		ifaces: newIfaceFinder([]string{n.dir})}
	count := func() float64 {
		var m dto.Metric
		if err := a.metrics.errors.WithLabelValues("interface_not_found").Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	for i := 0; i < 2; i++ {
		var missing bool
		n.do(func() error { missing = a.bindEndpoints(); return nil })
		if !missing {
			t.Fatal("a pod with no interface is not retried")
		}
	}
	msg := a.missing[pk]
	for _, want := range []string{pk.String(), "10.80.0.77", "fd80::77", "zb" + n.tag + " (bridge)", "by network namespace", n.dir} {
		if !strings.Contains(msg, want) {
			t.Errorf("report %q does not mention %q", msg, want)
		}
	}
	if got := count(); got != 1 {
		t.Errorf("interface_not_found counted %v times over two syncs with the same error, want 1", got)
	}
	if len(a.bound) != 0 {
		t.Errorf("bound without an interface: %v", a.bound)
	}
}
