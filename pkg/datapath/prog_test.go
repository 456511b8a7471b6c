package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/pkttest"
)

// BPF_PROG_RUN without a context runs on the loopback device of the current
// network namespace, so skb->ifindex is 1: test endpoints are keyed by it.
const (
	testIfindex = 1
	testEpID    = 10
	peerID      = Identity(300)
	otherID     = Identity(301)

	retPass = 0xffffffff // TC_ACT_UNSPEC
	retDrop = 2          // TC_ACT_SHOT
)

type fixture struct {
	t                               testing.TB
	d                               *Datapath
	pod, peer, other, host, spoofed netip.Addr
}

func newFixture(t testing.TB, v6 bool) *fixture {
	f := &fixture{t: t, d: newTestDatapath(t, Options{})}
	if v6 {
		f.pod = netip.MustParseAddr("fd00::10")
		f.peer = netip.MustParseAddr("fd00::20")
		f.other = netip.MustParseAddr("fd00::30")
		f.host = netip.MustParseAddr("fd00::1")
		f.spoofed = netip.MustParseAddr("fd00::99")
	} else {
		f.pod = netip.MustParseAddr("10.0.0.10")
		f.peer = netip.MustParseAddr("10.0.0.20")
		f.other = netip.MustParseAddr("10.0.0.30")
		f.host = netip.MustParseAddr("10.0.0.1")
		f.spoofed = netip.MustParseAddr("10.0.0.99")
	}
	for a, id := range map[netip.Addr]Identity{f.peer: peerID, f.other: otherID, f.host: IdentityHost} {
		if err := f.d.IPCachePut(netip.PrefixFrom(a, a.BitLen()), IPCacheVal{Identity: id}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// newServerFixture is a fixture whose pod isolates ingress and lets the
// peer reach TCP port 80 (rule 7): a server.
func newServerFixture(t testing.TB, v6 bool) *fixture {
	f := newFixture(t, v6)
	f.setEndpoint(EndpointIngressIsolated)
	f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}, 7)
	return f
}

// deleteEndpointBehindBack deletes the pod's endpoint from the map
// directly: no write through Datapath, so the policy generation stays.
func (f *fixture) deleteEndpointBehindBack() {
	f.t.Helper()
	ifindex := uint32(testIfindex)
	if err := f.d.tc.Endpoints.Delete(&ifindex); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) setEndpoint(flags EndpointFlags) {
	f.t.Helper()
	ep, err := NewEndpoint(testEpID, flags, f.pod)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.d.EndpointPut(testIfindex, ep); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) allow(r PortRule, ruleID uint32) {
	f.t.Helper()
	r.EndpointID = testEpID
	if err := f.d.PolicyPutRule(r, PolicyVal{RuleId: ruleID, Action: ActionAllow}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) prog(dir Dir) *ebpf.Program {
	if dir == DirIngress {
		return f.d.tc.ZtToPod
	}
	return f.d.tc.ZtFromPod
}

func (f *fixture) counter(dir Dir, v Verdict, r Reason) uint64 {
	f.t.Helper()
	c, err := f.d.Counter(dir, v, r)
	if err != nil {
		f.t.Fatal(err)
	}
	return c.Packets
}

// expect runs frame through the program of dir and checks the return code
// and that exactly the (dir, verdict, reason) counter moved by one.
func (f *fixture) expect(name string, dir Dir, frame []byte, v Verdict, r Reason) {
	f.t.Helper()
	before := f.counter(dir, v, r)
	ret, _, err := f.prog(dir).Test(frame)
	if err != nil {
		f.t.Fatalf("%s: run: %v", name, err)
	}
	want := uint32(retPass)
	if v == VerdictDrop {
		want = retDrop
	}
	if ret != want {
		f.t.Errorf("%s: %s returned %#x, want %#x (%s/%s)", name, dir, ret, want, v, r)
	}
	if after := f.counter(dir, v, r); after != before+1 {
		f.t.Errorf("%s: counter %s/%s/%s moved %d, want 1", name, dir, v, r, after-before)
	}
}

// in builds a packet from src to the pod; out one from the pod to dst.
func (f *fixture) in(src netip.Addr, proto uint8, sport, dport uint16) pkt {
	return pkt{src: src, dst: f.pod, proto: proto, sport: sport, dport: dport, tcpFlags: tcpSYN, icmpID: 77}
}

func (f *fixture) out(dst netip.Addr, proto uint8, sport, dport uint16) pkt {
	return pkt{src: f.pod, dst: dst, proto: proto, sport: sport, dport: dport, tcpFlags: tcpSYN, icmpID: 77}
}

func TestVerdictPaths(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		icmp := uint8(protoICMP)
		if v6 {
			icmp = protoICMPv6
		}
		for _, proto := range []uint8{protoTCP, protoUDP, protoSCTP, icmp} {
			t.Run(fmt.Sprintf("%s/%d", fam, proto), func(t *testing.T) {
				testVerdicts(t, v6, proto)
			})
		}
	}
}

func testVerdicts(t *testing.T, v6 bool, proto uint8) {
	hasPorts := proto == protoTCP || proto == protoUDP || proto == protoSCTP
	// ICMP only matches rules without a port; model "port 80" as any port.
	ruleProto, rulePort := proto, uint16(80)
	if !hasPorts {
		ruleProto, rulePort = 0, 0
	}

	t.Run("unknown endpoint passes", func(t *testing.T) {
		f := newFixture(t, v6)
		f.expect("in", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictAllow, ReasonNoEndpoint)
		f.expect("out", DirEgress, f.out(f.other, proto, 40000, 80).bytes(), VerdictAllow, ReasonNoEndpoint)
	})
	t.Run("not isolated passes", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointAllowHost)
		f.expect("in", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictAllow, ReasonNotIsolated)
		f.expect("out", DirEgress, f.out(f.other, proto, 40001, 80).bytes(), VerdictAllow, ReasonNotIsolated)
	})
	t.Run("isolated without rule drops", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
		f.expect("in", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
		f.expect("out", DirEgress, f.out(f.other, proto, 40000, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
	})
	t.Run("allow by specific peer", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: ruleProto, Port: rulePort}, 1)
		f.allow(PortRule{Dir: DirEgress, Peer: peerID, Proto: ruleProto, Port: rulePort}, 2)
		f.expect("in peer", DirIngress, f.in(f.peer, proto, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
		f.expect("in other", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
		f.expect("out peer", DirEgress, f.out(f.peer, proto, 40001, 80).bytes(), VerdictAllow, ReasonAllowed)
		f.expect("out other", DirEgress, f.out(f.other, proto, 40001, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
		if hasPorts {
			f.expect("in peer other port", DirIngress, f.in(f.peer, proto, 40000, 81).bytes(), VerdictDrop, ReasonPolicyDenied)
		}
	})
	t.Run("allow by any peer", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: IdentityAny, Proto: ruleProto, Port: rulePort}, 3)
		f.expect("in other", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
		world := netip.MustParseAddr("192.0.2.1")
		if v6 {
			world = netip.MustParseAddr("2001:db8::1")
		}
		f.expect("in world", DirIngress, f.in(world, proto, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
	})
	t.Run("allow by the prefix identity of the peer's address", func(t *testing.T) {
		// zt_abi.h, "Prefix identity of an address": other's host entry
		// names cidrID; an entry of cidrID admits other, not peer.
		const cidrID = Identity(400)
		f := newFixture(t, v6)
		if err := f.d.IPCachePut(netip.PrefixFrom(f.other, f.other.BitLen()), IPCacheVal{Identity: otherID, CidrIdentity: cidrID}); err != nil {
			t.Fatal(err)
		}
		f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: cidrID, Proto: ruleProto, Port: rulePort}, 7)
		f.allow(PortRule{Dir: DirEgress, Peer: cidrID, Proto: ruleProto, Port: rulePort}, 8)
		f.expect("in other", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictAllow, ReasonAllowed)
		f.expect("in peer", DirIngress, f.in(f.peer, proto, 40000, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
		f.expect("out other", DirEgress, f.out(f.other, proto, 40001, 80).bytes(), VerdictAllow, ReasonAllowed)
		f.expect("out peer", DirEgress, f.out(f.peer, proto, 40001, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
		if hasPorts {
			f.expect("in other, other port", DirIngress, f.in(f.other, proto, 40002, 81).bytes(), VerdictDrop, ReasonPolicyDenied)
			// A rule of the peer's own identity for another port
			// admits that port; the prefix identity still admits its
			// own.
			f.allow(PortRule{Dir: DirIngress, Peer: otherID, Proto: proto, Port: 82}, 9)
			f.expect("in other, own rule", DirIngress, f.in(f.other, proto, 40003, 82).bytes(), VerdictAllow, ReasonAllowed)
			f.expect("in other, prefix rule", DirIngress, f.in(f.other, proto, 40004, 80).bytes(), VerdictAllow, ReasonAllowed)
		}
		// Without the prefix identity in the host entry, nothing admits it.
		if err := f.d.IPCachePut(netip.PrefixFrom(f.other, f.other.BitLen()), IPCacheVal{Identity: otherID}); err != nil {
			t.Fatal(err)
		}
		f.expect("in other, no prefix identity", DirIngress, f.in(f.other, proto, 40005, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
	})
	t.Run("protocol-only rule", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: proto}, 4)
		f.expect("any port", DirIngress, f.in(f.peer, proto, 40000, 12345).bytes(), VerdictAllow, ReasonAllowed)
		otherProto := uint8(protoUDP)
		if proto == protoUDP {
			otherProto = protoTCP
		}
		f.expect("other proto", DirIngress, f.in(f.peer, otherProto, 40000, 12345).bytes(), VerdictDrop, ReasonPolicyDenied)
	})
	if hasPorts {
		t.Run("port range edges", func(t *testing.T) {
			f := newFixture(t, v6)
			f.setEndpoint(EndpointIngressIsolated)
			f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: proto, Port: 1000, EndPort: 2000}, 5)
			for port, ok := range map[uint16]bool{999: false, 1000: true, 1500: true, 2000: true, 2001: false} {
				v, r := VerdictAllow, ReasonAllowed
				if !ok {
					v, r = VerdictDrop, ReasonPolicyDenied
				}
				f.expect(fmt.Sprintf("port %d", port), DirIngress, f.in(f.peer, proto, 40000, port).bytes(), v, r)
			}
		})
	}
	t.Run("reply via conntrack, revoke cuts the flow", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
		r := PortRule{Dir: DirEgress, Peer: peerID, Proto: ruleProto, Port: rulePort}
		f.allow(r, 6)
		fwd := f.out(f.peer, proto, 40000, 80)
		reply := pkt{src: f.peer, dst: f.pod, proto: proto, sport: 80, dport: 40000, tcpFlags: tcpSYN | tcpACK,
			icmpID: 77, icmpType: 255}
		if v6 {
			reply.icmpType = 129
		}
		f.expect("forward", DirEgress, fwd.bytes(), VerdictAllow, ReasonAllowed)
		f.expect("reply", DirIngress, reply.bytes(), VerdictAllow, ReasonReply)
		// The peer opening its own flow towards the pod is not a reply.
		fwdIn := f.in(f.peer, proto, 80, 40001)
		if !hasPorts {
			fwdIn = f.in(f.peer, proto, 0, 0) // echo request from the peer
		}
		f.expect("peer-initiated", DirIngress, fwdIn.bytes(), VerdictDrop, ReasonPolicyDenied)
		if proto == 6 {
			// A new connection from the peer that reuses the reversed
			// tuple of the pod's flow (port reuse): a SYN is never a reply.
			syn := reply
			syn.tcpFlags = tcpSYN
			f.expect("peer SYN on the reversed tuple", DirIngress, syn.bytes(), VerdictDrop, ReasonPolicyDenied)
		}
		f.expect("forward again", DirEgress, fwd.bytes(), VerdictAllow, ReasonAllowed)
		if err := f.d.PolicyDeleteRule(PortRule{EndpointID: testEpID, Dir: r.Dir, Peer: r.Peer, Proto: r.Proto, Port: r.Port}); err != nil {
			t.Fatal(err)
		}
		f.expect("forward after revoke", DirEgress, fwd.bytes(), VerdictDrop, ReasonPolicyDenied)
		f.expect("reply after revoke", DirIngress, reply.bytes(), VerdictDrop, ReasonPolicyDenied)
	})
	t.Run("spoofed source drops", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(0)
		p := f.out(f.peer, proto, 40000, 80)
		p.src = f.spoofed
		f.expect("spoofed", DirEgress, p.bytes(), VerdictDrop, ReasonSpoofed)
		f.expect("own", DirEgress, f.out(f.peer, proto, 40000, 80).bytes(), VerdictAllow, ReasonNotIsolated)
	})
	t.Run("an address the endpoint gave up is spoofed, in its live flows too", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(0)
		out := f.out(f.peer, proto, 40000, 80) // likely forward: its own entry
		in := f.in(f.peer, proto, 40001, 80)
		reply := pkt{src: f.pod, dst: f.peer, proto: proto, sport: 80, dport: 40001, tcpFlags: tcpACK, icmpID: 77}
		if proto == protoICMP {
			reply.icmpType = 255 // echo reply
		} else if proto == protoICMPv6 {
			reply.icmpType = 129
		}
		f.expect("out", DirEgress, out.bytes(), VerdictAllow, ReasonNotIsolated)
		f.expect("in", DirIngress, in.bytes(), VerdictAllow, ReasonNotIsolated)
		out.tcpFlags = tcpACK
		f.expect("out, established", DirEgress, out.bytes(), VerdictAllow, ReasonNotIsolated)
		f.expect("reply", DirEgress, reply.bytes(), VerdictAllow, ReasonReply)
		// The interface now has another address: its old one is spoofed,
		// whatever conntrack holds.
		f.pod = f.spoofed
		f.setEndpoint(0)
		f.expect("old address, established", DirEgress, out.bytes(), VerdictDrop, ReasonSpoofed)
		f.expect("old address, reply", DirEgress, reply.bytes(), VerdictDrop, ReasonSpoofed)
	})
	t.Run("host allowed with ALLOW_HOST only", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated | EndpointAllowHost)
		f.expect("host allowed", DirIngress, f.in(f.host, proto, 40000, 80).bytes(), VerdictAllow, ReasonHost)
		f.setEndpoint(EndpointIngressIsolated)
		f.expect("host denied", DirIngress, f.in(f.host, proto, 40001, 80).bytes(), VerdictDrop, ReasonPolicyDenied)
	})
	t.Run("audit passes and counts", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(EndpointIngressIsolated | EndpointAudit)
		f.expect("audit", DirIngress, f.in(f.other, proto, 40000, 80).bytes(), VerdictAudit, ReasonPolicyDenied)
		if n := f.counter(DirIngress, VerdictDrop, ReasonPolicyDenied); n != 0 {
			t.Errorf("audit counted %d drops", n)
		}
	})
	t.Run("truncated header drops", func(t *testing.T) {
		f := newFixture(t, v6)
		f.setEndpoint(0)
		p := f.in(f.other, proto, 40000, 80)
		p.truncL4 = 3
		f.expect("truncated", DirIngress, p.bytes(), VerdictDrop, ReasonMalformed)
	})
}

