package datapath

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNamedNS creates a fresh, uniquely named network namespace.
func newNamedNS(t *testing.T, tag string) netns.NsHandle {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "zt-test-" + tag + "-" + hex.EncodeToString(b[:])
	var ns netns.NsHandle
	inThread(t, func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		ns, err = netns.NewNamed(name)
		if err != nil {
			return err
		}
		return netns.Set(orig)
	})
	t.Cleanup(func() {
		ns.Close()
		_ = netns.DeleteNamed(name)
	})
	return ns
}

// inThread runs fn on a fresh locked OS thread. If fn leaves the thread in
// another namespace (error), the thread is discarded, never reused.
func inThread(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// inNS runs fn inside ns on a locked thread.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	var fnErr error
	inThread(t, func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			return err
		}
		fnErr = fn()
		return netns.Set(orig)
	})
	if fnErr != nil {
		t.Fatal(fnErr)
	}
}

type vethPair struct {
	hostNS, podNS netns.NsHandle
	hostIfindex   int
	hostIP, podIP netip.Addr
	ln            net.PacketConn // UDP listener in the pod
	hostConn      net.Conn       // UDP "client" in the host namespace
}

const podPort = 5000

// newVethPair builds host and pod namespaces joined by a veth pair, with a
// UDP listener in the pod and a connected UDP socket on the host side.
func newVethPair(t *testing.T) *vethPair {
	v := &vethPair{
		hostNS: newNamedNS(t, "host"), podNS: newNamedNS(t, "pod"),
		hostIP: netip.MustParseAddr("10.99.0.1"), podIP: netip.MustParseAddr("10.99.0.2"),
	}
	hh := must[*netlink.Handle](t)(netlink.NewHandleAt(v.hostNS))
	defer hh.Close()
	ph := must[*netlink.Handle](t)(netlink.NewHandleAt(v.podNS))
	defer ph.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "zthost0"
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "ztpod0", PeerNamespace: netlink.NsFd(int(v.podNS))}
	if err := hh.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	setup := func(h *netlink.Handle, name string, ip netip.Addr) {
		l := must[netlink.Link](t)(h.LinkByName(name))
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatalf("addr %s: %v", name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("up %s: %v", name, err)
		}
		if name == "zthost0" {
			v.hostIfindex = l.Attrs().Index
		}
	}
	setup(hh, "zthost0", v.hostIP)
	setup(ph, "ztpod0", v.podIP)
	inNS(t, v.podNS, func() (err error) {
		v.ln, err = net.ListenPacket("udp4", net.JoinHostPort(v.podIP.String(), "5000"))
		return err
	})
	inNS(t, v.hostNS, func() (err error) {
		v.hostConn, err = net.Dial("udp4", net.JoinHostPort(v.podIP.String(), "5000"))
		return err
	})
	t.Cleanup(func() { v.ln.Close(); v.hostConn.Close() })
	// A fresh veth drops packets until link watch activates its qdisc
	// (up to a second): wait for the path to work before any test step.
	for deadline := time.Now().Add(5 * time.Second); !v.delivered(t); {
		if time.Now().After(deadline) {
			t.Fatal("veth pair never delivered a datagram")
		}
	}
	return v
}

// delivered sends one datagram host -> pod and reports whether it arrived.
func (v *vethPair) delivered(t *testing.T) bool {
	t.Helper()
	msg := []byte(time.Now().String())
	if _, err := v.hostConn.Write(msg); err != nil {
		t.Fatalf("send: %v", err)
	}
	buf := make([]byte, 256)
	for {
		_ = v.ln.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := v.ln.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if string(buf[:n]) == string(msg) {
			return true
		}
	}
}

