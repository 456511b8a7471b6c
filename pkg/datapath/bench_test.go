package datapath

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/ztnet/zt/internal/stats"
)

// benchAddr returns the i-th address of 10.0.0.0/8 (i < 1<<24).
func benchAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// fillLookupMaps writes nPol policy entries and nIP ipcache entries, and
// returns a frame that is allowed by the last entry of each.
func fillLookupMaps(b *testing.B, d *Datapath, nPol, nIP int) []byte {
	b.Helper()
	ips := make(map[netip.Prefix]IPCacheVal, nIP)
	for i := range nIP {
		ips[netip.PrefixFrom(benchAddr(i+1), 32)] = IPCacheVal{Identity: Identity(1000 + i)}
	}
	if err := d.IPCachePutBatch(ips); err != nil {
		b.Fatal(err)
	}
	pol := make(map[PolicyKey]PolicyVal, nPol)
	for i := range nPol {
		// Spread over endpoints, peers and ports, as a node's maps are.
		k := must[[]PolicyKey](b)(PolicyKeys(PortRule{EndpointID: uint32(i % 1000), Dir: DirIngress,
			Peer: Identity(1000 + i%nIP), Proto: protoTCP, Port: uint16(1 + i/1000)}))[0]
		pol[k] = PolicyVal{RuleId: uint32(i), Action: ActionAllow}
	}
	last := nIP - 1
	k := must[[]PolicyKey](b)(PolicyKeys(PortRule{EndpointID: testEpID, Dir: DirIngress,
		Peer: Identity(1000 + last), Proto: protoTCP, Port: 443}))[0]
	pol[k] = PolicyVal{RuleId: 1, Action: ActionAllow}
	if err := d.PolicyPutBatch(pol); err != nil {
		b.Fatal(err)
	}
	ep := must[Endpoint](b)(NewEndpoint(testEpID, EndpointIngressIsolated, netip.MustParseAddr("192.168.0.1")))
	if err := d.EndpointPut(testIfindex, ep); err != nil {
		b.Fatal(err)
	}
	return pkt{src: benchAddr(last + 1), dst: netip.MustParseAddr("192.168.0.1"), proto: protoTCP,
		sport: 40000, dport: 443, tcpFlags: tcpACK}.bytes()
}