func TestLinkLocalAndParsing(t *testing.T) {
	t.Run("arp passes isolated endpoints", func(t *testing.T) {
		f := newFixture(t, false)
		f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
		f.expect("arp in", DirIngress, arpFrame(), VerdictAllow, ReasonLinkLocal)
		f.expect("arp out", DirEgress, arpFrame(), VerdictAllow, ReasonLinkLocal)
	})
	t.Run("ipv6 neighbour discovery passes", func(t *testing.T) {
		f := newFixture(t, true)
		f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
		ll := netip.MustParseAddr("fe80::1")
		ns := pkt{src: ll, dst: netip.MustParseAddr("ff02::1:ff00:10"), proto: protoICMPv6, icmpType: 135, hopLimit: 255}
		f.expect("ns out from link-local", DirEgress, ns.bytes(), VerdictAllow, ReasonLinkLocal)
		ns.src = netip.IPv6Unspecified()
		f.expect("ns out from :: (DAD)", DirEgress, ns.bytes(), VerdictAllow, ReasonLinkLocal)
		ns.src = f.host
		f.expect("ns in", DirIngress, ns.bytes(), VerdictAllow, ReasonLinkLocal)
		// Routed (hop limit != 255): not ND, so ordinary policy applies.
		ns.hopLimit = 64
		f.expect("ns routed", DirIngress, ns.bytes(), VerdictDrop, ReasonPolicyDenied)
		// A non-ND packet from a link-local source is spoofed.
		ping := pkt{src: ll, dst: f.peer, proto: protoICMPv6}
		f.expect("link-local ping out", DirEgress, ping.bytes(), VerdictDrop, ReasonSpoofed)
	})
	t.Run("ipv6 extension headers", func(t *testing.T) {
		f := newFixture(t, true)
		f.setEndpoint(EndpointIngressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}, 1)
		p := f.in(f.peer, protoTCP, 40000, 80)
		p.v6ext = []uint8{0, 60} // hop-by-hop, destination options
		f.expect("two ext headers", DirIngress, p.bytes(), VerdictAllow, ReasonAllowed)
		p.v6ext = []uint8{0, 60, 60, 60, 60, 60, 60}
		f.expect("too many ext headers", DirIngress, p.bytes(), VerdictDrop, ReasonUnsupported)
	})
	t.Run("ipv4 non-first fragment matches only port-less rules", func(t *testing.T) {
		f := newFixture(t, false)
		f.setEndpoint(EndpointIngressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoUDP, Port: 53}, 1)
		frag := f.in(f.peer, protoUDP, 40000, 53)
		frag.fragOffset = 100
		f.expect("fragment, port rule", DirIngress, frag.bytes(), VerdictDrop, ReasonPolicyDenied)
		f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoUDP}, 2)
		f.expect("fragment, any-port rule", DirIngress, frag.bytes(), VerdictAllow, ReasonAllowed)
	})
	t.Run("explicit deny rule", func(t *testing.T) {
		f := newFixture(t, false)
		f.setEndpoint(EndpointIngressIsolated)
		f.allow(PortRule{Dir: DirIngress, Peer: IdentityAny, Proto: protoTCP}, 1)
		keys := must[[]PolicyKey](t)(PolicyKeys(PortRule{EndpointID: testEpID, Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 22}))
		if err := f.d.PolicyPut(keys[0], PolicyVal{RuleId: 9, Action: ActionDeny}); err != nil {
			t.Fatal(err)
		}
		f.expect("deny", DirIngress, f.in(f.peer, protoTCP, 40000, 22).bytes(), VerdictDrop, ReasonDenyRule)
		f.expect("allow", DirIngress, f.in(f.peer, protoTCP, 40000, 23).bytes(), VerdictAllow, ReasonAllowed)
	})
	t.Run("non-ip frames", func(t *testing.T) {
		f := newFixture(t, false)
		f.setEndpoint(0)
		frame := arpFrame()
		frame[12], frame[13] = 0x88, 0xcc // LLDP
		f.expect("out", DirEgress, frame, VerdictDrop, ReasonUnsupported)
		f.expect("in, not isolated", DirIngress, frame, VerdictAllow, ReasonUnsupported)
	})
}

