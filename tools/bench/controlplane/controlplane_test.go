package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestTiny runs a tiny configuration end to end (root, the pinned
// Kubernetes binaries and the Go toolchain; it never skips). With
// ZT_BENCH_CONTROLPLANE=quick or =full it runs that mode instead, with
// =cluster the full mode without the compile children, and prints the
// Markdown and JSON.
func TestTiny(t *testing.T) {
	p := plan{
		mode:     "tiny",
		propPods: []int{20, 60}, flips: 2,
		compile: []compileCase{{1000, 100, "node"}}, updates: 5,
	}
	cfg := Config{Log: testLog{t}}
	timeout := 3 * time.Minute
	switch mode := os.Getenv("ZT_BENCH_CONTROLPLANE"); mode {
	case "":
	case "quick", "full":
		cfg.Quick = mode == "quick"
		p = planFor(cfg.Quick)
		timeout = 30 * time.Minute
	case "cluster":
		// The full mode's lab half only: propagation and memory up to
		// 100,000 pods, no compile children.
		p = planFor(false)
		p.mode, p.compile = "cluster", nil
		timeout = 30 * time.Minute
	default:
		t.Fatalf("ZT_BENCH_CONTROLPLANE=%q: want quick, full or cluster", mode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	r, err := run(ctx, cfg, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))

	if len(r.Propagation) != len(p.propPods) {
		t.Fatalf("%d propagation rows, want %d", len(r.Propagation), len(p.propPods))
	}
	for _, row := range r.Propagation {
		// Every flip was observed in both directions by a real probe.
		if len(row.Apply) != p.flips || len(row.Delete) != p.flips || len(row.ClientCreate) != p.flips ||
			len(row.ClientDelete) != p.flips || len(row.Node) != 4*p.flips {
			t.Errorf("%d pods: %d apply, %d delete, %d create, %d client delete, %d node samples, want %d each and %d node",
				row.Pods, len(row.Apply), len(row.Delete), len(row.ClientCreate), len(row.ClientDelete), len(row.Node), p.flips, 4*p.flips)
		}
		for name, s := range map[string]Stats{"apply": row.ApplyStats, "delete": row.DeleteStats,
			"client create": row.ClientCreateStats, "client delete": row.ClientDeleteStats, "node": row.NodeStats} {
			if s.P50 <= 0 || s.P99 < s.P50 || s.Max < s.P99 {
				t.Errorf("%d pods %s: implausible %+v", row.Pods, name, s)
			}
		}
		// Through the API server and a watch, no change is enforced in
		// under a millisecond: such a sample means the previous change
		// was never really seen enforced.
		for _, ss := range [][]float64{row.Apply, row.Delete, row.ClientCreate, row.ClientDelete} {
			for _, v := range ss {
				if v < 1 {
					t.Errorf("%d pods: a change enforced %.3f ms after it was made", row.Pods, v)
				}
			}
		}
		// The node-side part cannot exceed what the probe saw.
		if row.NodeStats.P50 > max(row.ApplyStats.Max, row.DeleteStats.Max, row.ClientCreateStats.Max, row.ClientDeleteStats.Max) {
			t.Errorf("%d pods: node p50 %.1f ms above every end-to-end sample", row.Pods, row.NodeStats.P50)
		}
	}
	if r.HoleProbes == 0 || r.Holes != 0 {
		t.Errorf("%d hole probes, %d passed: want some, none passing", r.HoleProbes, r.Holes)
	}
	if len(r.Memory) != len(p.propPods)+len(p.memPods) {
		t.Errorf("%d memory rows", len(r.Memory))
	}
	for _, m := range r.Memory {
		if m.RSSKiB <= 0 || m.HWMKiB < m.RSSKiB {
			t.Errorf("memory row %+v", m)
		}
	}
	if len(r.Compile) != len(p.compile) {
		t.Fatalf("%d compile rows, want %d", len(r.Compile), len(p.compile))
	}
	for _, c := range r.Compile {
		if c.TimedOut && p.mode != "tiny" {
			t.Logf("compile %d pods %d policies %s view timed out", c.Pods, c.Policies, c.View)
			continue
		}
		if c.FullMs <= 0 || c.MaxRSSKiB <= 0 || c.Endpoints == 0 || c.Identities == 0 || c.Problems != 0 ||
			c.Relabel.N != p.updates || c.Policy.N != p.updates || c.Reference.N != p.updates ||
			c.Relabel.P99 < c.Relabel.P50 || c.Reference.P99 < c.Reference.P50 {
			t.Errorf("compile row %+v", c)
		}
	}
	if len(r.Targets) != 5 {
		t.Errorf("%d targets, want 5", len(r.Targets))
	}
	var md bytes.Buffer
	if err := r.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(md.String(), "## Control plane\n") || strings.Count(md.String(), "\n| ") < 8 {
		t.Errorf("markdown:\n%s", md.String())
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil || len(back.Propagation) != len(r.Propagation) {
		t.Errorf("report does not round-trip through JSON: %v", err)
	}
	t.Logf("\n%s", md.String())
	if os.Getenv("ZT_BENCH_CONTROLPLANE") != "" {
		t.Logf("\n%s", js)
	}
}

func TestSummarize(t *testing.T) {
	var s []float64
	for i := 100; i >= 1; i-- {
		s = append(s, float64(i))
	}
	got := summarize(s)
	if got != (Stats{N: 100, P50: 50, P99: 99, Max: 100}) {
		t.Errorf("summarize 1..100 = %+v", got)
	}
	if got := summarize([]float64{3}); got != (Stats{N: 1, P50: 3, P99: 3, Max: 3}) {
		t.Errorf("summarize [3] = %+v", got)
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The memory growth per pod is taken between sizes with the same policies.
func TestMarginal(t *testing.T) {
	r := &Report{Memory: []MemoryRow{
		{Pods: 100, Policies: 1, RSSKiB: 50000},
		{Pods: 1000, Policies: 1, RSSKiB: 51000},
		{Pods: 10000, Policies: 1000, RSSKiB: 300000},
		{Pods: 100000, Policies: 1000, RSSKiB: 300000 + 90000*3},
	}}
	marginal(r)
	if r.MarginalFrom != 10000 || r.MarginalTo != 100000 || r.MarginalBytesPerPod != 3*1024 {
		t.Errorf("got %.0f bytes/pod from %d to %d pods, want 3072 from 10000 to 100000", r.MarginalBytesPerPod, r.MarginalFrom, r.MarginalTo)
	}
	r = &Report{Memory: []MemoryRow{{Pods: 100, Policies: 1, RSSKiB: 50000}, {Pods: 1000, Policies: 1, RSSKiB: 50900}}}
	marginal(r)
	if r.MarginalFrom != 100 || r.MarginalTo != 1000 || r.MarginalBytesPerPod != 1024 {
		t.Errorf("got %+v", r)
	}
}
