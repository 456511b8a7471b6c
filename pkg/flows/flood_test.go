package flows

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ztnet/zt/pkg/datapath"
)

func rawEvent(tb testing.TB, ev datapath.FlowEvent) []byte {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, &ev); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestFlood feeds 1,000,000 drop events from 100,010 sources (ten loud
// ones and a spray of 100,000 single-shot ones) through decode, enrich,
// limit and store with a journal. The heap stays within a fixed bound
// that does not depend on the number of events, and every event is
// either stored or counted in a summary.
func TestFlood(t *testing.T) {
	const (
		n        = 1_000_000
		ringSize = 16384
		sources  = 4096
	)
	res := newFakeResolver()
	e := must[*Enricher](t)(NewEnricher("n1", res))
	dir := t.TempDir()

	base := heapInuse()
	st := must[*Store](t)(OpenStore(StoreOptions{RingSize: ringSize, Dir: dir, MaxBytes: 8 << 20, FileBytes: 1 << 20}))
	p := NewPipeline(e, st, PipelineOptions{Limiter: LimiterOptions{Rate: 100, Burst: 200, MaxSources: sources}})

	ev := evSpec{dst: ipDB, dport: 5432, dir: datapath.DirIngress, verdict: datapath.VerdictDrop,
		reason: datapath.ReasonPolicyDenied, ifindex: ifDB, peer: datapath.IdentityWorld, flags: 0x02}.event()
	raw := rawEvent(t, ev)
	t0 := monoNow(t)
	var mid uint64
	for i := range n {
		// 1 µs apart: the run covers one second of kernel time.
		binary.NativeEndian.PutUint64(raw[0:], t0+uint64(i)*1000)
		var src netip.Addr
		if i%10 != 0 {
			src = netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 10)})
		} else {
			k := i / 10 // 100,000 distinct sources, each seen once
			src = netip.AddrFrom4([4]byte{100, 64 + byte(k>>16), byte(k >> 8), byte(k)})
		}
		a := src.As4()
		copy(raw[36:40], a[:])
		binary.BigEndian.PutUint16(raw[32:], uint16(i))
		if err := p.HandleRaw(raw); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			mid = heapInuse()
		}
	}
	if err := p.Flush(time.Now()); err != nil {
		t.Fatal(err)
	}
	end := heapInuse()

	s := p.Stats()
	t.Logf("received %d stored %d suppressed %d summaries %d (reported %d); limiter sources %d; journal %d bytes",
		s.Received, s.Stored, s.Suppressed, s.Summaries, s.Reported, p.limiter.Sources(), st.JournalBytes())
	if s.Received != n || s.Stored+s.Suppressed != n || s.DecodeErrors != 0 {
		t.Errorf("received %d = stored %d + suppressed %d? want %d", s.Received, s.Stored, s.Suppressed, n)
	}
	if s.Reported != s.Suppressed {
		t.Errorf("summaries report %d suppressed events, the limiter suppressed %d", s.Reported, s.Suppressed)
	}
	if s.Suppressed < n/2 {
		t.Errorf("only %d of %d suppressed: limiter ineffective", s.Suppressed, n)
	}
	if p.limiter.Sources() > sources {
		t.Errorf("%d limiter buckets, bound %d", p.limiter.Sources(), sources)
	}
	if st.JournalBytes() > 8<<20 {
		t.Errorf("journal %d bytes", st.JournalBytes())
	}

	// The bound: the ring's records, plus per-record strings and labels of
	// the stored records (≤ 512 B each), plus the limiter's buckets
	// (≤ 512 B each), plus 4 MiB for the journal's buffers and the runtime.
	recSize := uint64(unsafe.Sizeof(Record{}))
	bound := ringSize*(recSize+512) + sources*512 + 4<<20
	grew := int64(end) - int64(base)
	t.Logf("heap in use: base %.1f MiB, after 500k events %.1f MiB, after 1M %.1f MiB; grew %.1f MiB, bound %.1f MiB (Record %d B)",
		mib(base), mib(mid), mib(end), float64(grew)/(1<<20), mib(bound), recSize)
	if grew > int64(bound) {
		t.Errorf("heap grew %d bytes, bound %d", grew, bound)
	}
	// Not growing with the number of events: once the ring is full, 500k
	// more events cost at most a couple of MiB.
	if d := int64(end) - int64(mid); d > 2<<20 {
		t.Errorf("heap grew %.1f MiB between 500k and 1M events", float64(d)/(1<<20))
	}
	runtime.KeepAlive(p)
	runtime.KeepAlive(st)
}

func mib(v uint64) float64 { return float64(v) / (1 << 20) }

// TestLimiterExact checks the per-source and global buckets and the
// accounting of evicted sources.
func TestLimiterExact(t *testing.T) {
	l := NewLimiter(LimiterOptions{Rate: 1, Burst: 2, MaxSources: 2, GlobalRate: 1000, GlobalBurst: 1000})
	now := time.Unix(100, 0)
	a, b, c := Record{Src: Peer{IP: ipWeb}, Verdict: "drop"}, Record{Src: Peer{IP: ipDB, Namespace: "data", Pod: "db"}, Verdict: "drop"}, Record{Src: Peer{IP: ipWorld, Reserved: "world"}, Verdict: "drop"}
	allowed := 0
	for range 5 {
		if l.Allow(&a, now) {
			allowed++
		}
	}
	if allowed != 2 {
		t.Errorf("burst 2: %d allowed", allowed)
	}
	if !l.Allow(&a, now.Add(time.Second)) {
		t.Error("no refill after 1s at 1/s")
	}
	l.Allow(&b, now)
	l.Allow(&b, now)
	l.Allow(&b, now) // b: 1 suppressed
	// c evicts a (least recently used): its 3 suppressed are aggregated.
	for range 4 {
		l.Allow(&c, now) // c: 2 suppressed
	}
	sums := l.Flush(now)
	var got []string
	for _, s := range sums {
		got = append(got, fmt.Sprintf("%d:%s", s.Suppressed, s.Summary))
	}
	want := []string{
		"2:suppressed 2 drop events from world(203.0.113.7)",
		"1:suppressed 1 drop events from data/db",
		"3:suppressed 3 drop events from 1 other sources (too many to track one by one)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("summaries\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if sums := l.Flush(now); len(sums) != 0 {
		t.Errorf("second flush %+v", sums)
	}
	// Global budget: many sources, each with tokens, share it.
	g := NewLimiter(LimiterOptions{Rate: 100, Burst: 100, MaxSources: 100, GlobalRate: 1, GlobalBurst: 5})
	allowed = 0
	for i := range 50 {
		r := Record{Src: Peer{IP: netip.AddrFrom4([4]byte{1, 1, 1, byte(i)})}, Verdict: "drop"}
		if g.Allow(&r, now) {
			allowed++
		}
	}
	if allowed != 5 {
		t.Errorf("global burst 5: %d allowed", allowed)
	}
}