func (v *vethPair) configure(t *testing.T, d *Datapath) {
	t.Helper()
	ep := must[Endpoint](t)(NewEndpoint(20, EndpointIngressIsolated, v.podIP))
	if err := d.EndpointPut(uint32(v.hostIfindex), ep); err != nil {
		t.Fatal(err)
	}
	if err := d.IPCachePut(netip.PrefixFrom(v.hostIP, 32), IPCacheVal{Identity: 300}); err != nil {
		t.Fatal(err)
	}
}

var vethRule = PortRule{EndpointID: 20, Dir: DirIngress, Peer: 300, Proto: protoUDP, Port: podPort}

func testVeth(t *testing.T, legacy bool, want AttachMode) {
	d := newTestDatapath(t, Options{forceLegacyTC: legacy})
	v := newVethPair(t)
	v.configure(t, d)
	var mode AttachMode
	inNS(t, v.hostNS, func() (err error) {
		mode, err = d.AttachEndpoint(v.hostIfindex)
		return err
	})
	if mode != want {
		t.Fatalf("attach mode %s, want %s", mode, want)
	}
	t.Cleanup(func() { inNS(t, v.hostNS, func() error { return d.DetachEndpoint(v.hostIfindex) }) })

	if v.delivered(t) {
		t.Fatal("isolated pod received traffic without a rule")
	}
	if n := must[Counter](t)(d.Counter(DirIngress, VerdictDrop, ReasonPolicyDenied)).Packets; n == 0 {
		t.Error("drop not counted")
	}
	if err := d.PolicyPutRule(vethRule, PolicyVal{RuleId: 1, Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	if !v.delivered(t) {
		t.Fatal("allowed traffic dropped")
	}
	if err := d.PolicyDeleteRule(vethRule); err != nil {
		t.Fatal(err)
	}
	if v.delivered(t) {
		t.Fatal("traffic passes after revoking the rule")
	}
	if got := must[[]int](t)(d.AttachedEndpoints()); !slices.Equal(got, []int{v.hostIfindex}) {
		t.Errorf("attached endpoints %v", got)
	}
	// Idempotent re-attach.
	inNS(t, v.hostNS, func() (err error) {
		mode, err = d.AttachEndpoint(v.hostIfindex)
		return err
	})
	if mode != want {
		t.Fatalf("re-attach mode %s", mode)
	}
	inNS(t, v.hostNS, func() error { return d.DetachEndpoint(v.hostIfindex) })
	if got := must[[]int](t)(d.AttachedEndpoints()); len(got) != 0 {
		t.Errorf("attached after detach: %v", got)
	}
	if !v.delivered(t) {
		t.Fatal("traffic still dropped after detach")
	}
}

func TestVethTCX(t *testing.T)      { testVeth(t, false, AttachTCX) }
func TestVethLegacyTC(t *testing.T) { testVeth(t, true, AttachLegacyTC) }

func TestPinsSurviveReopen(t *testing.T) {
	root := testRoot(t)
	d1, err := Open(Options{BPFFSRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	v := newVethPair(t)
	v.configure(t, d1)
	if err := d1.PolicyPutRule(vethRule, PolicyVal{RuleId: 1, Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	inNS(t, v.hostNS, func() error { _, err := d1.AttachEndpoint(v.hostIfindex); return err })
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if !v.delivered(t) {
		t.Fatalf("allowed traffic dropped after Close: %v", nonZeroCounters(t, root))
	}

	d2 := newTestDatapath(t, Options{BPFFSRoot: root})
	t.Cleanup(func() { inNS(t, v.hostNS, func() error { return d2.DetachEndpoint(v.hostIfindex) }) })
	eps := must[map[uint32]Endpoint](t)(d2.EndpointList())
	if ep, ok := eps[uint32(v.hostIfindex)]; !ok || ep.EpId != 20 {
		t.Fatalf("endpoint not adopted: %+v", eps)
	}
	if pol := must[map[PolicyKey]PolicyVal](t)(d2.PolicyList()); len(pol) != 1 {
		t.Fatalf("policy not adopted: %+v", pol)
	}
	if got := must[[]int](t)(d2.AttachedEndpoints()); !slices.Equal(got, []int{v.hostIfindex}) {
		t.Fatalf("attached endpoints %v", got)
	}
	// The links still run and read the adopted maps: revoking drops.
	if err := d2.PolicyDeleteRule(vethRule); err != nil {
		t.Fatal(err)
	}
	if v.delivered(t) {
		t.Fatal("pinned links not enforcing after reopen")
	}
	inNS(t, v.hostNS, func() error {
		m, err := d2.AttachEndpoint(v.hostIfindex)
		if err == nil && m != AttachTCX {
			t.Errorf("re-attach mode %s", m)
		}
		return err
	})
	if err := d2.PolicyPutRule(vethRule, PolicyVal{RuleId: 1, Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	if !v.delivered(t) {
		t.Fatal("re-attached program drops allowed traffic")
	}
}

func TestCgroupConnect(t *testing.T) {
	d := newTestDatapath(t, Options{})
	cg, err := CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	pod := newNamedNS(t, "sock")
	var cookie uint64
	inNS(t, pod, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	const ifindex = 4242
	ep := must[Endpoint](t)(NewEndpoint(30, EndpointEgressIsolated, netip.MustParseAddr("10.98.0.2")))
	if err := d.EndpointPut(ifindex, ep); err != nil {
		t.Fatal(err)
	}
	if err := d.NetnsPut(cookie, NetnsVal{EpId: 30, Ifindex: ifindex}); err != nil {
		t.Fatal(err)
	}
	if err := d.PolicyPutRule(PortRule{EndpointID: 30, Dir: DirEgress, Peer: IdentityAny, Proto: protoTCP, Port: 81},
		PolicyVal{RuleId: 1, Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	if err := d.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.DetachCgroup(); err != nil {
			t.Errorf("detach cgroup: %v", err)
		}
	})
	if err := d.AttachCgroup(""); err != nil { // idempotent, auto-detected root
		t.Fatal(err)
	}

	connect := func(port int, typ int) error {
		var cerr error
		inNS(t, pod, func() error {
			fd, err := unix.Socket(unix.AF_INET, typ, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			sa := &unix.SockaddrInet4{Port: port, Addr: [4]byte{192, 0, 2, 7}}
			if typ == unix.SOCK_DGRAM {
				cerr = unix.Sendto(fd, []byte("x"), 0, sa)
			} else {
				cerr = unix.Connect(fd, sa)
			}
			return nil
		})
		return cerr
	}
	start := time.Now()
	if err := connect(80, unix.SOCK_STREAM); !errors.Is(err, unix.EPERM) {
		t.Errorf("denied connect: %v, want EPERM", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("denied connect took %v", time.Since(start))
	}
	// Allowed by policy: the socket hook lets it through; there is no route
	// in the empty namespace, so the kernel answers ENETUNREACH.
	if err := connect(81, unix.SOCK_STREAM); errors.Is(err, unix.EPERM) {
		t.Errorf("allowed connect: %v", err)
	}
	// Allowed by the prefix identity of the destination's address (a
	// third probe after the peer's identity and any peer).
	if err := connect(82, unix.SOCK_STREAM); !errors.Is(err, unix.EPERM) {
		t.Errorf("connect before the prefix identity: %v, want EPERM", err)
	}
	if err := d.PolicyPutRule(PortRule{EndpointID: 30, Dir: DirEgress, Peer: 500, Proto: protoTCP, Port: 82},
		PolicyVal{RuleId: 2, Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	if err := d.IPCachePut(netip.MustParsePrefix("192.0.2.7/32"), IPCacheVal{Identity: 300, CidrIdentity: 500}); err != nil {
		t.Fatal(err)
	}
	if err := connect(82, unix.SOCK_STREAM); errors.Is(err, unix.EPERM) {
		t.Errorf("connect allowed by the prefix identity: %v", err)
	}
	if err := connect(53, unix.SOCK_DGRAM); !errors.Is(err, unix.EPERM) {
		t.Errorf("denied sendto: %v, want EPERM", err)
	}
	if n := must[Counter](t)(d.Counter(DirEgress, VerdictDrop, ReasonSockDenied)).Packets; n != 3 {
		t.Errorf("sock-denied counter %d, want 3", n)
	}
	// Outside registered namespaces nothing changes.
	c, err := net.DialTimeout("tcp", "127.0.0.1:1", time.Second)
	if err == nil {
		c.Close()
	} else if errors.Is(err, unix.EPERM) {
		t.Errorf("host connect denied: %v", err)
	}
}

// TestVerifier loads every program of both objects through the verifier,
// without pinning (make verify).
func TestVerifier(t *testing.T) {
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){"tc": loadZtTc, "sock": loadZtSock} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{})
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Fatalf("%s: %+v", name, ve)
			}
			t.Fatalf("%s: %v", name, err)
		}
		for pn, p := range coll.Programs {
			info, err := p.Info()
			if err != nil {
				t.Fatal(err)
			}
			insns, _ := info.VerifiedInstructions()
			t.Logf("%s/%s: %d verified instructions", name, pn, insns)
		}
		coll.Close()
	}
}

func TestMapIncompatibleAndMigrate(t *testing.T) {
	root := testRoot(t)
	d1, err := Open(Options{BPFFSRoot: root, MapSizes: MapSizes{Policy: 1024, Endpoints: 64}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.PolicyPutRule(PortRule{EndpointID: 1, Proto: 6, Port: 1000, EndPort: 1100}, PolicyVal{Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	n := len(must[map[PolicyKey]PolicyVal](t)(d1.PolicyList()))
	d1.Close()

	_, err = Open(Options{BPFFSRoot: root, MapSizes: MapSizes{Policy: 2048, Endpoints: 64}})
	if !errors.Is(err, ErrMapIncompatible) || !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Fatalf("reopen with a new size: %v, want ErrMapIncompatible", err)
	}
	d2 := newTestDatapath(t, Options{BPFFSRoot: root, MapSizes: MapSizes{Policy: 2048, Endpoints: 64}, Migrate: true})
	mig := d2.Migrated()
	if len(mig) != 1 || mig[0].Map != "policy" || mig[0].Copied != n || mig[0].Empty {
		t.Fatalf("migrations %+v, want policy with %d entries copied", mig, n)
	}
	if got := len(must[map[PolicyKey]PolicyVal](t)(d2.PolicyList())); got != n {
		t.Errorf("%d policy entries after migration, want %d", got, n)
	}
	if info := must[*ebpf.MapInfo](t)(d2.tc.Policy.Info()); info.MaxEntries != 2048 {
		t.Errorf("policy max entries %d", info.MaxEntries)
	}
}

func TestMapFull(t *testing.T) {
	d := newTestDatapath(t, Options{MapSizes: MapSizes{Policy: 4, Endpoints: 2}})
	var err error
	for i := range 5 {
		k := must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: 1, Proto: 6, Port: uint16(i + 1)}))[0]
		if err = d.PolicyPut(k, PolicyVal{Action: ActionAllow}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrMapFull) {
		t.Errorf("policy overflow: %v, want ErrMapFull", err)
	}
	eps := map[uint32]Endpoint{1: {}, 2: {}, 3: {}}
	if err := d.EndpointPutBatch(eps); !errors.Is(err, ErrMapFull) {
		t.Errorf("endpoints overflow: %v, want ErrMapFull", err)
	}
}

// nonZeroCounters reads the pinned counters of root, for failure messages.
func nonZeroCounters(t *testing.T, root string) []CounterEntry {
	d, err := Open(Options{BPFFSRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var out []CounterEntry
	for _, c := range must[[]CounterEntry](t)(d.Counters()) {
		if c.Packets != 0 {
			out = append(out, c)
		}
	}
	return out
}
