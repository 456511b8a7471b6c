package datapath

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ztnet/zt/internal/pkttest"
)

// TestRunProgramOnInterface: RunProgram decides a frame as the endpoint
// of the interface it names would: a frame policy denies is dropped on
// that interface and passes on the loopback, which is no endpoint.
func TestRunProgramOnInterface(t *testing.T) {
	d := newTestDatapath(t, Options{})
	ns := newNamedNS(t, "run")
	h := must[*netlink.Handle](t)(netlink.NewHandleAt(ns))
	defer h.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "ztrun0"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "ztrun1"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	ifindex := must[netlink.Link](t)(h.LinkByName("ztrun0")).Attrs().Index
	pod, peer, other := netip.MustParseAddr("10.98.0.2"), netip.MustParseAddr("10.98.0.1"), netip.MustParseAddr("10.98.0.3")
	if err := d.EndpointPut(uint32(ifindex), must[Endpoint](t)(NewEndpoint(30, EndpointIngressIsolated, pod))); err != nil {
		t.Fatal(err)
	}
	if err := d.IPCachePut(netip.PrefixFrom(peer, 32), IPCacheVal{Identity: peerID}); err != nil {
		t.Fatal(err)
	}
	if err := d.PolicyPutRule(PortRule{EndpointID: 30, Dir: DirIngress, Peer: peerID, Proto: protoTCP, Port: 443}, PolicyVal{RuleId: 7, Action: ActionAllow}); err != nil {
		t.Fatal(err)
	}
	allowed := pkttest.First(peer, pod, pkttest.ProtoTCP, 40000, 443).Frame()
	denied := pkttest.First(other, pod, pkttest.ProtoTCP, 40000, 443).Frame()
	inNS(t, ns, func() error {
		for _, c := range []struct {
			name    string
			ifindex int
			frame   []byte
			pass    bool
		}{
			{"allowed on the endpoint", ifindex, allowed, true},
			{"denied on the endpoint", ifindex, denied, false},
			{"denied on the loopback (no endpoint)", 1, denied, true},
		} {
			pass, per, err := d.RunProgram(DirIngress, c.ifindex, c.frame, 100)
			if err != nil {
				return err
			}
			if pass != c.pass || per <= 0 {
				t.Errorf("%s: passed %v in %v per run, want passed %v", c.name, pass, per, c.pass)
			}
		}
		return nil
	})
	if c := must[Counter](t)(d.Counter(DirIngress, VerdictDrop, ReasonPolicyDenied)); c.Packets != 100 {
		t.Errorf("%d policy drops counted, want 100", c.Packets)
	}
	if _, _, err := d.RunProgram(DirIngress, 1, denied, 0); err == nil {
		t.Error("repeat 0 accepted")
	}
}
