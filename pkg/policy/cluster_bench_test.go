package policy_test

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/pkg/policy"
)

func pctl(xs []time.Duration, p float64) time.Duration {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	i := int(p/100*float64(len(xs))+0.999999) - 1
	return xs[min(len(xs)-1, max(0, i))]
}

// BenchmarkClusterIncremental builds the benchworld cluster (the one
// tools/bench/controlplane's compilebench compiles) in one node's
// view and times, in the same run, the full Build (the baseline) and each
// kind of incremental update followed by Sync: a pod relabel, a pod added
// then deleted, a policy added then deleted and a namespace relabelled. It
// reports each update's p50 and p99 (wall and CPU time) and the ratio of
// the full build to the update's p50.
// ZT_BENCH_SIZES=100000x10000 adds larger worlds (default 10000x1000).
func BenchmarkClusterIncremental(b *testing.B) {
	sizes := [][2]int{{10000, 1000}}
	if v := os.Getenv("ZT_BENCH_SIZES"); v != "" {
		sizes = nil
		for _, f := range splitNonEmpty(v, ',') {
			var pods, pols int
			if _, err := fmt.Sscanf(f, "%dx%d", &pods, &pols); err != nil {
				b.Fatalf("ZT_BENCH_SIZES %q: %v", v, err)
			}
			sizes = append(sizes, [2]int{pods, pols})
		}
	}
	updates := 50
	if v, err := strconv.Atoi(os.Getenv("ZT_BENCH_UPDATES")); err == nil && v > 0 {
		updates = v
	}
	for _, size := range sizes {
		s := benchworld.Generate(size[0], size[1])
		p := s.Pods[0]
		opts := policy.Options{NodeName: p.NodeName}
		b.Run(fmt.Sprintf("pods=%d,policies=%d", size[0], size[1]), func(b *testing.B) {
			// Wall time is what compilebench reports; CPU time (of the
			// process, GC included) is shown too, because this machine is
			// shared and wall time is noisy on it.
			var full, fullCPU time.Duration
			var wall, cpu [4][]time.Duration
			names := [4]string{"relabel", "pod", "policy", "ns"}
			n := 0
			measure := func(k int, f func()) {
				c0, t0 := cpuTime(), time.Now()
				f()
				wall[k] = append(wall[k], time.Since(t0))
				cpu[k] = append(cpu[k], cpuTime()-c0)
			}
			for b.Loop() {
				c0, t0 := cpuTime(), time.Now()
				c := policy.Build(s, opts)
				full += time.Since(t0)
				fullCPU += cpuTime() - c0
				n++
				// As compilebench (which measures the heap here): the
				// updates start without a collection of Build's garbage
				// under way.
				runtime.GC()
				for i := range updates {
					measure(0, func() {
						c.SetPod(benchworld.Relabel(p, i))
						c.Sync()
					})
				}
				for i := range updates {
					q := p
					q.Name = "bench-new"
					q.IPs = []netip.Addr{netip.MustParseAddr("10.254.0.1")}
					measure(1, func() {
						if i%2 == 0 {
							c.SetPod(q)
						} else {
							c.DeletePod(q.Key())
						}
						c.Sync()
					})
				}
				for i := range updates {
					measure(2, func() {
						if i%2 == 0 {
							if err := c.SetPolicy(benchworld.UpdatePolicy(p, i)); err != nil {
								b.Fatal(err)
							}
						} else {
							c.DeletePolicy(policy.PolicyKey{Namespace: p.Namespace, Name: benchworld.UpdatePolicyName})
						}
						c.Sync()
					})
				}
				for i := range updates {
					ns := s.Namespaces[1]
					ns.Labels = map[string]string{"team": fmt.Sprintf("t%d", i%10), "env": []string{"prod", "dev"}[i%2]}
					measure(3, func() {
						c.SetNamespace(ns)
						c.Sync()
					})
				}
			}
			fullMean := float64(full.Nanoseconds()) / float64(n)
			b.ReportMetric(fullMean/1e6, "full-ms")
			b.ReportMetric(float64(fullCPU.Nanoseconds())/float64(n)/1e6, "full-cpu-ms")
			for k := range names {
				b.ReportMetric(float64(pctl(wall[k], 50).Nanoseconds())/1e6, names[k]+"-p50-ms")
				b.ReportMetric(float64(pctl(wall[k], 99).Nanoseconds())/1e6, names[k]+"-p99-ms")
				b.ReportMetric(float64(pctl(cpu[k], 50).Nanoseconds())/1e6, names[k]+"-cpu-p50-ms")
				b.ReportMetric(float64(pctl(cpu[k], 99).Nanoseconds())/1e6, names[k]+"-cpu-p99-ms")
				b.ReportMetric(fullMean/float64(pctl(wall[k], 50).Nanoseconds()), "full/"+names[k]+"-p50")
			}
		})
	}
}

