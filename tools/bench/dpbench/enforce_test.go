package dpbench

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	MaybeChild()
	os.Exit(m.Run())
}

// TestEveryConfigurationEnforces runs the harness at N=10 with tiny
// durations: every configuration must let the probing client through and
// block a client outside the allowed set (none must let it through), and
// each must produce figures.
func TestEveryConfigurationEnforces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: network namespaces, netfilter and BPF")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := Run(ctx, Options{
		Ns: []int{10}, Reps: 1, Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond,
		Iperf: time.Second, Changes: 4, ClientCPU: 0, ServerCPU: 1, Log: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Points) != len(Configs) {
		t.Fatalf("%d points, want %d", len(res.Points), len(Configs))
	}
	for _, p := range res.Points {
		if !p.Enforces {
			t.Errorf("%s: not checked", p.Config)
		}
		if p.RR.Median <= 0 || p.CRR.Median <= 0 || p.Bulk.Median <= 0 {
			t.Errorf("%s: no figures: rr %v crr %v bulk %v", p.Config, p.RR.Median, p.CRR.Median, p.Bulk.Median)
		}
		if p.Config == CfgZT {
			if p.ProgNsPerRun <= 0 || p.PolicyEntries != 10 || p.PolicyBytesPerEnt <= 0 || p.RawChangeP99us <= 0 {
				t.Errorf("zt: missing figures: %+v", p)
			}
		}
		if p.Config != CfgNone && p.ChangeP50us <= 0 {
			t.Errorf("%s: rule change not timed", p.Config)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}