// perPacket returns the kernel-measured cost of one zt_to_pod run.
func perPacket(b *testing.B, d *Datapath, frame []byte, repeat int) time.Duration {
	b.Helper()
	ret, dur, err := d.tc.ZtToPod.Benchmark(frame, repeat, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != retPass {
		b.Fatalf("benchmark packet not allowed: %#x", ret)
	}
	if c := must[Counter](b)(d.Counter(DirIngress, VerdictAllow, ReasonAllowed)); c.Packets == 0 {
		b.Fatal("benchmark packet not allowed by a rule")
	}
	return dur
}

// BenchmarkPolicyLookup: per-packet cost of the forward path (ipcache,
// policy, conntrack refresh) with small and large maps. The reported
// ns/pkt is measured by the kernel (BPF_PROG_RUN repeat); ratio-* compare
// each size with the 10/10 baseline measured in the same run.
func BenchmarkPolicyLookup(b *testing.B) {
	sizes := [][2]int{{10, 10}, {100_000, 10}, {10, 100_000}, {100_000, 100_000}}
	var base time.Duration
	for _, s := range sizes {
		b.Run(fmt.Sprintf("policy=%d/ipcache=%d", s[0], s[1]), func(b *testing.B) {
			d := newTestDatapath(b, Options{MapSizes: MapSizes{Policy: 200_000, IPCache: 200_000}})
			frame := fillLookupMaps(b, d, s[0], s[1])
			b.ResetTimer()
			dur := perPacket(b, d, frame, b.N)
			b.ReportMetric(float64(dur.Nanoseconds()), "ns/pkt")
			// The baseline for the ratio, re-measured with a fixed repeat.
			ref := perPacket(b, d, frame, 200_000)
			if s == sizes[0] {
				base = ref
			}
			if base > 0 {
				b.ReportMetric(float64(ref)/float64(base), "x-baseline")
			}
		})
	}
}

// BenchmarkApply100k: time to write 100,000 policy entries and 100,000
// ipcache entries into empty maps.
func BenchmarkApply100k(b *testing.B) {
	const n = 100_000
	ips := make(map[netip.Prefix]IPCacheVal, n)
	pol := make(map[PolicyKey]PolicyVal, n)
	for i := range n {
		ips[netip.PrefixFrom(benchAddr(i+1), 32)] = IPCacheVal{Identity: Identity(1000 + i)}
		k := must[[]PolicyKey](b)(PolicyKeys(PortRule{EndpointID: uint32(i % 1000), Dir: DirIngress,
			Peer: Identity(1000 + i), Proto: protoTCP, Port: 80}))[0]
		pol[k] = PolicyVal{RuleId: uint32(i), Action: ActionAllow}
	}
	for _, kind := range []string{"policy", "ipcache"} {
		b.Run(kind, func(b *testing.B) {
			d := newTestDatapath(b, Options{MapSizes: MapSizes{Policy: 200_000, IPCache: 200_000}})
			var total time.Duration
			for range b.N {
				start := time.Now()
				var err error
				if kind == "policy" {
					err = d.PolicyPutBatch(pol)
				} else {
					err = d.IPCachePutBatch(ips)
				}
				if err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/100k")
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/n, "ns/entry")
		})
	}
}

// BenchmarkNewConnection: the kernel cost, at the server's endpoint, of
// every packet of one short TCP connection (what TCP_CRR opens per
// transaction): a SYN the policy allows, the SYN-ACK, the handshake's ACK,
// a byte each way, and the close, through zt_to_pod and zt_from_pod,
// each packet one BPF_PROG_RUN (repeat 1) timed by the kernel, summed
// per connection. Each connection has its own port. "cold" evicts the
// CPU's caches (writes 8 MiB) before each packet, as the rest of the
// stack does between a live flow's packets; "warm" does not.
// x-empty: against an empty program run the same way in the same
// benchmark (the floor: what any program costs here).
func BenchmarkNewConnection(b *testing.B) {
	for _, cold := range []bool{false, true} {
		b.Run(map[bool]string{false: "warm", true: "cold"}[cold], func(b *testing.B) {
			f := newServerFixture(b, false)
			empty := must[*ebpf.Program](b)(ebpf.NewProgram(&ebpf.ProgramSpec{
				Type: ebpf.SchedCLS, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
			}))
			defer empty.Close()
			var evict []byte
			if cold {
				evict = make([]byte, 8<<20)
			}
			run := func(prog *ebpf.Program, frame []byte, want uint32) time.Duration {
				for i := 0; i < len(evict); i += 64 {
					evict[i]++
				}
				ret, dur, err := prog.Benchmark(frame, 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				if ret != want {
					b.Fatalf("returned %#x, want %#x", ret, want)
				}
				return dur
			}
			var zt, floor time.Duration
			packets := 0
			for i := range b.N {
				port := uint16(1024 + i%60000)
				in := func(flags uint8) []byte {
					return pkt{src: f.peer, dst: f.pod, proto: protoTCP, sport: port, dport: 80, tcpFlags: flags}.bytes()
				}
				out := func(flags uint8) []byte {
					return pkt{src: f.pod, dst: f.peer, proto: protoTCP, sport: 80, dport: port, tcpFlags: flags}.bytes()
				}
				const fin, psh = 0x01, 0x08
				conn := []struct {
					dir   Dir
					frame []byte
				}{
					{DirIngress, in(tcpSYN)}, {DirEgress, out(tcpSYN | tcpACK)}, {DirIngress, in(tcpACK)},
					{DirIngress, in(psh | tcpACK)}, {DirEgress, out(psh | tcpACK)},
					{DirIngress, in(fin | tcpACK)}, {DirEgress, out(fin | tcpACK)}, {DirIngress, in(tcpACK)},
				}
				for _, p := range conn {
					zt += run(f.prog(p.dir), p.frame, retPass)
					floor += run(empty, p.frame, retPass)
				}
				packets += len(conn)
			}
			if c := f.counter(DirIngress, VerdictAllow, ReasonAllowed); c < uint64(b.N) {
				b.Fatalf("%d SYNs allowed by the rule, want %d", c, b.N)
			}
			b.ReportMetric(float64(zt.Nanoseconds())/float64(b.N), "ns/conn")
			b.ReportMetric(float64(packets)/float64(b.N), "pkts/conn")
			b.ReportMetric(float64(zt)/float64(floor), "x-empty")
		})
	}
}

// BenchmarkFastPathBesideNewFlows: the kernel cost, on CPU 0, of one
// data packet of an established flow (the fast path: one conntrack
// lookup), alone and while CPU 1 opens new flows without pause (SYNs of
// another flow, decided from the maps after the ordered read of the
// policy generation, zt_polgen_ordered), the two alternating. Each measured packet is one BPF_PROG_RUN (repeat 1), so
// several new flows pass on CPU 1 between two of them, as on a busy node
// between a flow's packets. The new flows write only their own conntrack
// entry and per-CPU counters: x-alone (beside over alone, medians of the
// rounds) is what they cost the other CPUs' established flows through
// cache lines they share, near 1 when they share none that is written.
func BenchmarkFastPathBesideNewFlows(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs 2 CPUs")
	}
	f := newServerFixture(b, false)
	onCPU(b, 0)
	frame := func(dir Dir, port uint16, flags uint8) []byte {
		if dir == DirIngress {
			return pkt{src: f.peer, dst: f.pod, proto: protoTCP, sport: port, dport: 80, tcpFlags: flags}.bytes()
		}
		return pkt{src: f.pod, dst: f.peer, proto: protoTCP, sport: 80, dport: port, tcpFlags: flags}.bytes()
	}
	run := func(dir Dir, frame []byte, repeat int) (time.Duration, error) {
		ret, dur, err := f.prog(dir).Benchmark(frame, repeat, nil)
		if err == nil && ret != retPass {
			err = fmt.Errorf("returned %#x, want %#x", ret, retPass)
		}
		return dur, err
	}
	const psh = 0x08
	for _, p := range []struct {
		dir   Dir
		flags uint8
	}{{DirIngress, tcpSYN}, {DirEgress, tcpSYN | tcpACK}, {DirIngress, tcpACK}} {
		must[time.Duration](b)(run(p.dir, frame(p.dir, 40000, p.flags), 1))
	}
	data := frame(DirIngress, 40000, psh|tcpACK)
	const packets = 20000
	measure := func() float64 {
		var sum time.Duration
		for range packets {
			sum += must[time.Duration](b)(run(DirIngress, data, 1))
		}
		return float64(sum.Nanoseconds()) / packets
	}
	var syns atomic.Int64
	beside := func() float64 {
		stop, started, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			err := pinThread(1)
			close(started)
			syn := frame(DirIngress, 50000, tcpSYN)
			for err == nil {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				_, err = run(DirIngress, syn, 100)
				syns.Add(100)
			}
			done <- err
		}()
		<-started
		ns := measure()
		close(stop)
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		return ns
	}
	allowedBefore := f.counter(DirIngress, VerdictAllow, ReasonAllowed)
	var alone, loaded []float64
	for range b.N {
		alone = append(alone, measure())
		loaded = append(loaded, beside())
	}
	// Every SYN was decided by the rule (on CPU 1, in zt_slow), and every
	// data packet passed on its entry's verdict. (A run of 100 SYNs that a
	// signal interrupts is started again, so more may have run.)
	if got, want := f.counter(DirIngress, VerdictAllow, ReasonAllowed)-allowedBefore,
		uint64(syns.Load())+uint64(2*b.N*packets); got < want {
		b.Fatalf("%d packets allowed by the rule, want at least %d (SYNs and data packets)", got, want)
	}
	b.ReportMetric(stats.Median(loaded), "ns/pkt")
	b.ReportMetric(stats.Median(alone), "alone-ns/pkt")
	b.ReportMetric(stats.Median(loaded)/stats.Median(alone), "x-alone")
	b.ReportMetric(float64(syns.Load())/float64(b.N), "syns/round")
}
