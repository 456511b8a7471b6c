package dpbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
)

// Addresses inside the bench's private namespaces. Every configuration
// gets its own node namespace, so they repeat across configurations.
var (
	serverIP4 = netip.MustParseAddr("10.201.0.1")
	clientIP4 = netip.MustParseAddr("10.202.0.2") // the probing client, an allowed peer
	deniedIP4 = netip.MustParseAddr("10.203.0.3") // a pod outside the allowed set
	serverIP6 = netip.MustParseAddr("fd00:201::1")
	clientIP6 = netip.MustParseAddr("fd00:202::2")
	deniedIP6 = netip.MustParseAddr("fd00:203::3")
	// The pods' default gateway: link-local, answered by a static
	// neighbour entry pointing at the host-side veth (as Calico does).
	gw4 = netip.MustParseAddr("169.254.1.1")
	gw6 = netip.MustParseAddr("fe80::1")
)

// pod is a network namespace with eth0 whose peer (hostIf) lives in the
// node namespace.
type pod struct {
	name        string
	ns          int // namespace descriptor
	hostIf      string
	hostIfindex int
	ip4, ip6    netip.Addr
}

// topo is one node: a namespace that routes between a server pod, the
// probing client pod and a denied pod, like the host of a Kubernetes node
// with a veth-based CNI. Enforcement is installed in the node namespace.
type topo struct {
	node                   int
	h                      *netlink.Handle
	server, client, denied *pod
	procs                  []*exec.Cmd
	cleanups               []func() error
}

func newTopo() (_ *topo, err error) {
	t := &topo{node: -1}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.close())
		}
	}()
	if t.node, err = netnsutil.New(); err != nil {
		return nil, err
	}
	if t.h, err = netlink.NewHandleAt(netns.NsHandle(t.node)); err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	if err := sysctls(t.node, map[string]string{
		"net/ipv4/ip_forward":              "1",
		"net/ipv6/conf/all/forwarding":     "1",
		"net/ipv6/conf/default/forwarding": "1",
	}); err != nil {
		return nil, err
	}
	lo, err := t.h.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	if err := t.h.LinkSetUp(lo); err != nil {
		return nil, err
	}
	for i, spec := range []struct {
		name     string
		ip4, ip6 netip.Addr
		dst      **pod
	}{
		{"server", serverIP4, serverIP6, &t.server},
		{"client", clientIP4, clientIP6, &t.client},
		{"denied", deniedIP4, deniedIP6, &t.denied},
	} {
		p, err := t.addPod(spec.name, fmt.Sprintf("zb%d", i), spec.ip4, spec.ip6)
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", spec.name, err)
		}
		*spec.dst = p
	}
	// The client reuses TIME_WAIT ports: TCP_CRR opens tens of thousands
	// of connections per run.
	for _, p := range []*pod{t.client, t.denied} {
		if err := sysctls(p.ns, map[string]string{
			"net/ipv4/tcp_tw_reuse":        "1",
			"net/ipv4/ip_local_port_range": "1024 65000",
		}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	bits := a.BitLen()
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: unix.IFA_F_NODAD}
}

func hostRoute(link int, a netip.Addr) *netlink.Route {
	bits := a.BitLen()
	return &netlink.Route{LinkIndex: link, Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Scope: netlink.SCOPE_LINK}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func (t *topo) addPod(name, hostIf string, ip4, ip6 netip.Addr) (*pod, error) {
	p := &pod{name: name, hostIf: hostIf, ip4: ip4, ip6: ip6, ns: -1}
	var err error
	if p.ns, err = netnsutil.New(); err != nil {
		return nil, err
	}
	t.cleanups = append(t.cleanups, func() error { return unix.Close(p.ns) })
	ph, err := netlink.NewHandleAt(netns.NsHandle(p.ns))
	if err != nil {
		return nil, err
	}
	defer ph.Close()
	hh := t.h
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(p.ns)}
	if err := hh.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", hostIf, err)
	}
	host, err := hh.LinkByName(hostIf)
	if err != nil {
		return nil, err
	}
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	lo, err := ph.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	p.hostIfindex = host.Attrs().Index
	hostMAC, podMAC := host.Attrs().HardwareAddr, eth0.Attrs().HardwareAddr
	podIdx := eth0.Attrs().Index
	steps := []struct {
		what string
		do   func() error
	}{
		{"addr4", func() error { return ph.AddrAdd(eth0, hostAddr(ip4)) }},
		{"addr6", func() error { return ph.AddrAdd(eth0, hostAddr(ip6)) }},
		{"lo up", func() error { return ph.LinkSetUp(lo) }},
		{"eth0 up", func() error { return ph.LinkSetUp(eth0) }},
		{"host veth up", func() error { return hh.LinkSetUp(host) }},
		{"gw4 route", func() error { return ph.RouteAdd(hostRoute(podIdx, gw4)) }},
		{"default4", func() error { return ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: gw4.AsSlice()}) }},
		{"default6", func() error {
			return ph.RouteAdd(&netlink.Route{LinkIndex: podIdx, Gw: gw6.AsSlice(),
				Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}})
		}},
	}
	for _, g := range []netip.Addr{gw4, gw6} {
		steps = append(steps, struct {
			what string
			do   func() error
		}{"gw neigh", func() error {
			return ph.NeighAdd(&netlink.Neigh{LinkIndex: podIdx, Family: family(g),
				State: netlink.NUD_PERMANENT, IP: g.AsSlice(), HardwareAddr: hostMAC})
		}})
	}
	for _, a := range []netip.Addr{ip4, ip6} {
		steps = append(steps, struct {
			what string
			do   func() error
		}{"host route and neigh", func() error {
			if err := hh.RouteAdd(hostRoute(p.hostIfindex, a)); err != nil {
				return err
			}
			return hh.NeighAdd(&netlink.Neigh{LinkIndex: p.hostIfindex, Family: family(a),
				State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: podMAC})
		}})
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return nil, fmt.Errorf("%s: %w", s.what, err)
		}
	}
	return p, nil
}