// onCPU0 pins the calling goroutine's thread to CPU 0, so per-CPU state
// (the event token bucket) is deterministic.
func onCPU0(t testing.TB) {
	onCPU(t, 0)
}

// onCPU pins the calling goroutine's thread to cpu until the test ends.
func onCPU(t testing.TB, cpu int) {
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	if err := pinThread(cpu); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.SchedSetaffinity(0, &old) })
}

// pinThread pins the calling thread (locked by the caller) to cpu.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}

func readEvents(t *testing.T, r *ringbuf.Reader) []FlowEvent {
	t.Helper()
	var out []FlowEvent
	for {
		r.SetDeadline(time.Now().Add(50 * time.Millisecond))
		rec, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ringbuf.ErrFlushed) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		e, err := DecodeEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}

func TestEvents(t *testing.T) {
	onCPU0(t)
	f := newFixture(t, false)
	f.setEndpoint(EndpointIngressIsolated)
	f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}, 42)
	r := must[*ringbuf.Reader](t)(f.d.NewEventReader())
	defer r.Close()

	if err := f.d.SetConfig(Config{EvRate: 1000, EvBurst: 1000, Flags: ConfigEventsAllowed}); err != nil {
		t.Fatal(err)
	}
	f.expect("drop", DirIngress, f.in(f.other, protoTCP, 40000, 81).bytes(), VerdictDrop, ReasonPolicyDenied)
	f.expect("allow syn", DirIngress, f.in(f.peer, protoTCP, 40001, 80).bytes(), VerdictAllow, ReasonAllowed)
	ack := f.in(f.peer, protoTCP, 40001, 80)
	ack.tcpFlags = tcpACK
	f.expect("allow ack (no event)", DirIngress, ack.bytes(), VerdictAllow, ReasonAllowed)

	evs := readEvents(t, r)
	if len(evs) != 2 {
		t.Fatalf("got %d events, want 2: %+v", len(evs), evs)
	}
	e := evs[0]
	if e.EpId != testEpID || e.Ifindex != testIfindex || e.PeerId != otherID || e.RuleId != 0 ||
		e.Family != FamilyIPv4 || e.Proto != protoTCP || e.Dir != DirIngress || e.Reason != ReasonPolicyDenied ||
		e.Verdict != VerdictDrop || e.TcpFlags != tcpSYN || e.Hook != HookTC || e.SrcPort() != 40000 ||
		e.DstPort() != 81 || e.SrcAddr() != f.other || e.DstAddr() != f.pod || e.Len == 0 || e.TsNs == 0 {
		t.Errorf("drop event: %+v", e)
	}
	if e := evs[1]; e.Verdict != VerdictAllow || e.Reason != ReasonAllowed || e.RuleId != 42 || e.PeerId != peerID {
		t.Errorf("allow event: %+v", e)
	}

	t.Run("rate limit suppresses and counts", func(t *testing.T) {
		if err := f.d.SetConfig(Config{EvRate: 1, EvBurst: 3}); err != nil {
			t.Fatal(err)
		}
		// Empty the bucket's memory of the earlier burst.
		var zero uint32
		if err := f.d.tc.EvBucket.Put(&zero, make([]ztTcZtBucket, must[int](t)(ebpf.PossibleCPU()))); err != nil {
			t.Fatal(err)
		}
		const n = 20
		for i := range n {
			f.expect("flood", DirIngress, f.in(f.other, protoTCP, uint16(30000+i), 81).bytes(), VerdictDrop, ReasonPolicyDenied)
		}
		got := readEvents(t, r)
		suppressed := f.counter(DirIngress, VerdictDrop, ReasonEvRateLimited)
		if len(got) != 3 || suppressed != n-3 {
			t.Errorf("flood of %d: %d events, %d suppressed; want 3 and %d", n, len(got), suppressed, n-3)
		}
	})
	t.Run("full ring buffer counts lost events", func(t *testing.T) {
		if err := f.d.SetConfig(Config{EvRate: 1_000_000, EvBurst: 1_000_000}); err != nil {
			t.Fatal(err)
		}
		lost0 := f.counter(DirIngress, VerdictDrop, ReasonEvLost)
		// 1 MiB / (72 + 8 header) bytes: 20000 events overflow it.
		const n = 20000
		pktb := f.in(f.other, protoTCP, 1, 81).bytes()
		ret, err := f.d.tc.ZtToPod.Run(&ebpf.RunOptions{Data: pktb, Repeat: n})
		if err != nil || ret != retDrop {
			t.Fatalf("run: %v %#x", err, ret)
		}
		got := readEvents(t, r)
		lost := f.counter(DirIngress, VerdictDrop, ReasonEvLost) - lost0
		if lost == 0 || uint64(len(got))+lost != n {
			t.Errorf("%d events read + %d lost, want %d in total with some lost", len(got), lost, n)
		}
	})
}

