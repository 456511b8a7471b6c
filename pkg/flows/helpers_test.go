package flows

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/pkg/datapath"
)

// fakeResolver resolves from maps; pods come from a PodTable so deleted
// pods behave as in the agent.
type fakeResolver struct {
	pods  *PodTable
	eps   map[uint32]EndpointInfo
	rules map[uint32]string
	ids   map[uint32]string
}

func (f *fakeResolver) PodByIP(ip netip.Addr) (PodInfo, bool) { return f.pods.Lookup(ip) }
func (f *fakeResolver) Endpoint(ifindex, _ uint32) (EndpointInfo, bool) {
	e, ok := f.eps[ifindex]
	return e, ok
}
func (f *fakeResolver) Rule(id uint32) (string, bool)     { s, ok := f.rules[id]; return s, ok }
func (f *fakeResolver) Identity(id uint32) (string, bool) { s, ok := f.ids[id]; return s, ok }

var (
	ipWeb    = netip.MustParseAddr("10.1.0.10")
	ipDB     = netip.MustParseAddr("10.1.0.20")
	ipGone   = netip.MustParseAddr("10.1.0.30")
	ipWorld  = netip.MustParseAddr("203.0.113.7")
	ipCIDR   = netip.MustParseAddr("192.0.2.9")
	ipSpoof  = netip.MustParseAddr("10.9.9.9")
	webLbls  = map[string]string{"app": "web", "tier": "front"}
	dbLbls   = map[string]string{"app": "db", "tier": "data"}
	goneLbls = map[string]string{"app": "batch"}
)

const (
	ifWeb = 11
	ifDB  = 12
)

func newFakeResolver() *fakeResolver {
	pods := NewPodTable(time.Minute, 100)
	pods.Set(PodInfo{Namespace: "shop", Name: "web", Labels: webLbls}, []netip.Addr{ipWeb})
	pods.Set(PodInfo{Namespace: "data", Name: "db", Labels: dbLbls}, []netip.Addr{ipDB})
	pods.Set(PodInfo{Namespace: "shop", Name: "batch", Labels: goneLbls}, []netip.Addr{ipGone})
	pods.Delete("shop", "batch")
	return &fakeResolver{
		pods: pods,
		eps: map[uint32]EndpointInfo{
			ifWeb: {Pod: PodInfo{Namespace: "shop", Name: "web"}, IsolatedBy: [2][]string{{"shop/web-in"}, {"shop/default-deny", "shop/web-out"}}},
			ifDB:  {Pod: PodInfo{Namespace: "data", Name: "db"}, IsolatedBy: [2][]string{{"data/db-from-api", "data/default-deny"}, nil}},
		},
		rules: map[uint32]string{7: "data/db-from-api ingress[0]"},
		ids:   map[uint32]string{400: "192.0.2.0/24"},
	}
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func addr16(a netip.Addr) [16]byte {
	var out [16]byte
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out
	}
	return a.As16()
}

// ev builds a flow event as the datapath emits it.
type evSpec struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	dir          datapath.Dir
	verdict      datapath.Verdict
	reason       datapath.Reason
	ifindex      uint32
	peer         datapath.Identity
	rule         uint32
	flags        uint8
	ts           uint64
}

func (s evSpec) event() datapath.FlowEvent {
	fam := datapath.FamilyIPv4
	if s.src.Is6() {
		fam = datapath.FamilyIPv6
	}
	if s.proto == 0 {
		s.proto = 6
	}
	return datapath.FlowEvent{
		TsNs: s.ts, EpId: s.ifindex, Ifindex: s.ifindex, PeerId: s.peer, RuleId: s.rule,
		Family: fam, Proto: s.proto, Dir: s.dir, Reason: s.reason, Verdict: s.verdict,
		TcpFlags: s.flags, Sport: htons(s.sport), Dport: htons(s.dport),
		Saddr: addr16(s.src), Daddr: addr16(s.dst), Len: 60,
	}
}

func monoNow(t testing.TB) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
