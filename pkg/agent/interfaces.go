package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// errNoInterface: the pod's host-side interface is not (yet) there.
var errNoInterface = errors.New("host interface not found")

// hostInterface finds the host-side veth of a pod from the route to one of
// its addresses, as routed CNIs (kindnet, Calico, the ptp plugin) install:
// `podIP dev vethX scope host`.
func hostInterface(ips []netip.Addr) (netlink.Link, error) {
	var last error = fmt.Errorf("%w: the pod has no address", errNoInterface)
	for _, ip := range ips {
		routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
		if err != nil {
			last = fmt.Errorf("%w: route to %s: %v", errNoInterface, ip, err)
			continue
		}
		for _, r := range routes {
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				last = fmt.Errorf("%w: link %d of the route to %s: %v", errNoInterface, r.LinkIndex, ip, err)
				continue
			}
			if link.Type() != "veth" {
				last = fmt.Errorf("%w: the route to %s goes via %s (%s), not a pod veth", errNoInterface, ip, link.Attrs().Name, link.Type())
				continue
			}
			return link, nil
		}
	}
	return nil, last
}

// hostAddrs returns the node's own addresses: every address on a non-
// loopback interface of the host namespace, including the gateway
// addresses routed CNIs put on pod veths (probes may come from those).
func hostAddrs() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

// netnsPaths maps the netns ids the host knows (as seen from its links'
// peers) to bind-mounted namespace files the container runtime made.
func netnsPaths(dirs []string) map[int]string {
	out := map[int]string{}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			h, err := netns.GetFromPath(path)
			if err != nil {
				continue
			}
			id, err := netlink.GetNetNsIdByFd(int(h))
			h.Close()
			if err != nil || id < 0 {
				continue
			}
			if _, seen := out[id]; !seen {
				out[id] = path
			}
		}
	}
	return out
}

// peerNetnsID returns the netns id of a veth's peer, or -1.
func peerNetnsID(l netlink.Link) int {
	if id := l.Attrs().NetNsID; id >= 0 {
		return id
	}
	return -1
}
