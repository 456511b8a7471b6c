package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// errNoInterface: the pod's host-side interface is not (yet) there.
var errNoInterface = errors.New("host interface not found")

// routeInterface finds the host-side veth of a pod from the route to one
// of its addresses, as routed CNIs (kindnet, Calico, the ptp plugin)
// install: `podIP dev vethX scope host`. Under the bridge CNI the route
// leads to the bridge and this fails; ifaceFinder then asks the pod's
// network namespace.
func routeInterface(ips []netip.Addr) (netlink.Link, error) {
	if len(ips) == 0 {
		return nil, errors.New("the pod has no address")
	}
	var why []string // one reason per address
	for _, ip := range ips {
		routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
		if err != nil {
			why = append(why, fmt.Sprintf("route to %s: %v", ip, err))
			continue
		}
		for _, r := range routes {
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				why = append(why, fmt.Sprintf("link %d of the route to %s: %v", r.LinkIndex, ip, err))
				continue
			}
			if link.Type() != "veth" {
				why = append(why, fmt.Sprintf("the route to %s goes via %s (%s), not a pod veth", ip, link.Attrs().Name, link.Type()))
				continue
			}
			return link, nil
		}
	}
	return nil, errors.New(strings.Join(why, ", "))
}

// ifaceFinder finds a pod's host veth through its network namespace, for
// CNIs that install no per-pod route (the bridge plugin: host veths are
// ports of cni0, one subnet route on the bridge). The pod namespace is the
// one, among the bind mounts the container runtime makes (NetnsDirs), that
// has the pod's address on an interface whose veth peer (iflink) is a host
// veth pointing back at it from that namespace's netns id.
//
// Cost per sync on a big node: namespaces are scanned (entered, links and
// addresses listed) once and cached by namespace file identity; a sync
// then reads the host's links once (one dump) to check the cached answers.
// A namespace is scanned again only when its answer no longer holds (its
// host veth vanished or changed: a link change) or it had none yet, and
// only in a sync where some pod was not found (at most one rescan per
// sync). Only the agent's sync loop uses it: no locking.
type ifaceFinder struct {
	dirs []string

	nets map[nsFile]*podNetns
	byIP map[netip.Addr]*podNetns

	// per sync (begin resets them)
	host      map[int]netlink.Link
	hostErr   error
	refreshed bool

	scans int // namespaces entered so far (tests check the caching)
}

// nsFile identifies a namespace file (device and inode of the namespace).
type nsFile struct{ dev, ino uint64 }

// podNetns is what one scan of a namespace found.
type podNetns struct {
	path  string
	nsid  int                  // its id as seen from the host, -1 when none
	peers map[netip.Addr]iface // its addresses on veths with a peer elsewhere
	stale bool                 // an answer no longer held: scan again
}

// iface is one end of a veth pair seen from the pod namespace.
type iface struct {
	index     int // in the pod namespace
	peerIndex int // iflink: the peer's ifindex in its namespace
}

func newIfaceFinder(dirs []string) *ifaceFinder {
	return &ifaceFinder{dirs: dirs, nets: map[nsFile]*podNetns{}, byIP: map[netip.Addr]*podNetns{}}
}

// begin starts a sync: host links are read again when needed, and one
// rescan is allowed.
func (f *ifaceFinder) begin() {
	if f == nil {
		return
	}
	f.host, f.hostErr, f.refreshed = nil, nil, false
}

// cached answers from scans already made, checked against the host's
// links; it costs no netlink call besides the one link dump per sync.
func (f *ifaceFinder) cached(ips []netip.Addr) (netlink.Link, bool) {
	if len(f.byIP) == 0 {
		return nil, false
	}
	for _, ip := range ips {
		if l := f.check(ip); l != nil {
			return l, true
		}
	}
	return nil, false
}

// find looks for the host veth of a pod with these addresses through the
// namespaces; routeErr says why the route lookup failed, for the error.
func (f *ifaceFinder) find(ips []netip.Addr, routeErr error) (netlink.Link, error) {
	if l, ok := f.cached(ips); ok {
		return l, nil
	}
	var scanErr error
	if !f.refreshed {
		f.refreshed = true
		scanErr = f.refresh()
		if l, ok := f.cached(ips); ok {
			return l, nil
		}
	}
	if f.hostErr != nil {
		scanErr = errors.Join(scanErr, f.hostErr)
	}
	// No counts in the message: the report is repeated only when it
	// changes, and the number of namespaces changes all the time.
	detail := fmt.Sprintf("by route: %v; by network namespace: none under %s has %s on a veth whose peer is a host veth",
		routeErr, strings.Join(f.dirs, ","), joinAddrs(ips))
	if scanErr != nil {
		detail += fmt.Sprintf(" (%v)", scanErr)
	}
	return nil, fmt.Errorf("%w for %s: %s", errNoInterface, joinAddrs(ips), detail)
}

