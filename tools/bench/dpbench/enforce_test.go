package dpbench

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
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
		Iperf: time.Second, Changes: 4, RawWrites: 20, ClientCPU: 0, ServerCPU: min(1, runtime.NumCPU()-1), RTPrio: 10, Log: testWriter{t},
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
			if p.ProgNsPerRun <= 0 || p.ProgNsPerCRR <= 0 || p.ProgRunsPerCRR < 8 || p.PolicyEntries != 10 || p.PolicyBytesPerEnt <= 0 || p.RawChangeP99us <= 0 {
				t.Errorf("zt: missing figures: %+v", p)
			}
			// none ran too: the floor of the program cost is measured.
			if p.EmptyProgNsPerRun <= 0 {
				t.Errorf("zt: no empty-program figure: %+v", p)
			}
		}
		if enforcing(p.Config) && p.ChangeP50us <= 0 {
			t.Errorf("%s: rule change not timed", p.Config)
		}
	}
}

// newTestTopo builds a topology whose servers run and are reachable from
// both client pods, removed when the test ends.
func newTestTopo(t *testing.T, r *runner) *topo {
	t.Helper()
	tp, err := newTopo()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tp.close(); err != nil {
			t.Error(err)
		}
	})
	if err := tp.startServers(min(1, runtime.NumCPU()-1), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.waitConnected(tp); err != nil {
		t.Fatal(err)
	}
	return tp
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// TestCheckCatchesNoEnforcement: the check must fail a configuration that
// installed nothing, and one that blocks the probing client.
func TestCheckCatchesNoEnforcement(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: network namespaces and netfilter")
	}
	r := &runner{opts: Options{ServerCPU: 1}, ctx: context.Background()}
	tp := newTestTopo(t, r)
	if err := r.checkEnforced(&live{cfg: CfgNone, t: tp}); err != nil {
		t.Fatalf("none: %v", err)
	}
	if err := r.checkEnforced(&live{cfg: CfgNft, t: tp}); err == nil {
		t.Fatal("nothing installed, yet the check passed")
	}
	// Rules that allow nobody: the probing client is blocked.
	if _, err := (&nftEnforcer{}).install(context.Background(), tp, []netip.Addr{extraPeer}); err != nil {
		t.Fatal(err)
	}
	if err := r.checkEnforced(&live{cfg: CfgNft, t: tp}); err == nil {
		t.Fatal("the probing client is blocked, yet the check passed")
	}
}

// TestEmptyRunsOnTheHooks: tc-empty's program runs on the host veths
// for the client's packets both ways, and blocks nothing.
func TestEmptyRunsOnTheHooks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: network namespaces and BPF")
	}
	r := &runner{opts: Options{ServerCPU: 1}, ctx: context.Background()}
	tp := newTestTopo(t, r)
	e := &emptyEnforcer{}
	if _, err := e.install(context.Background(), tp, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.close(); err != nil {
			t.Error(err)
		}
	})
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	s0, err := e.prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.checkEnforced(&live{cfg: CfgEmpty, t: tp}); err != nil {
		t.Fatal(err)
	}
	s1, err := e.prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Two handshakes (the client's, the denied pod's), each packet
	// crossing two host veths.
	if runs := s1.RunCount - s0.RunCount; runs < 8 {
		t.Fatalf("the empty program ran %d times for two connections, want at least 8", runs)
	}
}
