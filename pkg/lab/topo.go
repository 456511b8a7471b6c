package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab's wiring, all of it inside namespaces the lab creates except one
// veth end in the root namespace:
//
//	root ns: ztl-<tag> 169.254.F.1/24 ── kube-apiserver listens here (and etcd on 127.0.0.1)
//	   │ veth
//	fabric ns: up0 ─ br0 ─ n1, n2, ...            (a plain L2 switch)
//	   │ veth per node
//	node ns i: eth0 169.254.F.(10+i)/24, fe80::77:i ── zt-agent (health on eth0's address)
//	   │ veth per pod (host side zpK: the agent's tcx programs)
//	pod ns: eth0 with the pod's IPs (/32, /128); default via 169.254.1.1 / fe80::1
//
// Routed CNI model: in its node, a pod's addresses are /32 and /128 routes
// on its host veth; on every other node they are routed via that node's
// fabric address, so cross-node traffic is enforced at both ends. The
// fabric addresses are link-local: the agent does not count them as node
// addresses, and they never collide with pod or ipBlock ranges.

var (
	podGW4 = netip.MustParseAddr("169.254.1.1")
	podGW6 = netip.MustParseAddr("fe80::1")
)

// fabricPrefixes are the /24s the lab may use, first free one wins.
func fabricPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for k := 77; k < 100; k++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, byte(k), 0}), 24))
	}
	return out
}

// pickFabric returns a /24 no route or address of the root namespace
// overlaps.
func pickFabric() (netip.Prefix, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list routes: %w", err)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list addresses: %w", err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if p, ok := ipnetPrefix(r.Dst); ok && p.Bits() > 0 {
			used = append(used, p)
		}
	}
	for _, a := range addrs {
		if p, ok := ipnetPrefix(a.IPNet); ok {
			used = append(used, p)
		}
	}
next:
	for _, c := range fabricPrefixes() {
		for _, u := range used {
			if u.Overlaps(c) {
				continue next
			}
		}
		return c, nil
	}
	return netip.Prefix{}, errors.New("no free 169.254.77-99.0/24 for the lab fabric (another lab running?)")
}

func ipnetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

func fabricAddr(p netip.Prefix, host byte) netip.Addr {
	b := p.Addr().As4()
	b[3] = host
	return netip.AddrFrom4(b)
}

func nodeFabricIP(p netip.Prefix, index int) netip.Addr { return fabricAddr(p, byte(10+index)) }

func nodeFabricIP6(index int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 13: 0x77, 15: byte(index)})
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func addrNoDAD(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}, Flags: unix.IFA_F_NODAD}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// handleAt opens a netlink handle in the namespace at path.
func handleAt(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

// setupFabric makes the fabric namespace's bridge and the root link into
// it, with rootIP/24 on the root end.
func setupFabric(fabricNS, rootLink string, rootIP netip.Addr) error {
	fh, err := handleAt(fabricNS)
	if err != nil {
		return err
	}
	defer fh.Close()
	// STP is off by default: ports forward as soon as they are up.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := fh.LinkAdd(br); err != nil {
		return fmt.Errorf("fabric bridge: %w", err)
	}
	if err := fh.LinkSetUp(br); err != nil {
		return err
	}
	fns, err := netns.GetFromPath(fabricNS)
	if err != nil {
		return err
	}
	defer fns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: rootLink}, PeerName: "up0", PeerNamespace: netlink.NsFd(int(fns))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("root link %s: %w", rootLink, err)
	}
	root, err := netlink.LinkByName(rootLink)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(root, addrNoDAD(rootIP, 24)); err != nil {
		return fmt.Errorf("address on %s: %w", rootLink, err)
	}
	if err := netlink.LinkSetUp(root); err != nil {
		return err
	}
	up, err := fh.LinkByName("up0")
	if err != nil {
		return err
	}
	if err := fh.LinkSetMaster(up, br); err != nil {
		return err
	}
	return fh.LinkSetUp(up)
}

