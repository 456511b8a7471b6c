// Package benchworld generates the deterministic cluster that the policy
// compiler's benchmarks compile: tools/bench/controlplane's compilebench
// child and pkg/policy's cluster benchmarks and incremental tests, so that
// they all measure and check the same worlds. It also makes the updates
// they time: a pod relabel and a policy added and deleted.
package benchworld

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ztnet/zt/pkg/policy"
)

// Apps is the number of app label values in the cluster.
const Apps = 50

const (
	appsPerNS    = 10  // deployments per namespace
	podsPerNS    = 100 // so there are pods/100 namespaces (at least 10)
	podsPerNode  = 100
	minNamespace = 10
)

var tiers = []string{"web", "api", "db"}

// App is the value of the app label of the i-th app.
func App(i int) string { return fmt.Sprintf("app-%d", i) }

// nsApp is the k-th app (deployment) of namespace ns.
func nsApp(ns, k int) int { return (ns*7 + k) % Apps }

// Generate is a deterministic cluster: one namespace (team, env) per 100
// pods, each running 10 apps (deployments) in two versions, so about one
// identity per 5 pods; pods spread over nodes of 100 with app/tier/version
// labels and two named ports, every tenth dual-stack; policies in random
// namespaces selecting one of its apps, mixing pod, namespace and combined
// peer selectors, ipBlocks with exceptions, named and numbered ports, port
// ranges and egress rules.
func Generate(npods, npolicies int) policy.Snapshot {
	r := rand.New(rand.NewPCG(7, uint64(npods)<<20|uint64(npolicies)))
	namespaces := max(minNamespace, npods/podsPerNS)
	var s policy.Snapshot
	for i := range namespaces {
		s.Namespaces = append(s.Namespaces, policy.Namespace{
			Name: fmt.Sprintf("ns-%03d", i),
			Labels: map[string]string{
				policy.NamespaceNameLabel: fmt.Sprintf("ns-%03d", i),
				"team":                    fmt.Sprintf("t%d", i%10),
				"env":                     []string{"prod", "staging", "dev"}[i%3],
			},
		})
	}
	for i := range npods {
		app := nsApp(i%namespaces, r.IntN(appsPerNS))
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		p := policy.Pod{
			Namespace: fmt.Sprintf("ns-%03d", i%namespaces),
			Name:      fmt.Sprintf("%s-%d", App(app), i),
			Labels:    map[string]string{"app": App(app), "tier": tiers[app%3], "version": []string{"v1", "v2"}[r.IntN(2)]},
			IPs:       []netip.Addr{ip},
			Ports: []policy.ContainerPort{
				{Name: "http", Port: uint16(8000 + app), Protocol: policy.ProtoTCP},
				{Name: "metrics", Port: 9090, Protocol: policy.ProtoTCP},
			},
			NodeName: fmt.Sprintf("node-%d", i/podsPerNode),
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
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": App(nsApp(ns, r.IntN(appsPerNS)))}},
			},
		}
		var in networkingv1.NetworkPolicyIngressRule
		switch r.IntN(10) {
		case 0, 1, 2:
			in.From = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": App(nsApp(ns, r.IntN(appsPerNS)))}}}}
		case 3, 4:
			in.From = []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", r.IntN(10))}}}}
		case 5, 6:
			in.From = []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "staging"}}}},
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tiers[r.IntN(3)]}},
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
			port := intstr.FromInt32(int32(8000 + r.IntN(Apps)))
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
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tiers[r.IntN(3)]}},
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

// Relabel is p with the i-th of the label sets a relabelled pod flips
// between: two apps, each selected by other policies, so that its identity
// and every rule naming it change. The labels are a new map.
func Relabel(p policy.Pod, i int) policy.Pod {
	p.Labels = map[string]string{"app": App((i%2)*4 + 3), "tier": tiers[i%3], "version": "v1"}
	return p
}

// ReferencePolicyName is the name of the policy ReferencePolicy makes.
const ReferencePolicyName = "bench-reference"

// ReferencePolicy is a policy of p's namespace whose one peer is an
// ipBlock no other policy references, holding the addresses of 128 pods
// (those numbered 384 to 511): adding or deleting it makes or drops a
// CIDR identity, which those pods' addresses take as their prefix
// identity or leave (bpf/zt_abi.h, "Prefix identity of an address"); no
// pod identity changes.
func ReferencePolicy(p policy.Pod) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: ReferencePolicyName},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{
				IPBlock: &networkingv1.IPBlock{CIDR: "10.0.1.128/25"},
			}}}},
		},
	}
}

// UpdatePolicyName is the name of the policy UpdatePolicy makes.
const UpdatePolicyName = "bench-update"

// UpdatePolicy is the policy the benchmarks add and delete, in p's
// namespace: it selects p's tier and admits app i%Apps.
func UpdatePolicy(p policy.Pod, i int) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: UpdatePolicyName},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": p.Labels["tier"]}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": App(i % Apps)}},
			}}}},
		},
	}
}
