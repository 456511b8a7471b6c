package identity

import (
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"testing"
)

func TestAllocatorRefcountsAndNeverReuses(t *testing.T) {
	a := NewAllocator()
	l := Labels{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"app": "web"}, NamespaceLabels: map[string]string{"team": "a"}}
	id1, created := a.Acquire(l)
	if !created || id1.ID != FirstAllocated {
		t.Fatalf("first acquire: %v %v", id1.ID, created)
	}
	// Equal label sets (maps in another order, another instance) share one identity.
	l2 := Labels{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"app": "web"}, NamespaceLabels: map[string]string{"team": "a"}}
	if id2, created := a.Acquire(l2); created || id2.ID != id1.ID {
		t.Fatalf("second acquire: %v %v", id2.ID, created)
	}
	if a.Release(id1.ID) {
		t.Fatal("released while still used")
	}
	if !a.Release(id1.ID) {
		t.Fatal("not released after the last user")
	}
	if _, ok := a.Get(id1.ID); ok {
		t.Fatal("still live")
	}
	id3, created := a.Acquire(l)
	if !created || id3.ID == id1.ID {
		t.Fatalf("a released number was reused: %v", id3.ID)
	}
	// Reserved identities are never released.
	if a.Release(Host) || a.Release(World) {
		t.Fatal("released a reserved identity")
	}
	if a.Len() != 3 {
		t.Fatalf("Len = %d", a.Len())
	}
}

func TestLabelsKeyDistinguishes(t *testing.T) {
	base := Labels{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"a": "b"}}
	for _, other := range []Labels{
		{Kind: KindPod, Namespace: "y", PodLabels: map[string]string{"a": "b"}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"a": "c"}},
		{Kind: KindPod, Namespace: "x", NamespaceLabels: map[string]string{"a": "b"}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"a,": "b"}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"a": "b"}, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"a": "b"}, NamedPorts: []NamedPort{{"http", ProtoTCP, 80}}},
		{Kind: KindCIDR, Namespace: "x", PodLabels: map[string]string{"a": "b"}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"ab": ""}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"": "ab"}},
		{Kind: KindPod, Namespace: "xa", PodLabels: map[string]string{"": "b"}},
		{Kind: KindPod, Namespace: "x", PodLabels: map[string]string{"a": "b", "c": "d"}},
	} {
		if other.Key() == base.Key() {
			t.Errorf("%+v and %+v share key %q", base, other, base.Key())
		}
	}
	// Label sets that differ in one part only, each against the others.
	v4, v6 := netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::a00:0/104")
	variants := []Labels{
		{Kind: KindPod},
		{Kind: KindPod, CIDRs: []netip.Prefix{v4}},
		{Kind: KindPod, CIDRs: []netip.Prefix{v6}},
		{Kind: KindPod, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/9")}},
		{Kind: KindPod, CIDRs: []netip.Prefix{v4, netip.MustParsePrefix("10.0.0.0/9")}},
		{Kind: KindPod, NamedPorts: []NamedPort{{"http", ProtoTCP, 80}}},
		{Kind: KindPod, NamedPorts: []NamedPort{{"http", ProtoTCP, 81}}},
		{Kind: KindPod, NamedPorts: []NamedPort{{"http", ProtoUDP, 80}}},
		{Kind: KindPod, NamedPorts: []NamedPort{{"http", ProtoTCP, 80}, {"https", ProtoTCP, 443}}},
		{Kind: KindPod, PodLabels: map[string]string{"a": "b"}},
		{Kind: KindPod, NamespaceLabels: map[string]string{"a": "b"}},
		{Kind: KindPod, PodLabels: map[string]string{"a": "b"}, NamespaceLabels: map[string]string{"a": "b"}},
		{Kind: KindCIDR, CIDRs: []netip.Prefix{v4}},
	}
	seen := map[string]int{}
	for i, l := range variants {
		if j, dup := seen[l.Key()]; dup {
			t.Errorf("%+v and %+v share a key", variants[j], l)
		}
		seen[l.Key()] = i
	}
	// An IPv4 prefix and a named port against an IPv6 prefix whose bytes
	// spell them: the same bytes but for the family of each prefix.
	a := Labels{Kind: KindPod, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		NamedPorts: []NamedPort{{"abcdefgh", ProtoTCP, 0}}}
	addr := [16]byte{10, 0, 0, 0, 8, 1, 8, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', byte(ProtoTCP)}
	b := Labels{Kind: KindPod, CIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom16(addr), 0)}}
	if a.Key() == b.Key() {
		t.Errorf("%+v and %+v share a key", a, b)
	}
	// Equal label sets built apart (maps iterate in random order) share it.
	big := func() map[string]string {
		m := map[string]string{}
		for i := range 20 {
			m[strconv.Itoa(i)] = strconv.Itoa(i * i)
		}
		return m
	}
	for range 10 {
		a := Labels{Kind: KindPod, Namespace: "x", PodLabels: big(), NamespaceLabels: map[string]string{"p": "q", "r": "s", "t": "u"}}
		b := Labels{Kind: KindPod, Namespace: "x", PodLabels: big(), NamespaceLabels: map[string]string{"t": "u", "r": "s", "p": "q"}}
		if a.Key() != b.Key() {
			t.Fatal("equal label sets have different keys")
		}
	}
	l := Labels{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")}, NamedPorts: []NamedPort{{"http", ProtoTCP, 80}}}
	if !l.HasCIDR(netip.MustParsePrefix("10.1.0.0/16")) || l.HasCIDR(netip.MustParsePrefix("10.2.0.0/16")) {
		t.Error("HasCIDR")
	}
	if p, ok := l.NamedPort("http", ProtoTCP); !ok || p != 80 {
		t.Error("NamedPort")
	}
	if _, ok := l.NamedPort("http", ProtoUDP); ok {
		t.Error("NamedPort matched another protocol")
	}
}