// TestICMPErrorsRelated: an ICMP error about a flow allowed at the endpoint
// (port unreachable, fragmentation needed / packet too big for path MTU
// discovery, time exceeded) passes isolation as part of that flow, from the
// peer or from any router on the path; an error quoting a flow the endpoint
// never allowed, or quoting it the wrong way round, is policy as usual.
func TestICMPErrorsRelated(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			f := newFixture(t, v6)
			f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
			f.allow(PortRule{Dir: DirEgress, Peer: peerID, Proto: protoUDP, Port: 53}, 1)
			f.allow(PortRule{Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 80}, 2)
			f.allow(PortRule{Dir: DirEgress, Peer: peerID, Proto: protoICMP}, 3) // proto any-port rule: pings
			if v6 {
				f.allow(PortRule{Dir: DirEgress, Peer: peerID, Proto: protoICMPv6}, 3)
			}
			router := netip.MustParseAddr("192.0.2.1")
			type kind struct{ typ, code uint8 }
			unreach, tooBig, timeExceeded := kind{3, 3}, kind{3, 4}, kind{11, 0}
			if v6 {
				router = netip.MustParseAddr("2001:db8::1")
				unreach, tooBig, timeExceeded = kind{1, 4}, kind{2, 0}, kind{3, 0}
			}
			// icmpErr is the error src sends dst about quoted, quoting its
			// IP header and the first 8 bytes after it (or all of it).
			icmpErr := func(src, dst netip.Addr, k kind, quoted pkttest.Packet, whole bool) []byte {
				q := quoted.Frame()[14:]
				if n := map[bool]int{false: 28, true: 48}[v6]; !whole && len(q) > n {
					q = q[:n]
				}
				e := pkttest.Packet{Src: src, Dst: dst, Proto: pkttest.ICMPProto(src), ICMPType: k.typ, ICMPCode: k.code, Payload: q}
				if k == tooBig {
					e.ICMPSeq = 1400 // the next hop's MTU
				}
				return e.Frame()
			}

			out := pkttest.First(f.pod, f.peer, pkttest.ProtoUDP, 40000, 53)
			f.expect("udp out", DirEgress, out.Frame(), VerdictAllow, ReasonAllowed)
			f.expect("port unreachable from the peer", DirIngress, icmpErr(f.peer, f.pod, unreach, out, false), VerdictAllow, ReasonReply)
			f.expect("too big from a router", DirIngress, icmpErr(router, f.pod, tooBig, out, true), VerdictAllow, ReasonReply)
			f.expect("time exceeded from a router", DirIngress, icmpErr(router, f.pod, timeExceeded, out, false), VerdictAllow, ReasonReply)

			never := pkttest.First(f.pod, f.other, pkttest.ProtoUDP, 40001, 53)
			f.expect("error about a flow never allowed", DirIngress, icmpErr(f.peer, f.pod, unreach, never, false), VerdictDrop, ReasonPolicyDenied)
			f.expect("error quoting the flow reversed", DirIngress, icmpErr(f.peer, f.pod, unreach, out.Reply(), false), VerdictDrop, ReasonPolicyDenied)
			otherPort := pkttest.First(f.pod, f.peer, pkttest.ProtoUDP, 40000, 54)
			f.expect("error quoting another port", DirIngress, icmpErr(f.peer, f.pod, unreach, otherPort, false), VerdictDrop, ReasonPolicyDenied)

			// The pod's own errors about a flow it accepted leave through
			// its isolated egress.
			in := pkttest.First(f.peer, f.pod, pkttest.ProtoTCP, 40002, 80)
			f.expect("tcp in", DirIngress, in.Frame(), VerdictAllow, ReasonAllowed)
			f.expect("the pod's error about it", DirEgress, icmpErr(f.pod, f.peer, unreach, in, false), VerdictAllow, ReasonReply)
			f.expect("the pod's error about a flow it never accepted", DirEgress,
				icmpErr(f.pod, f.other, unreach, pkttest.First(f.other, f.pod, pkttest.ProtoTCP, 40003, 80), false), VerdictDrop, ReasonPolicyDenied)

			// An echo request the pod sent can come back as an error too.
			ping := pkttest.First(f.pod, f.peer, pkttest.ICMPProto(f.pod), 77, 0)
			f.expect("ping out", DirEgress, ping.Frame(), VerdictAllow, ReasonAllowed)
			f.expect("ping's time exceeded", DirIngress, icmpErr(router, f.pod, timeExceeded, ping, false), VerdictAllow, ReasonReply)

			// Revoking the flow's allow cuts its errors with it.
			if err := f.d.PolicyDeleteRule(PortRule{EndpointID: testEpID, Dir: DirEgress, Peer: peerID, Proto: protoUDP, Port: 53}); err != nil {
				t.Fatal(err)
			}
			f.expect("udp out after revoke", DirEgress, out.Frame(), VerdictDrop, ReasonPolicyDenied)
			f.expect("its error after revoke", DirIngress, icmpErr(f.peer, f.pod, unreach, out, false), VerdictDrop, ReasonPolicyDenied)
		})
	}
}

