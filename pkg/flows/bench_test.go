package flows

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
)

// BenchmarkPipeline: events decoded, enriched and stored (ring and
// journal, none suppressed) per second on one core; Flood: the same with
// the limiter suppressing nearly all of them (the cost of a flood). The
// baseline, measured first in the same run, only decodes the ringbuf
// record; "x-decode" is each case's cost per event over it.
func BenchmarkPipeline(b *testing.B) {
	raw := rawEvent(b, evSpec{src: ipWeb, dst: ipDB, sport: 1, dport: 5432, dir: datapath.DirIngress,
		verdict: datapath.VerdictDrop, reason: datapath.ReasonPolicyDenied, ifindex: ifDB, peer: 300, flags: 2}.event())
	var decodeNs float64
	b.Run("decode-baseline", func(b *testing.B) {
		prev := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(prev)
		n := 0
		for b.Loop() {
			if _, err := datapath.DecodeEvent(raw); err != nil {
				b.Fatal(err)
			}
			n++
		}
		decodeNs = float64(b.Elapsed().Nanoseconds()) / float64(n)
		b.ReportMetric(1e9/decodeNs, "events/s")
	})
	for _, bc := range []struct {
		name  string
		limit LimiterOptions
	}{
		{"stored", LimiterOptions{Rate: 1e12, Burst: 1e12, GlobalRate: 1e12, GlobalBurst: 1e12}},
		{"flood", LimiterOptions{Rate: 1, Burst: 1, GlobalRate: 1, GlobalBurst: 1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			prev := runtime.GOMAXPROCS(1)
			defer runtime.GOMAXPROCS(prev)
			e := must[*Enricher](b)(NewEnricher("n1", newFakeResolver()))
			st := must[*Store](b)(OpenStore(StoreOptions{Dir: b.TempDir(), MaxBytes: 64 << 20}))
			defer st.Close()
			p := NewPipeline(e, st, PipelineOptions{Limiter: bc.limit})
			raw := append([]byte(nil), raw...)
			t0 := monoNow(b)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; b.Loop(); i++ {
				binary.NativeEndian.PutUint64(raw[0:], t0+uint64(i))
				if err := p.HandleRaw(raw); err != nil {
					b.Fatal(err)
				}
			}
			_ = st.Flush()
			elapsed := time.Since(start)
			b.ReportMetric(float64(p.Stats().Received)/elapsed.Seconds(), "events/s")
			if decodeNs > 0 {
				perEvent := float64(elapsed.Nanoseconds()) / float64(p.Stats().Received)
				b.ReportMetric(perEvent/decodeNs, "x-decode")
			}
		})
	}
}