// sysctls writes /proc/sys values inside the namespace ns.
func sysctls(ns int, kv map[string]string) error {
	return netnsutil.Do(ns, func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
			}
		}
		return nil
	})
}

// runIn runs a command inside ns (-1: this process's namespace) with
// stdin and returns its output.
func runIn(ctx context.Context, ns int, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := cmd.Start
	if ns >= 0 {
		start = func() error { return netnsutil.Do(ns, cmd.Start) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// pinned returns a command that runs name under `taskset -c cpu`, and
// with rtPrio > 0 under `chrt -f rtPrio` (SCHED_FIFO: a wake-up does not
// wait behind other work of a busy machine; the kernel's RT throttling
// still leaves that work 5% of the CPU).
func pinned(ctx context.Context, cpu, rtPrio int, name string, args ...string) *exec.Cmd {
	argv := append([]string{"-c", itoa(cpu), name}, args...)
	bin := "taskset"
	if rtPrio > 0 {
		argv = append([]string{"-f", itoa(rtPrio), "taskset"}, argv...)
		bin = "chrt"
	}
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// startServers starts the echo server and iperf3 -s in the server pod,
// both on serverCPU, and waits until they listen.
func (t *topo) startServers(serverCPU, rtPrio, iperfRT int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	echo := pinned(context.Background(), serverCPU, rtPrio, self)
	echo.Env = append(os.Environ(), childEnv+"=serve")
	echo.Stderr = os.Stderr
	out, err := echo.StdoutPipe()
	if err != nil {
		return err
	}
	if err := netnsutil.Do(t.server.ns, echo.Start); err != nil {
		return fmt.Errorf("start echo server: %w", err)
	}
	t.procs = append(t.procs, echo)
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("echo server said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("echo server: %w", err)
		}
	case <-time.After(10 * time.Second):
		return errors.New("echo server did not start within 10s")
	}
	iperf := pinned(context.Background(), serverCPU, iperfRT, "iperf3", "-s", "--forceflush", "-p", itoa(iperfPort))
	iout, err := iperf.StdoutPipe()
	if err != nil {
		return err
	}
	if err := netnsutil.Do(t.server.ns, iperf.Start); err != nil {
		return fmt.Errorf("start iperf3 -s: %w", err)
	}
	t.procs = append(t.procs, iperf)
	// No connection to wait with: iperf3 takes any connection for a test.
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(iout)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "listening") {
				close(listening)
				once = true
			}
		}
	}()
	select {
	case <-listening:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("iperf3 -s did not listen within 10s")
	}
}

// dial opens and closes a TCP connection from inside p; for the echo port
// it also exchanges one byte.
func (t *topo) dial(p *pod, dst netip.AddrPort, timeout time.Duration) error {
	return netnsutil.Do(p.ns, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		if dst.Port() != rrPort {
			return nil
		}
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte{'p'}); err != nil {
			return err
		}
		b := make([]byte, 1)
		if _, err := c.Read(b); err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		return nil
	})
}

func (t *topo) close() error {
	var errs []error
	for _, p := range t.procs {
		if p.Process != nil {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	t.procs = nil
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		if err := t.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	t.cleanups = nil
	if t.h != nil {
		t.h.Close()
		t.h = nil
	}
	if t.node >= 0 {
		errs = append(errs, unix.Close(t.node))
		t.node = -1
	}
	return errors.Join(errs...)
}
