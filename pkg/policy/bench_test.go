package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// benchWorld is a realistic generated cluster: 50 namespaces (team, env),
// pods with app/tier/version labels and named ports, some dual-stack, and
// policies with pod and namespace selectors, some ipBlocks, some named
// ports, some egress.
func benchWorld(npods, npolicies int) Snapshot {
	r := rand.New(rand.NewPCG(1, 2))
	const nns = 50
	var s Snapshot
	for i := range nns {
		s.Namespaces = append(s.Namespaces, Namespace{
			Name:   fmt.Sprintf("ns-%02d", i),
			Labels: map[string]string{"team": fmt.Sprintf("t%d", i%10), "env": []string{"prod", "dev", "staging"}[i%3]},
		})
	}
	tiers := []string{"fe", "be", "db"}
	for i := range npods {
		ns := i % nns
		app := r.IntN(20)
		p := Pod{
			Namespace: fmt.Sprintf("ns-%02d", ns),
			Name:      fmt.Sprintf("app-%d-%d", app, i),
			Labels:    map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": tiers[app%3], "version": []string{"v1", "v2"}[r.IntN(2)]},
			IPs:       []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})},
			Ports: []ContainerPort{
				{Name: "http", Port: uint16(8000 + app), Protocol: ProtoTCP},
				{Name: "metrics", Port: 9090, Protocol: ProtoTCP},
			},
			NodeName: fmt.Sprintf("node-%d", i%100),
		}
		if i%5 == 0 {
			p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}))
		}
		s.Pods = append(s.Pods, p)
	}
	tcp := corev1.ProtocolTCP
	for i := range npolicies {
		ns := i % nns
		app := r.IntN(20)
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%02d", ns), Name: fmt.Sprintf("np-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", app)}},
			},
		}
		var rule networkingv1.NetworkPolicyIngressRule
		switch r.IntN(10) {
		case 0, 1, 2:
			rule.From = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", r.IntN(20))}}}}
		case 3, 4:
			rule.From = []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", r.IntN(10))}}}}
		case 5, 6:
			rule.From = []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "staging"}}}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tiers[r.IntN(3)]}},
			}}
		case 7:
			b := r.IntN(4)
			rule.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
				CIDR: fmt.Sprintf("10.%d.0.0/16", b), Except: []string{fmt.Sprintf("10.%d.%d.0/24", b, r.IntN(40))},
			}}}
		case 8:
			rule.From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.168.%d.0/24", r.IntN(256))}}}
		case 9:
			// every pod of the namespace
			rule.From = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}
		}
		if r.IntN(2) == 0 {
			http := intstr.FromString("http")
			rule.Ports = []networkingv1.NetworkPolicyPort{{Port: &http, Protocol: &tcp}}
		} else {
			p := intstr.FromInt32(int32(8000 + r.IntN(20)))
			rule.Ports = []networkingv1.NetworkPolicyPort{{Port: &p, Protocol: &tcp}}
		}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rule}
		if r.IntN(5) == 0 {
			metrics := intstr.FromString("metrics")
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tiers[r.IntN(3)]}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &metrics}},
			}}
		}
		s.Policies = append(s.Policies, np)
	}
	s.HostIPs = []netip.Addr{netip.MustParseAddr("10.255.0.1")}
	return s
}

func BenchmarkBuild(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{1000, 1000}, {10000, 1000}} {
		s := benchWorld(size.pods, size.policies)
		b.Run(fmt.Sprintf("pods=%d,policies=%d", size.pods, size.policies), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c := Build(s, Options{})
				if len(c.Problems()) != 0 {
					b.Fatal(c.Problems())
				}
			}
		})
	}
}

// relabel flips one pod between two label sets.
func relabel(c *Compiler, p Pod, i int) {
	p.Labels = map[string]string{"app": "app-3", "tier": "be", "version": []string{"v1", "v2"}[i%2]}
	if i%4 >= 2 {
		p.Labels["app"] = "app-7"
	}
	c.SetPod(p)
	c.Sync()
}

func BenchmarkIncrementalPodRelabel(b *testing.B) {
	s := benchWorld(10000, 1000)
	c := Build(s, Options{})
	p := s.Pods[1234]
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		relabel(c, p, i)
		i++
	}
}

// BenchmarkFullVsIncremental measures a full build and a single pod
// relabel on the same 10,000-pod world in one run, and reports their ratio:
// in the cluster view (every pod an endpoint, as ztctl compiles) and in a
// node's view (Options.NodeName: only the 100 pods of the relabelled pod's
// node are endpoints, as each agent compiles).
func BenchmarkFullVsIncremental(b *testing.B) {
	s := benchWorld(10000, 1000)
	p := s.Pods[1234]
	for _, view := range []struct {
		name string
		opts Options
	}{{"cluster", Options{}}, {"node", Options{NodeName: p.NodeName}}} {
		b.Run("view="+view.name, func(b *testing.B) {
			var full, inc time.Duration
			var n int
			for b.Loop() {
				t0 := time.Now()
				c := Build(s, view.opts)
				full += time.Since(t0)
				t0 = time.Now()
				const k = 20
				for i := range k {
					relabel(c, p, i)
				}
				inc += time.Since(t0) / k
				n++
			}
			b.ReportMetric(float64(full.Nanoseconds())/float64(n), "full-ns/build")
			b.ReportMetric(float64(inc.Nanoseconds())/float64(n), "incr-ns/relabel")
			b.ReportMetric(float64(full)/float64(inc), "full/incremental")
		})
	}
}

// BenchmarkPolicyBurst adds 200 policies, each with its own ipBlock, to a
// built 10,000-pod world (one node's view) and syncs once, as an agent does
// after a kubectl apply of many policies; the baseline is a Build of the
// whole world in the same run.
func BenchmarkPolicyBurst(b *testing.B) {
	s := benchWorld(10000, 1000)
	opts := Options{NodeName: s.Pods[0].NodeName}
	var burst []*networkingv1.NetworkPolicy
	for i := range 200 {
		burst = append(burst, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%02d", i%50), Name: fmt.Sprintf("burst-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("10.%d.%d.0/24", i/250, i%250)},
				}}}},
			},
		})
	}
	var full, inc time.Duration
	n := 0
	for b.Loop() {
		t0 := time.Now()
		c := Build(s, opts)
		full += time.Since(t0)
		t0 = time.Now()
		for _, np := range burst {
			if err := c.SetPolicy(np); err != nil {
				b.Fatal(err)
			}
		}
		c.Sync()
		inc += time.Since(t0)
		n++
	}
	b.ReportMetric(float64(full.Nanoseconds())/float64(n), "build-ns")
	b.ReportMetric(float64(inc.Nanoseconds())/float64(n), "burst-ns")
	b.ReportMetric(float64(full)/float64(inc), "build/burst")
}
