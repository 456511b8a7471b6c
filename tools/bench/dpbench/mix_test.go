package dpbench

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestMixTakesTurns: one client process measures every configuration,
// taking turns in slots, and each result is the namespace it names.
func TestMixTakesTurns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: network namespaces")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const dur, slot = 200 * time.Millisecond, 20 * time.Millisecond
	r := &runner{opts: Options{Duration: dur, Warmup: 20 * time.Millisecond, Slot: slot, ServerCPU: 1}, self: self, ctx: context.Background()}
	var all []*live
	for _, cfg := range []string{CfgNone, CfgZT, CfgNft} { // names only: nothing is installed
		all = append(all, &live{cfg: cfg, t: newTestTopo(t, r)})
	}
	for _, mode := range []string{"rr", "crr"} {
		for rep := range 2 { // rep 1 starts with the second configuration
			res, err := r.mix(mode, all, rep)
			if err != nil {
				t.Fatalf("%s rep %d: %v", mode, rep, err)
			}
			for i, l := range all {
				got := res[i]
				ino, err := inode(l.t.client.ns)
				if err != nil {
					t.Fatal(err)
				}
				if got.Netns != ino {
					t.Errorf("%s rep %d: result %d is namespace %d, want %s's %d", mode, rep, i, got.Netns, l.cfg, ino)
				}
				if got.Transactions == 0 || got.P50ns <= 0 {
					t.Errorf("%s rep %d %s: no transactions: %+v", mode, rep, l.cfg, got)
				}
				// Turns, not one run: about dur/slot of them.
				if got.Slots < 3 || got.Slots > int(dur/slot)+2 { // the last turns may be a transaction each
					t.Errorf("%s rep %d %s: %d turns, want about %d", mode, rep, l.cfg, got.Slots, dur/slot)
				}
				if s := time.Duration(got.Seconds * float64(time.Second)); s < dur || s > dur+slot+time.Second {
					t.Errorf("%s rep %d %s: measured for %s, want %s", mode, rep, l.cfg, s, dur)
				}
			}
		}
	}
}

// TestNftComparisonPaired: zt is compared with nftables repetition by
// repetition, so drift that moves both ratios of a repetition together
// is no noise.
func TestNftComparisonPaired(t *testing.T) {
	metric := func(ratios ...float64) Metric {
		m := Metric{Ratios: ratios}
		m.finish()
		return m
	}
	for _, c := range []struct {
		name    string
		zt, nft []float64
		verdict string
		wantGot string
	}{
		{"a point behind, drifting together", []float64{0.90, 1.00, 1.10}, []float64{0.91, 1.01, 1.11}, "yes", "-1.0 points (-1.0 to -1.0; worst, at N=10)"},
		{"three points behind, drifting together", []float64{0.90, 1.00, 1.10}, []float64{0.93, 1.03, 1.13}, "no", "-3.0 points (-3.0 to -3.0; worst, at N=10)"},
		{"noisy pairs", []float64{0.90, 1.00, 1.10}, []float64{0.85, 1.01, 1.13}, "yes, within noise", "-1.0 points (-3.0 to +5.0; worst, at N=10)"},
	} {
		res := &Result{Points: []Point{
			{N: 10, Config: CfgNone, RR: metric(1, 1, 1), CRR: metric(1, 1, 1)},
			{N: 10, Config: CfgZT, RR: metric(c.zt...), CRR: metric(c.zt...)},
			{N: 10, Config: CfgNft, RR: metric(c.nft...), CRR: metric(c.nft...)},
		}}
		found := 0
		for _, tg := range res.Targets() {
			if tg.Name != "zt TCP_RR vs nftables, every N" && tg.Name != "zt TCP_CRR vs nftables, every N" {
				continue
			}
			found++
			if tg.Verdict() != c.verdict || tg.Got != c.wantGot {
				t.Errorf("%s: %s: %q, %q; want %q, %q", c.name, tg.Name, tg.Got, tg.Verdict(), c.wantGot, c.verdict)
			}
		}
		if found != 2 {
			t.Fatalf("%s: %d nftables targets, want 2", c.name, found)
		}
	}
}

// TestRunMakesOneAtLeast: a turn whose end has passed when it starts
// still makes a transaction and takes time, so runMix's turns end.
func TestRunMakesOneAtLeast(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	for _, mode := range []string{"rr", "crr"} {
		c := newRRClient(mode, netip.MustParseAddrPort(l.Addr().String()))
		lat, took, err := c.run(time.Now().Add(-time.Second), nil)
		c.close()
		if err != nil {
			t.Fatal(err)
		}
		if len(lat) != 1 || took <= 0 {
			t.Errorf("%s: a turn already over made %d transactions in %s, want 1 in some time", mode, len(lat), took)
		}
	}
}