// TestLabelsKeySize: a key is built in one allocation of its own size
// (the allocator keeps every identity's key).
func TestLabelsKeySize(t *testing.T) {
	l := Labels{Kind: KindPod, Namespace: "team-a",
		PodLabels:       map[string]string{"app": "web", "tier": "frontend", "version": "v1"},
		NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "team-a", "env": "prod"},
		CIDRs:           []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
		NamedPorts:      []NamedPort{{"http", ProtoTCP, 8080}, {"metrics", ProtoTCP, 9090}}}
	if n := testing.AllocsPerRun(100, func() { _ = l.Key() }); n != 1 {
		t.Errorf("Key allocates %v times, want 1", n)
	}
	size := len(l.Key())
	var before, after runtime.MemStats
	const runs = 1000
	runtime.ReadMemStats(&before)
	for range runs {
		_ = l.Key()
	}
	runtime.ReadMemStats(&after)
	// Go rounds an allocation up to its size class: at most an eighth
	// more, or 16 bytes for small ones.
	if per := int(after.TotalAlloc-before.TotalAlloc) / runs; per > size+size/8+16 {
		t.Errorf("Key allocates %d bytes for a %d-byte key", per, size)
	}
}

func TestIPCacheLongestPrefix(t *testing.T) {
	var c IPCache
	c.Set(netip.MustParsePrefix("10.0.0.0/8"), Entry{ID: 300})
	c.Set(netip.MustParsePrefix("10.1.0.0/16"), Entry{ID: 301})
	c.Set(netip.MustParsePrefix("10.1.2.3/32"), Entry{ID: 302})
	c.Set(netip.MustParsePrefix("fd00::/8"), Entry{ID: 303})
	c.Set(netip.MustParsePrefix("10.1.2.99/24"), Entry{ID: 304}) // masked to 10.1.2.0/24
	for ip, want := range map[string]ID{
		"10.9.9.9": 300, "10.1.9.9": 301, "10.1.2.3": 302, "10.1.2.4": 304, "11.0.0.1": World,
		"fd00::1": 303, "fe00::1": World, "::ffff:10.1.2.3": 302,
	} {
		if got := c.Lookup(netip.MustParseAddr(ip)).ID; got != want {
			t.Errorf("Lookup(%s) = %v, want %v", ip, got, want)
		}
	}
	c.Delete(netip.MustParsePrefix("10.1.2.3/32"))
	if got := c.Lookup(netip.MustParseAddr("10.1.2.3")).ID; got != 304 {
		t.Errorf("after delete: %v", got)
	}
	c.Set(netip.MustParsePrefix("10.1.2.0/24"), Entry{ID: 305}) // overwrite keeps one entry
	if c.Len() != 4 {
		t.Errorf("Len = %d", c.Len())
	}
	c.Delete(netip.MustParsePrefix("10.0.0.0/8"))
	if got := c.Lookup(netip.MustParseAddr("10.9.9.9")).ID; got != World {
		t.Errorf("after delete /8: %v", got)
	}
}