// setupNode wires a node namespace to the fabric: eth0 with its fabric
// addresses, forwarding on, rp_filter off. It returns eth0's MAC.
func setupNode(fabricNS string, n *Node, fabric netip.Prefix) error {
	fh, err := handleAt(fabricNS)
	if err != nil {
		return err
	}
	defer fh.Close()
	nns, err := netns.GetFromPath(n.Netns)
	if err != nil {
		return err
	}
	defer nns.Close()
	port := fmt.Sprintf("n%d", n.Index)
	if err := fh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(nns))}); err != nil {
		return fmt.Errorf("node %s fabric veth: %w", n.Name, err)
	}
	pl, err := fh.LinkByName(port)
	if err != nil {
		return err
	}
	br, err := fh.LinkByName("br0")
	if err != nil {
		return err
	}
	if err := fh.LinkSetMaster(pl, br); err != nil {
		return err
	}
	if err := fh.LinkSetUp(pl); err != nil {
		return err
	}
	if err := setSysctls(n.Netns, map[string]string{
		"net/ipv4/ip_forward":                  "1",
		"net/ipv6/conf/all/forwarding":         "1",
		"net/ipv6/conf/default/forwarding":     "1",
		"net/ipv4/conf/all/rp_filter":          "0",
		"net/ipv4/conf/default/rp_filter":      "0",
		"net/ipv4/conf/all/send_redirects":     "0",
		"net/ipv4/conf/default/send_redirects": "0",
	}); err != nil {
		return err
	}
	nh, err := netlink.NewHandleAt(nns)
	if err != nil {
		return err
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return err
	}
	eth0, err := nh.LinkByName("eth0")
	if err != nil {
		return err
	}
	ip := netip.MustParseAddr(n.IP)
	if err := nh.AddrAdd(eth0, addrNoDAD(ip, 24)); err != nil {
		return fmt.Errorf("node %s address: %w", n.Name, err)
	}
	if err := nh.AddrAdd(eth0, addrNoDAD(nodeFabricIP6(n.Index), 64)); err != nil {
		return fmt.Errorf("node %s v6 address: %w", n.Name, err)
	}
	if err := nh.LinkSetUp(eth0); err != nil {
		return err
	}
	n.MAC = eth0.Attrs().HardwareAddr.String()
	return nil
}

// linkNodes adds static neighbours between every pair of nodes, so the
// first cross-node packet never waits for ARP or ND.
func linkNodes(nodes []Node) error {
	for _, a := range nodes {
		h, err := handleAt(a.Netns)
		if err != nil {
			return err
		}
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			h.Close()
			return err
		}
		for _, b := range nodes {
			if a.Name == b.Name {
				continue
			}
			mac, _ := net.ParseMAC(b.MAC)
			for _, ip := range []netip.Addr{netip.MustParseAddr(b.IP), nodeFabricIP6(b.Index)} {
				if err := h.NeighSet(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: family(ip),
					State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}); err != nil {
					h.Close()
					return fmt.Errorf("node %s neighbour %s: %w", a.Name, ip, err)
				}
			}
		}
		h.Close()
	}
	return nil
}