// check returns the host veth of the cached namespace holding ip, when it
// still is that namespace's peer; otherwise the namespace is marked for a
// rescan.
func (f *ifaceFinder) check(ip netip.Addr) netlink.Link {
	n, ok := f.byIP[ip]
	if !ok || n.stale {
		return nil
	}
	if f.loadHost() != nil {
		return nil
	}
	i := n.peers[ip]
	h, ok := f.host[i.peerIndex]
	if !ok || !isPeer(h, n.nsid, i.index) {
		n.stale = true
		return nil
	}
	return h
}

// isPeer: h is a host veth whose peer is interface index of namespace nsid.
func isPeer(h netlink.Link, nsid, index int) bool {
	a := h.Attrs()
	return h.Type() == "veth" && a.ParentIndex == index && nsid >= 0 && a.NetNsID == nsid
}

func (f *ifaceFinder) loadHost() error {
	if f.host != nil || f.hostErr != nil {
		return f.hostErr
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		f.hostErr = fmt.Errorf("list host links: %w", err)
		return f.hostErr
	}
	f.host = make(map[int]netlink.Link, len(links))
	for _, l := range links {
		f.host[l.Attrs().Index] = l
	}
	return nil
}

// refresh forgets namespaces whose files are gone and scans new ones and
// those marked stale or without an answer.
func (f *ifaceFinder) refresh() error {
	// Reading the host links first also makes the kernel number the pod
	// namespaces (a link dump allocates the peer netns ids it reports).
	if err := f.loadHost(); err != nil {
		return err
	}
	self := statNS("/proc/thread-self/ns/net")
	seen := map[nsFile]bool{}
	var errs []error
	for _, dir := range f.dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			id := statNS(path)
			if id == (nsFile{}) || id == self || seen[id] {
				continue // not a namespace, the host's own, or met under another name
			}
			seen[id] = true
			if n, ok := f.nets[id]; ok && !n.stale && f.answers(n) {
				continue
			}
			n, err := f.scan(path)
			if err != nil {
				errs = append(errs, err)
				delete(f.nets, id)
				continue
			}
			f.nets[id] = n
		}
	}
	for id := range f.nets {
		if !seen[id] {
			delete(f.nets, id)
		}
	}
	clear(f.byIP)
	for _, n := range f.nets {
		for ip := range n.peers {
			f.byIP[ip] = n
		}
	}
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return errors.Join(errs...)
}

// answers: some address of n sits on a veth whose peer is a host veth.
func (f *ifaceFinder) answers(n *podNetns) bool {
	for _, i := range n.peers {
		if h, ok := f.host[i.peerIndex]; ok && isPeer(h, n.nsid, i.index) {
			return true
		}
	}
	return false
}

// scan enters the namespace at path: its netns id (from the host), and
// which of its addresses sit on veths whose peer is elsewhere.
func (f *ifaceFinder) scan(path string) (*podNetns, error) {
	f.scans++
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer ns.Close()
	nsid, err := netlink.GetNetNsIdByFd(int(ns))
	if err != nil {
		return nil, fmt.Errorf("netns id of %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("links in %s: %w", path, err)
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("addresses in %s: %w", path, err)
	}
	peer := map[int]int{}
	for _, l := range links {
		// A veth whose peer lives in another namespace: IFLA_LINK is the
		// peer's ifindex there.
		if a := l.Attrs(); l.Type() == "veth" && a.ParentIndex > 0 && a.NetNsID >= 0 {
			peer[a.Index] = a.ParentIndex
		}
	}
	n := &podNetns{path: path, nsid: nsid, peers: map[netip.Addr]iface{}}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		if p, ok := peer[a.LinkIndex]; ok {
			n.peers[ip.Unmap()] = iface{index: a.LinkIndex, peerIndex: p}
		}
	}
	return n, nil
}

// statNS identifies a namespace file; zero when it cannot be read.
func statNS(path string) nsFile {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsFile{}
	}
	return nsFile{dev: st.Dev, ino: st.Ino}
}

func joinAddrs(ips []netip.Addr) string {
	if len(ips) == 0 {
		return "no address"
	}
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(slices.Compact(s), ",")
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

// hostInterface finds a pod's host veth: a namespace answer already
// cached, else the route to the pod (routed CNIs), else the pod's network
// namespace (bridge CNI).
func (a *Agent) hostInterface(ips []netip.Addr) (netlink.Link, error) {
	if a.ifaces != nil {
		if l, ok := a.ifaces.cached(ips); ok {
			return l, nil
		}
	}
	link, err := lookupHostInterface(ips)
	if err == nil {
		return link, nil
	}
	if a.ifaces == nil {
		return nil, fmt.Errorf("%w for %s: by route: %v", errNoInterface, joinAddrs(ips), err)
	}
	return a.ifaces.find(ips, err)
}
