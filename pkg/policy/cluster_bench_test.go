package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"golang.org/x/sys/unix"
)

// clusterWorld is the world of tools/bench/controlplane's compilebench
// (internal/compilebench/world.go, copied here because internal packages of
// that tool cannot be imported): one namespace per 100 pods, 10 apps per
// namespace in two versions, 100 pods per node, policies with pod,
// namespace and combined selectors, ipBlocks with exceptions, named and
// numbered ports, port ranges and egress rules. Keep the two in step.
const (
	cwApps        = 50
	cwAppsPerNS   = 10
	cwPodsPerNS   = 100
	cwPodsPerNode = 100
	cwMinNS       = 10
)

var cwTiers = []string{"web", "api", "db"}

func cwApp(i int) string    { return fmt.Sprintf("app-%d", i) }
func cwNSApp(ns, k int) int { return (ns*7 + k) % cwApps }

func clusterWorld(npods, npolicies int) Snapshot {
	r := rand.New(rand.NewPCG(7, uint64(npods)<<20|uint64(npolicies)))
	namespaces := max(cwMinNS, npods/cwPodsPerNS)
	var s Snapshot
	for i := range namespaces {
		s.Namespaces = append(s.Namespaces, Namespace{
			Name: fmt.Sprintf("ns-%03d", i),
			Labels: map[string]string{
				NamespaceNameLabel: fmt.Sprintf("ns-%03d", i),
				"team":             fmt.Sprintf("t%d", i%10),
				"env":              []string{"prod", "staging", "dev"}[i%3],
			},
		})
	}
	for i := range npods {
		app := cwNSApp(i%namespaces, r.IntN(cwAppsPerNS))
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		p := Pod{
			Namespace: fmt.Sprintf("ns-%03d", i%namespaces),
			Name:      fmt.Sprintf("%s-%d", cwApp(app), i),
			Labels:    map[string]string{"app": cwApp(app), "tier": cwTiers[app%3], "version": []string{"v1", "v2"}[r.IntN(2)]},
			IPs:       []netip.Addr{ip},
			Ports: []ContainerPort{
				{Name: "http", Port: uint16(8000 + app), Protocol: ProtoTCP},
				{Name: "metrics", Port: 9090, Protocol: ProtoTCP},
			},
			NodeName: fmt.Sprintf("node-%d", i/cwPodsPerNode),
		}
		if i%10 == 0 {
			p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 0x7a, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}))
		}
		s.Pods = append(s.Pods, p)
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	for i := range npolicies {
		ns := r.IntN(namespaces)
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%03d", ns), Name: fmt.Sprintf("np-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": cwApp(cwNSApp(ns, r.IntN(cwAppsPerNS)))}},
			},
		}
		var in networkingv1.NetworkPolicyIngressRule
		switch r.IntN(10) {
		case 0, 1, 2:
			in.From = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": cwApp(cwNSApp(ns, r.IntN(cwAppsPerNS)))}}}}
		case 3, 4:
			in.From = []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", r.IntN(10))}}}}
		case 5, 6:
			in.From = []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "staging"}}}},
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": cwTiers[r.IntN(3)]}},
			}}
		case 7:
			b := r.IntN(4)
			in.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
				CIDR: fmt.Sprintf("10.%d.0.0/16", b), Except: []string{fmt.Sprintf("10.%d.%d.0/24", b, r.IntN(256))},
			}}}
		case 8:
			in.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.168.%d.0/24", r.IntN(256))}}}
		case 9:
			in.From = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}
		}
		switch r.IntN(3) {
		case 0:
			http := intstr.FromString("http")
			in.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}}
		case 1:
			port := intstr.FromInt32(int32(8000 + r.IntN(cwApps)))
			in.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}
		case 2:
			port, end := intstr.FromInt32(9000), int32(9000+r.IntN(200))
			in.Ports = []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &port, EndPort: &end}}
		}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{in}
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if r.IntN(5) == 0 {
			metrics := intstr.FromString("metrics")
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": cwTiers[r.IntN(3)]}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &metrics}},
			}}
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
		s.Policies = append(s.Policies, np)
	}
	s.HostIPs = []netip.Addr{netip.MustParseAddr("10.255.255.254")}
	return s
}

// cwRelabel flips a pod between two label sets each selected by other
// policies, as compilebench does.
func cwRelabel(p Pod, i int) Pod {
	p.Labels = map[string]string{"app": cwApp((i%2)*4 + 3), "tier": cwTiers[i%3], "version": "v1"}
	return p
}

// cwPolicy is the policy compilebench adds and deletes: it selects the
// local pod's tier and admits one app.
func cwPolicy(p Pod, i int) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: "bench-update"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": p.Labels["tier"]}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": cwApp(i % cwApps)}},
			}}}},
		},
	}
}

func pctl(xs []time.Duration, p float64) time.Duration {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	i := int(p/100*float64(len(xs))+0.999999) - 1
	return xs[min(len(xs)-1, max(0, i))]
}

// BenchmarkClusterIncremental builds compilebench's world in one node's
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
		s := clusterWorld(size[0], size[1])
		p := s.Pods[0]
		opts := Options{NodeName: p.NodeName}
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
				c := Build(s, opts)
				full += time.Since(t0)
				fullCPU += cpuTime() - c0
				n++
				// As compilebench (which measures the heap here): the
				// updates start without a collection of Build's garbage
				// under way.
				runtime.GC()
				for i := range updates {
					measure(0, func() {
						c.SetPod(cwRelabel(p, i))
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
							if err := c.SetPolicy(cwPolicy(p, i)); err != nil {
								b.Fatal(err)
							}
						} else {
							c.DeletePolicy(PolicyKey{Namespace: p.Namespace, Name: "bench-update"})
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
	s := clusterWorld(10000, 1000)
	p := s.Pods[0]
	c := Build(s, Options{NodeName: p.NodeName})
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		c.SetPod(cwRelabel(p, i))
		c.Sync()
		i++
	}
}

// BenchmarkClusterNamespaceRelabel is a namespace relabel alone, for
// profiling.
func BenchmarkClusterNamespaceRelabel(b *testing.B) {
	s := clusterWorld(10000, 1000)
	p := s.Pods[0]
	c := Build(s, Options{NodeName: p.NodeName})
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