func TestParseProtocol(t *testing.T) {
	for s, want := range map[string]Protocol{"TCP": ProtoTCP, "UDP": ProtoUDP, "SCTP": ProtoSCTP} {
		if p, err := ParseProtocol(s); err != nil || p != want || p.String() != s {
			t.Errorf("%s: %v %v", s, p, err)
		}
	}
	for _, s := range []string{"tcp", "ICMP", ""} {
		if _, err := ParseProtocol(s); err == nil {
			t.Errorf("%q: want an error", s)
		}
	}
}

func TestReserve(t *testing.T) {
	a := NewAllocator()
	a.Reserve(10) // below FirstAllocated: no effect
	id, _ := a.Acquire(Labels{Kind: KindPod, Namespace: "a"})
	if id.ID != FirstAllocated {
		t.Fatalf("first id %d, want %d", id.ID, FirstAllocated)
	}
	a.Reserve(5000)
	id2, _ := a.Acquire(Labels{Kind: KindPod, Namespace: "b"})
	if id2.ID != 5000 {
		t.Fatalf("after Reserve(5000) got %d", id2.ID)
	}
	a.Reserve(100) // never goes back
	id3, _ := a.Acquire(Labels{Kind: KindPod, Namespace: "c"})
	if id3.ID != 5001 {
		t.Fatalf("got %d, want 5001", id3.ID)
	}
}

// TestAcquireHinted: a restarted agent's allocator keeps an adopted number
// for a new label set, once; hints outside the reserved range, taken, or
// already used once are ignored.
func TestAcquireHinted(t *testing.T) {
	a := NewAllocator()
	a.Reserve(1000) // the adopted maps used 256..999
	pod := func(ns string) Labels { return Labels{Kind: KindPod, Namespace: ns} }

	x, created := a.AcquireHinted(pod("a"), 300)
	if !created || x.ID != 300 {
		t.Fatalf("hinted 300: got %d (created %v)", x.ID, created)
	}
	if again, created := a.AcquireHinted(pod("a"), 400); created || again.ID != 300 {
		t.Errorf("the same label set again: %d (created %v), want 300, not created", again.ID, created)
	}
	for _, c := range []struct {
		name string
		hint ID
	}{
		{"a live number", 300},
		{"a reserved identity", Host},
		{"a fresh number (not adopted)", 1000},
		{"above next", 5000},
		{"no hint", 0},
	} {
		id, _ := a.AcquireHinted(pod(c.name), c.hint)
		if id.ID < 1000 {
			t.Errorf("%s (%d): got %d, want a fresh number", c.name, c.hint, id.ID)
		}
	}
	// Released, the number is never handed out again, hinted or not.
	a.Release(300)
	a.Release(300)
	if id, _ := a.AcquireHinted(pod("b"), 300); id.ID == 300 {
		t.Error("a released hinted number was given to another label set")
	}
	if id, _ := a.AcquireHinted(pod("c"), 301); id.ID != 301 {
		t.Errorf("another adopted number: got %d, want 301", id.ID)
	}
}

func TestIPCacheChangedSince(t *testing.T) {
	var c IPCache
	a, b := netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("10.1.0.0/16")
	c.Set(a, Entry{ID: 300})
	v := c.Version()
	c.Set(a, Entry{ID: 300}) // no change
	if got, ok := c.ChangedSince(v); !ok || len(got) != 0 {
		t.Fatalf("unchanged Set recorded: %v %v", got, ok)
	}
	c.Set(b, Entry{ID: 301})
	c.Set(a, Entry{ID: 302})
	c.Set(a, Entry{ID: 302, CIDR: 303}) // the prefix identity alone
	c.Delete(b)
	c.Delete(b) // already gone: no change
	got, ok := c.ChangedSince(v)
	if !ok || !slices.Equal(got, []netip.Prefix{b, a, a, b}) {
		t.Fatalf("ChangedSince = %v %v, want [%s %s %s %s]", got, ok, b, a, a, b)
	}
	if _, ok := c.ChangedSince(c.Version() + 1); ok {
		t.Fatal("a future version answered")
	}
	// The journal is bounded: old versions are forgotten, recent ones not.
	for i := range 5000 {
		c.Set(a, Entry{ID: ID(1000 + i)})
	}
	if _, ok := c.ChangedSince(v); ok {
		t.Fatal("5000 changes later, the first version is still answered")
	}
	w := c.Version()
	c.Set(b, Entry{ID: 7})
	if got, ok := c.ChangedSince(w); !ok || !slices.Equal(got, []netip.Prefix{b}) {
		t.Fatalf("after the trim: %v %v", got, ok)
	}
	if n := len(c.journal); n > 1024 {
		t.Fatalf("journal holds %d prefixes for %d entries", n, c.Len())
	}
}
