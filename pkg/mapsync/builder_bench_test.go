package mapsync

import (
	"fmt"
	"testing"
	"time"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/pkg/policy"
)

// BenchmarkNodeSync: what the agent does after the compiler's Sync when a
// local pod is relabeled (its identity, its policies and every rule
// naming it change), on one node of a generated cluster: Builder.Update
// and Syncer.ApplyDelta, against Desired and Apply of the same change in
// the same run (into in-memory maps, so the kernel's writes are not in
// it). ratio = whole / delta.
func BenchmarkNodeSync(b *testing.B) {
	for _, sz := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 1_000}, {10_000, 10_000}} {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", sz.pods, sz.policies), func(b *testing.B) {
			w := benchworld.Generate(sz.pods, sz.policies)
			c := policy.Build(w, policy.Options{NodeName: w.Pods[0].NodeName})
			var binds []Binding
			for i, ep := range c.Endpoints() {
				binds = append(binds, Binding{Pod: ep.Pod, Ifindex: uint32(100 + i)})
			}
			bl := NewBuilder()
			whole, delta := New(newFake().maps()), New(newFake().maps())
			st, _, err := bl.Update(c, binds, Options{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := whole.Reconcile(st); err != nil {
				b.Fatal(err)
			}
			if _, err := delta.Reconcile(st); err != nil {
				b.Fatal(err)
			}
			var tWhole, tDelta time.Duration
			writes, i := 0, 0
			for b.Loop() {
				c.SetPod(benchworld.Relabel(w.Pods[0], i))
				c.Sync()
				i++
				t0 := time.Now()
				st, d, err := bl.Update(c, binds, Options{})
				if err == nil {
					var s Stats
					s, err = delta.ApplyDelta(st, d)
					writes += s.Writes()
				}
				t1 := time.Now()
				if err == nil {
					var want State
					if want, err = Desired(c, binds, Options{}); err == nil {
						_, err = whole.Apply(want)
					}
				}
				tDelta, tWhole = tDelta+t1.Sub(t0), tWhole+time.Since(t1)
				if err != nil {
					b.Fatal(err)
				}
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(tDelta), "delta-ms/op")
			b.ReportMetric(ms(tWhole), "whole-ms/op")
			b.ReportMetric(float64(tWhole)/float64(tDelta), "ratio")
			b.ReportMetric(float64(writes)/float64(b.N), "writes/op")
		})
	}
}