// setupPod wires a pod namespace to its node (host veth zp<k>, /32 and
// /128 routes, static neighbours) and routes its addresses on every other
// node via its node's fabric address.
func setupPod(p *Pod, node Node, nodes []Node) error {
	nh, err := handleAt(node.Netns)
	if err != nil {
		return err
	}
	defer nh.Close()
	pns, err := netns.GetFromPath(p.Netns)
	if err != nil {
		return err
	}
	defer pns.Close()
	ph, err := netlink.NewHandleAt(pns)
	if err != nil {
		return err
	}
	defer ph.Close()
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pns))}); err != nil {
		return fmt.Errorf("pod %s veth: %w", p.Key(), err)
	}
	host, err := nh.LinkByName(p.HostIf)
	if err != nil {
		return err
	}
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		return err
	}
	lo, err := ph.LinkByName("lo")
	if err != nil {
		return err
	}
	hostMAC, podMAC := host.Attrs().HardwareAddr, eth0.Attrs().HardwareAddr
	podIdx, hostIdx := eth0.Attrs().Index, host.Attrs().Index
	check := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("pod %s: %s: %w", p.Key(), what, err)
		}
		return nil
	}
	ips := p.Addrs()
	for _, a := range ips {
		if err := check("address "+a.String(), ph.AddrAdd(eth0, addrNoDAD(a, a.BitLen()))); err != nil {
			return err
		}
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"lo up", func() error { return ph.LinkSetUp(lo) }},
		{"eth0 up", func() error { return ph.LinkSetUp(eth0) }},
		{"host veth up", func() error { return nh.LinkSetUp(host) }},
		{"gateway route", func() error {
			return ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Dst: hostPrefix(podGW4), Scope: netlink.SCOPE_LINK})
		}},
		{"default route", func() error { return ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: podGW4.AsSlice()}) }},
		{"default v6 route", func() error {
			return ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: podGW6.AsSlice(), Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}})
		}},
	}
	for _, g := range []netip.Addr{podGW4, podGW6} {
		steps = append(steps, struct {
			what string
			fn   func() error
		}{"gateway neighbour " + g.String(), func() error {
			return ph.NeighAdd(&netlink.Neigh{LinkIndex: podIdx, Family: family(g), State: netlink.NUD_PERMANENT, IP: g.AsSlice(), HardwareAddr: hostMAC})
		}})
	}
	for _, s := range steps {
		if err := check(s.what, s.fn()); err != nil {
			return err
		}
	}
	for _, a := range ips {
		if err := check("host route "+a.String(), nh.RouteAdd(&netlink.Route{LinkIndex: hostIdx, Dst: hostPrefix(a), Scope: netlink.SCOPE_LINK})); err != nil {
			return err
		}
		if err := check("host neighbour", nh.NeighAdd(&netlink.Neigh{LinkIndex: hostIdx, Family: family(a), State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: podMAC})); err != nil {
			return err
		}
	}
	for _, other := range nodes {
		if other.Name == node.Name {
			continue
		}
		if err := routeVia(other, node, ips); err != nil {
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
	}
	return nil
}

// routeVia routes ips, on node other, via node's fabric addresses.
func routeVia(other, node Node, ips []netip.Addr) error {
	oh, err := handleAt(other.Netns)
	if err != nil {
		return err
	}
	defer oh.Close()
	eth0, err := oh.LinkByName("eth0")
	if err != nil {
		return err
	}
	for _, a := range ips {
		gw := netip.MustParseAddr(node.IP)
		if a.Is6() {
			gw = nodeFabricIP6(node.Index)
		}
		if err := oh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: hostPrefix(a), Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("route %s via %s on %s: %w", a, gw, other.Name, err)
		}
	}
	return nil
}

// waitLinksUp waits until both ends of every pod veth are operationally
// up: a fresh veth drops packets until link watch activates its qdisc.
func waitLinksUp(pods []Pod, nodes map[string]Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, p := range pods {
		for {
			up, err := podLinksUp(p, nodes[p.Node])
			if err != nil {
				return err
			}
			if up {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pod %s: veth not up after %s", p.Key(), timeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func podLinksUp(p Pod, n Node) (bool, error) {
	for _, side := range []struct{ ns, name string }{{n.Netns, p.HostIf}, {p.Netns, "eth0"}} {
		h, err := handleAt(side.ns)
		if err != nil {
			return false, err
		}
		l, err := h.LinkByName(side.name)
		h.Close()
		if err != nil {
			return false, err
		}
		if l.Attrs().OperState != netlink.OperUp {
			return false, nil
		}
	}
	return true, nil
}
