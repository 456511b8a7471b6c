package flows

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
)

func TestEnrich(t *testing.T) {
	res := newFakeResolver()
	e := must[*Enricher](t)(NewEnricher("node-1", res))
	now := monoNow(t)

	t.Run("policy denied ingress names pods and isolating policies", func(t *testing.T) {
		ev := evSpec{src: ipWeb, dst: ipDB, sport: 40000, dport: 5432, dir: datapath.DirIngress,
			verdict: datapath.VerdictDrop, reason: datapath.ReasonPolicyDenied, ifindex: ifDB, peer: 300, flags: 0x02, ts: now}.event()
		r := e.Enrich(&ev)
		if d := time.Since(r.Time); d < -time.Second || d > time.Second {
			t.Errorf("time %s is %s from now: monotonic offset wrong", r.Time, d)
		}
		want := Record{Time: r.Time, Node: "node-1", Direction: "ingress", Protocol: "TCP", TCPFlags: "SYN",
			Verdict: "drop", Reason: "policy-denied", Hook: "tc", PeerIdentity: 300, Len: 60, Endpoint: "data/db",
			Src:      Peer{IP: ipWeb, Port: 40000, Namespace: "shop", Pod: "web", Labels: webLbls},
			Dst:      Peer{IP: ipDB, Port: 5432, Namespace: "data", Pod: "db", Labels: dbLbls},
			Policies: []string{"data/db-from-api", "data/default-deny"}}
		if !recordEqual(r, want) {
			t.Errorf("got  %+v\nwant %+v", r, want)
		}
	})
	t.Run("egress policies are the source's", func(t *testing.T) {
		ev := evSpec{src: ipWeb, dst: ipWorld, sport: 1, dport: 443, dir: datapath.DirEgress,
			verdict: datapath.VerdictDrop, reason: datapath.ReasonPolicyDenied, ifindex: ifWeb, peer: datapath.IdentityWorld, ts: now}.event()
		r := e.Enrich(&ev)
		if !slices.Equal(r.Policies, []string{"shop/default-deny", "shop/web-out"}) || r.Dst.Reserved != "world" || r.Dst.Pod != "" {
			t.Errorf("%+v", r)
		}
		if r.Dst.Name() != "world(203.0.113.7)" || r.Src.Name() != "shop/web" {
			t.Errorf("names %s %s", r.Src.Name(), r.Dst.Name())
		}
	})
	t.Run("recently deleted pod still resolves", func(t *testing.T) {
		ev := evSpec{src: ipGone, dst: ipDB, dport: 5432, dir: datapath.DirIngress, proto: 17,
			verdict: datapath.VerdictDrop, reason: datapath.ReasonPolicyDenied, ifindex: ifDB, peer: 301, ts: now}.event()
		r := e.Enrich(&ev)
		if r.Src.Pod != "batch" || r.Src.Namespace != "shop" || !r.Src.Deleted || r.Src.Labels["app"] != "batch" || r.Protocol != "UDP" || r.TCPFlags != "" {
			t.Errorf("%+v", r)
		}
	})
	t.Run("explicit rule, CIDR and host peers", func(t *testing.T) {
		ev := evSpec{src: ipCIDR, dst: ipDB, dport: 5432, dir: datapath.DirIngress,
			verdict: datapath.VerdictAllow, reason: datapath.ReasonAllowed, ifindex: ifDB, peer: 400, rule: 7, ts: now}.event()
		r := e.Enrich(&ev)
		if r.Rule != "data/db-from-api ingress[0]" || r.RuleID != 7 || r.Src.Reserved != "192.0.2.0/24" || r.Policies != nil {
			t.Errorf("%+v", r)
		}
		ev.RuleId = 99
		ev.PeerId = datapath.IdentityHost
		r = e.Enrich(&ev)
		if r.Rule != "rule 99 (no longer known)" || r.Src.Reserved != "host" {
			t.Errorf("%+v", r)
		}
	})
	t.Run("spoofed source names the endpoint", func(t *testing.T) {
		ev := evSpec{src: ipSpoof, dst: ipDB, dport: 5432, dir: datapath.DirEgress,
			verdict: datapath.VerdictDrop, reason: datapath.ReasonSpoofed, ifindex: ifWeb, peer: 300, ts: now}.event()
		r := e.Enrich(&ev)
		if r.Endpoint != "shop/web" || r.Src.Name() != "shop/web" || r.Src.IP != ipSpoof || r.Claimed != "" ||
			r.Dst.Pod != "db" || r.Reason != "spoofed" || r.Policies != nil {
			t.Errorf("%+v", r)
		}
	})
	t.Run("a socket hook's drop names the pod though the socket has no address yet", func(t *testing.T) {
		ev := evSpec{src: netip.IPv4Unspecified(), dst: ipDB, dport: 5432, dir: datapath.DirEgress,
			verdict: datapath.VerdictDrop, reason: datapath.ReasonSockDenied, ifindex: ifWeb, peer: 300, ts: now}.event()
		r := e.Enrich(&ev)
		if r.Src.Name() != "shop/web" || r.Dst.Name() != "data/db" || r.Claimed != "" ||
			!slices.Equal(r.Policies, []string{"shop/default-deny", "shop/web-out"}) {
			t.Errorf("%+v", r)
		}
	})
	t.Run("a source forging another pod's address is the sender, not the pod it claims", func(t *testing.T) {
		ev := evSpec{src: ipDB, dst: ipSpoof, sport: 5432, dport: 80, dir: datapath.DirEgress,
			verdict: datapath.VerdictDrop, reason: datapath.ReasonSpoofed, ifindex: ifWeb, peer: 300, ts: now}.event()
		r := e.Enrich(&ev)
		if r.Src.Name() != "shop/web" || r.Src.IP != ipDB || r.Src.Port != 5432 || r.Claimed != "data/db" || r.Endpoint != "shop/web" {
			t.Errorf("%+v", r)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		a, b := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
		ev := evSpec{src: a, dst: b, sport: 1, dport: 2, dir: datapath.DirIngress, verdict: datapath.VerdictDrop,
			reason: datapath.ReasonPolicyDenied, peer: 2, ts: now}.event()
		r := e.Enrich(&ev)
		if r.Src.IP != a || r.Dst.IP != b || r.Src.Reserved != "world" {
			t.Errorf("%+v", r)
		}
	})
	t.Run("decode raw", func(t *testing.T) {
		if _, err := e.Decode(make([]byte, 10)); err == nil {
			t.Error("short record decoded")
		}
	})
}

func recordEqual(a, b Record) bool {
	return a.Time.Equal(b.Time) && a.Node == b.Node && a.Direction == b.Direction && a.Protocol == b.Protocol &&
		a.TCPFlags == b.TCPFlags && a.Verdict == b.Verdict && a.Reason == b.Reason && a.Hook == b.Hook &&
		a.PeerIdentity == b.PeerIdentity && a.Len == b.Len && a.Endpoint == b.Endpoint && a.Rule == b.Rule &&
		a.RuleID == b.RuleID && slices.Equal(a.Policies, b.Policies) && peerEqual(a.Src, b.Src) && peerEqual(a.Dst, b.Dst)
}

func peerEqual(a, b Peer) bool {
	if len(a.Labels) != len(b.Labels) {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	return a.IP == b.IP && a.Port == b.Port && a.Namespace == b.Namespace && a.Pod == b.Pod &&
		a.Deleted == b.Deleted && a.Reserved == b.Reserved
}

func TestPodTable(t *testing.T) {
	now := time.Unix(1000, 0)
	pt := NewPodTable(time.Minute, 3)
	pt.now = func() time.Time { return now }
	a := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	pt.Set(PodInfo{Namespace: "n", Name: "p"}, []netip.Addr{a(1), a(2)})
	pt.Set(PodInfo{Namespace: "n", Name: "p"}, []netip.Addr{a(2)}) // lost a(1)
	if p, ok := pt.Lookup(a(1)); !ok || !p.Deleted {
		t.Errorf("address a pod gave up: %+v %v", p, ok)
	}
	if p, ok := pt.Lookup(a(2)); !ok || p.Deleted {
		t.Errorf("live: %+v %v", p, ok)
	}
	// Another pod takes a(2) over; deleting the first must not forget it.
	pt.Set(PodInfo{Namespace: "n", Name: "q"}, []netip.Addr{a(2)})
	pt.Delete("n", "p")
	if p, _ := pt.Lookup(a(2)); p.Name != "q" || p.Deleted {
		t.Errorf("taken over: %+v", p)
	}
	pt.Delete("n", "q")
	if p, ok := pt.Lookup(a(2)); !ok || p.Name != "q" || !p.Deleted {
		t.Errorf("deleted q: %+v", p)
	}
	// Bounded: 3 recent entries at most, oldest go first.
	for i := 10; i < 15; i++ {
		pt.Set(PodInfo{Namespace: "n", Name: "r"}, []netip.Addr{a(i)})
		pt.Delete("n", "r")
	}
	if live, recent := pt.Len(); live != 0 || recent != 3 {
		t.Errorf("live %d recent %d, want 0 and 3", live, recent)
	}
	if _, ok := pt.Lookup(a(10)); ok {
		t.Error("oldest recent entry kept past the bound")
	}
	if _, ok := pt.Lookup(a(14)); !ok {
		t.Error("newest recent entry lost")
	}
	now = now.Add(2 * time.Minute)
	if _, ok := pt.Lookup(a(14)); ok {
		t.Error("recent entry resolves after its TTL")
	}
	// Re-adding a recent address revives it as live.
	pt.Set(PodInfo{Namespace: "n", Name: "s"}, []netip.Addr{a(14)})
	if p, ok := pt.Lookup(a(14)); !ok || p.Deleted || p.Name != "s" {
		t.Errorf("revived: %+v", p)
	}
}