// TestConntrackTimeout: with a ct timeout, an entry serves replies while
// its idle time is within timeout + ZT_CT_REFRESH_NS (last_seen is
// refreshed at most once per second) and expires after that.
func TestConntrackTimeout(t *testing.T) {
	f := newFixture(t, false)
	cfg := DefaultConfig
	cfg.CtTimeoutNs = 1 // expired as soon as the refresh slack has passed
	if err := f.d.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	f.setEndpoint(EndpointIngressIsolated | EndpointEgressIsolated)
	f.allow(PortRule{Dir: DirEgress, Peer: peerID, Proto: protoTCP, Port: 80}, 6)
	fwd := f.out(f.peer, protoTCP, 40000, 80)
	reply := pkt{src: f.peer, dst: f.pod, proto: protoTCP, sport: 80, dport: 40000, tcpFlags: tcpSYN | tcpACK}
	f.expect("forward", DirEgress, fwd.bytes(), VerdictAllow, ReasonAllowed)
	f.expect("reply within the slack", DirIngress, reply.bytes(), VerdictAllow, ReasonReply)
	time.Sleep(1200 * time.Millisecond)
	f.expect("reply after expiry", DirIngress, reply.bytes(), VerdictDrop, ReasonPolicyDenied)
	f.expect("forward again", DirEgress, fwd.bytes(), VerdictAllow, ReasonAllowed)
	f.expect("reply of the new entry", DirIngress, reply.bytes(), VerdictAllow, ReasonReply)
}