// cpuTime is the CPU time of the process so far.
func cpuTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func splitNonEmpty(s string, sep byte) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != sep {
			i++
		}
		if i > 0 {
			out = append(out, s[:i])
		}
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

// BenchmarkClusterRelabel is the relabel alone, for profiling.
func BenchmarkClusterRelabel(b *testing.B) {
	s := benchworld.Generate(10000, 1000)
	p := s.Pods[0]
	c := policy.Build(s, policy.Options{NodeName: p.NodeName})
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		c.SetPod(benchworld.Relabel(p, i))
		c.Sync()
		i++
	}
}

// BenchmarkClusterNamespaceRelabel is a namespace relabel alone, for
// profiling.
func BenchmarkClusterNamespaceRelabel(b *testing.B) {
	s := benchworld.Generate(10000, 1000)
	p := s.Pods[0]
	c := policy.Build(s, policy.Options{NodeName: p.NodeName})
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		ns := s.Namespaces[1]
		ns.Labels = map[string]string{"team": fmt.Sprintf("t%d", i%10), "env": []string{"prod", "dev"}[i%2]}
		c.SetNamespace(ns)
		c.Sync()
		i++
	}
}

// BenchmarkReferenceChange: a policy that references something no policy
// did (a volatile label key its peer selector tests, an ipBlock, an egress
// named port) is added, then deleted, each followed by Sync, on the node view of
// a generated cluster. Only the pods carrying what came or went
// are relabelled; the baseline, alternating in the same run, is the same
// change with every pod relabelled (RelabelEveryPod), as an ipBlock or a
// named port did before. (Volatile label keys came after that: the first
// policy testing one costs a scan of the pods, and relabels those carrying
// it.) An ipBlock relabels no pod at all: the addresses in it take a new
// prefix identity; only an egress rule with a named port makes the pods
// in its ipBlock carry the prefix.
// ratio = every / touched time.
func BenchmarkReferenceChange(b *testing.B) {
	tcp := corev1.ProtocolTCP
	named, metrics := intstr.FromString("not-yet-named"), intstr.FromString("metrics")
	for _, pods := range []int{10_000, 100_000} {
		w := benchworld.Generate(pods, 1_000)
		c := policy.Build(w, policy.Options{NodeName: w.Pods[0].NodeName})
		for _, tc := range []struct {
			name string
			peer networkingv1.NetworkPolicyPeer
			port []networkingv1.NetworkPolicyPort
		}{
			// a volatile label key no pod carries: the scan alone
			{"volatile-key-on-no-pod", networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"job-name": "migrate"}}}, nil},
			// the ipBlock compilebench adds (benchworld's own are /16
			// and /24): 128 pod addresses
			{"ipblock-128-pods", benchworld.ReferencePolicy(w.Pods[0]).Spec.Egress[0].To[0], nil},
			// every pod address of benchworld is in 10.0.0.0/8
			{"ipblock-every-pod", networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}, nil},
			// a named port resolves on the destination pod: the 128
			// pods are relabelled to carry the prefix (benchworld's
			// egress rules already reference "metrics", so no other pod
			// is)
			{"ipblock-128-pods-named-port", benchworld.ReferencePolicy(w.Pods[0]).Spec.Egress[0].To[0],
				[]networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &metrics}}},
			{"named-port-on-no-pod", networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{}},
				[]networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}}},
		} {
			np := &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: w.Pods[0].Namespace, Name: "new-reference"},
				Spec: networkingv1.NetworkPolicySpec{
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
					Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{tc.peer}, Ports: tc.port}},
				},
			}
			b.Run(fmt.Sprintf("pods=%d/%s", pods, tc.name), func(b *testing.B) {
				var touched, every time.Duration
				i := 0
				for b.Loop() {
					for j := range 2 {
						all := (i+j)%2 == 1
						t0 := time.Now()
						if err := c.SetPolicy(np); err != nil {
							b.Fatal(err)
						}
						if all {
							c.RelabelEveryPod()
						}
						c.Sync()
						c.DeletePolicy(policy.PolicyKey{Namespace: np.Namespace, Name: np.Name})
						if all {
							c.RelabelEveryPod()
						}
						c.Sync()
						if all {
							every += time.Since(t0)
						} else {
							touched += time.Since(t0)
						}
					}
					i++
				}
				ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(ms(touched), "touched-ms/op")
				b.ReportMetric(ms(every), "every-ms/op")
				b.ReportMetric(float64(every)/float64(touched), "ratio")
			})
		}
	}
}

