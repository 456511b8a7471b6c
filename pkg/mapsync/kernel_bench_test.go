package mapsync

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ztnet/zt/pkg/datapath"
)

// openDatapath opens a real datapath pinned under a unique root, sized for
// n entries, removed at cleanup.
func openDatapath(t testing.TB, n int) *datapath.Datapath {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	root := filepath.Join("/sys/fs/bpf", "zt-mapsync-"+hex.EncodeToString(b[:]))
	size := uint32(max(65536, n+64))
	d, err := datapath.Open(datapath.Options{BPFFSRoot: root, MapSizes: datapath.MapSizes{IPCache: size, Policy: size}})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		_ = os.RemoveAll(root)
	})
	return d
}

// benchState is the state tools/bench/dpbench installs: n peers, each its
// own identity with one /32 ipcache entry and one policy entry allowing it
// into an isolated server endpoint, plus two more endpoints.
func benchState(t testing.TB, n int) State {
	t.Helper()
	s := newState()
	const server = 10
	allow := datapath.PolicyVal{RuleId: 1, Action: datapath.ActionAllow}
	id := datapath.IdentityUserMin
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)})
		s.IPCache[netip.PrefixFrom(a, 32)] = datapath.IPCacheVal{Identity: id}
		keys, err := datapath.PolicyKeys(datapath.PortRule{EndpointID: server, Dir: datapath.DirIngress, Peer: id, Proto: 6, Port: 7000, EndPort: 7001})
		if err != nil || len(keys) != 1 {
			t.Fatalf("policy keys: %v %d", err, len(keys))
		}
		s.Policy[keys[0]] = allow
		id++
	}
	s.IPCache[netip.MustParsePrefix("10.127.255.254/32")] = datapath.IPCacheVal{Identity: id}
	for i, flags := range []datapath.EndpointFlags{datapath.EndpointIngressIsolated, 0, 0} {
		ifindex := uint32(server + i)
		ep, err := datapath.NewEndpoint(ifindex, flags|datapath.EndpointAllowHost, netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + i)}))
		if err != nil {
			t.Fatal(err)
		}
		s.Endpoints[ifindex] = ep
	}
	return s
}

// oneByOne hides BatchMaps: the Syncer writes one entry per syscall.
type oneByOne struct{ Maps }

// processCPU is the CPU time (user and system) of the process: a load
// writes two maps from two threads.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fullLoad reconciles want into fresh maps and returns how long the
// Reconcile took, in wall and in CPU time of the process (the machine may
// be busy with other work).
func fullLoad(b *testing.B, want State, batch bool) (wall, cpu time.Duration) {
	b.Helper()
	d := openDatapath(b, len(want.Policy))
	var m Maps = d
	if !batch {
		m = oneByOne{d}
	}
	s := New(m)
	start, cpu0 := time.Now(), processCPU()
	st, err := s.Reconcile(want)
	wall, cpu = time.Since(start), processCPU()-cpu0
	if err != nil {
		b.Fatal(err)
	}
	if n := len(want.IPCache) + len(want.Policy) + len(want.Endpoints); st.Writes() != n {
		b.Fatalf("wrote %d entries, want %d", st.Writes(), n)
	}
	got, err := New(d).dump()
	if err != nil {
		b.Fatal(err)
	}
	if !equalState(got, want) {
		b.Fatal("maps differ from the desired state after the load")
	}
	return wall, cpu
}

// BenchmarkKernelFullLoad: the first Reconcile of tools/bench/dpbench's
// state (N peers: N ipcache and N policy entries) into empty kernel maps,
// batched, against one entry per syscall in the same run.
func BenchmarkKernelFullLoad(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			want := benchState(b, n)
			var single, batch, singleCPU, batchCPU time.Duration
			for b.Loop() {
				w, c := fullLoad(b, want, false)
				single, singleCPU = single+w, singleCPU+c
				w, c = fullLoad(b, want, true)
				batch, batchCPU = batch+w, batchCPU+c
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(0, "ns/op") // opening maps dominates it: see the metrics
			b.ReportMetric(ms(single), "one-by-one-ms/op")
			b.ReportMetric(ms(batch), "batched-ms/op")
			b.ReportMetric(ms(singleCPU), "one-by-one-cpu-ms/op")
			b.ReportMetric(ms(batchCPU), "batched-cpu-ms/op")
			b.ReportMetric(float64(single)/float64(batch), "speedup")
		})
	}
}

// BenchmarkKernelApplyOneChange: Apply of one rule change (add or remove
// one peer's allow, as dpbench does) on N peers, against the bare map
// write of the same change in the same run.
func BenchmarkKernelApplyOneChange(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			want := benchState(b, n)
			d := openDatapath(b, n)
			s := New(d)
			if _, err := s.Reconcile(want); err != nil {
				b.Fatal(err)
			}
			extra := want.IPCache[netip.MustParsePrefix("10.127.255.254/32")].Identity
			keys, err := datapath.PolicyKeys(datapath.PortRule{EndpointID: 10, Dir: datapath.DirIngress, Peer: extra, Proto: 6, Port: 7000, EndPort: 7001})
			if err != nil {
				b.Fatal(err)
			}
			k, v := keys[0], datapath.PolicyVal{RuleId: 2, Action: datapath.ActionAllow}
			var raw time.Duration
			i := 0
			for b.Loop() {
				if i%2 == 0 {
					want.Policy[k] = v
				} else {
					delete(want.Policy, k)
				}
				st, err := s.Apply(want)
				if err != nil {
					b.Fatal(err)
				}
				if st.Writes() != 1 {
					b.Fatalf("one change took %d writes", st.Writes())
				}
				b.StopTimer()
				start := time.Now()
				if i%2 == 0 {
					err = d.PolicyDelete(k)
				} else {
					err = d.PolicyPut(k, v)
				}
				if err == nil && i%2 == 0 {
					err = d.PolicyPut(k, v) // the map as Apply left it
				} else if err == nil {
					err = d.PolicyDelete(k)
				}
				raw += time.Since(start) / 2
				if err != nil {
					b.Fatal(err)
				}
				i++
				b.StartTimer()
			}
			b.ReportMetric(float64(raw.Nanoseconds())/1000/float64(b.N), "raw-write-µs/op")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1000/float64(b.N), "apply-µs/op")
		})
	}
}