// BenchmarkRelabelSharedRules times a pod relabel + Sync in one node's view
// of the benchworld cluster, as compilebench does, for two compilers of the
// same world alternating in one run: one whose endpoints' rule lists are
// cut into chunks that patches share (policy.Rules), and a baseline whose
// lists are one chunk each, so that every patch copies its endpoint's
// whole list (what a flat slice did). It reports the bytes each relabel
// allocates, their p50/p99 times, and the ratios. The times of the two
// are not independent: both compilers' garbage is collected by the same
// runtime, so each pays for GC cycles the other's allocations caused
// (compilebench runs one compiler per process).
// ZT_BENCH_SIZES=100000x10000 adds larger worlds (default 10000x10000).
func BenchmarkRelabelSharedRules(b *testing.B) {
	sizes := [][2]int{{10_000, 10_000}}
	if os.Getenv("ZT_BENCH_SIZES") == "100000x10000" {
		sizes = append(sizes, [2]int{100_000, 10_000})
	}
	for _, size := range sizes {
		w := benchworld.Generate(size[0], size[1])
		p := w.Pods[0]
		opts := policy.Options{NodeName: p.NodeName}
		shared := policy.Build(w, opts)
		def := policy.SetRuleChunk(1 << 30)
		whole := policy.Build(w, opts)
		policy.SetRuleChunk(def)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size[0], size[1]), func(b *testing.B) {
			var times [2][]time.Duration
			var bytes [2]uint64
			sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
			allocated := func() uint64 {
				metrics.Read(sample)
				return sample[0].Value.Uint64()
			}
			i := 0
			for b.Loop() {
				for j := range 2 {
					c, k := shared, (i+j)%2
					if k == 1 {
						c = whole
						policy.SetRuleChunk(1 << 30)
					}
					a0, t0 := allocated(), time.Now()
					c.SetPod(benchworld.Relabel(p, i))
					c.Sync()
					times[k] = append(times[k], time.Since(t0))
					bytes[k] += allocated() - a0
					policy.SetRuleChunk(def)
				}
				i++
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(0, "ns/op")
			kib := func(n uint64) float64 { return float64(n) / 1024 / float64(len(times[0])) }
			b.ReportMetric(kib(bytes[0]), "shared-KiB/relabel")
			b.ReportMetric(kib(bytes[1]), "whole-KiB/relabel")
			b.ReportMetric(float64(bytes[1])/float64(bytes[0]), "bytes-ratio")
			b.ReportMetric(ms(pctl(times[0], 50)), "shared-p50-ms")
			b.ReportMetric(ms(pctl(times[0], 99)), "shared-p99-ms")
			b.ReportMetric(ms(pctl(times[1], 50)), "whole-p50-ms")
			b.ReportMetric(ms(pctl(times[1], 99)), "whole-p99-ms")
			b.ReportMetric(float64(pctl(times[1], 50))/float64(pctl(times[0], 50)), "p50-ratio")
			b.ReportMetric(float64(pctl(times[1], 99))/float64(pctl(times[0], 99)), "p99-ratio")
		})
	}
}
