package randpolicy

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func testGen(seed uint64) *Gen {
	w := DefaultWorld(3)
	v4, v6 := PodAddrs(12)
	w.Addrs = Addrs(v4, v6, []netip.Addr{netip.MustParseAddr("10.0.9.1"), netip.MustParseAddr("fd00::9:1"), netip.MustParseAddr("8.8.8.8")})
	return New(rand.New(rand.NewPCG(seed, 1)), w)
}

func draw(g *Gen, n int) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for range n {
		out = append(out, g.Policy(Pick(g.R, g.World.Namespaces), "np"))
	}
	return out
}

func TestDeterministic(t *testing.T) {
	a, b, c := draw(testGen(42), 200), draw(testGen(42), 200), draw(testGen(43), 200)
	if !reflect.DeepEqual(a, b) {
		t.Error("two generators of one seed drew different policies")
	}
	if reflect.DeepEqual(a, c) {
		t.Error("two seeds drew the same policies")
	}
}

// TestCoverage draws many policies, checks each is valid as the API server
// would have it, and that every feature of the field space appears.
func TestCoverage(t *testing.T) {
	g := testGen(7)
	seen := map[string]int{}
	see := func(f string, ok bool) {
		if ok {
			seen[f]++
		}
	}
	selector := func(kind string, s *metav1.LabelSelector, space LabelSpace) {
		if s == nil {
			seen[kind+" nil"]++
			return
		}
		see(kind+" empty", len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0)
		see(kind+" matchLabels", len(s.MatchLabels) > 0)
		see(kind+" matchLabels and matchExpressions", len(s.MatchLabels) > 0 && len(s.MatchExpressions) > 0)
		for k, v := range s.MatchLabels {
			see(kind+" by name", k == corev1.LabelMetadataName)
			if k != corev1.LabelMetadataName && !slices.Contains(space.Values[k], v) {
				t.Errorf("%s: matchLabels %s=%s outside the label space", kind, k, v)
			}
		}
		for _, r := range s.MatchExpressions {
			see(kind+" "+string(r.Operator), true)
			see(kind+" In two values", r.Operator == metav1.LabelSelectorOpIn && len(r.Values) == 2)
			see(kind+" by name", r.Key == corev1.LabelMetadataName)
			wantValues := r.Operator == metav1.LabelSelectorOpIn || r.Operator == metav1.LabelSelectorOpNotIn
			if wantValues != (len(r.Values) > 0) {
				t.Errorf("%s: requirement %v", kind, r)
			}
		}
	}
	for _, np := range draw(g, 3000) {
		selector("policy podSelector", &np.Spec.PodSelector, g.World.PodLabels)
		if np.Namespace == "" || np.Name == "" || np.Kind != "NetworkPolicy" {
			t.Errorf("policy %s/%s kind %q", np.Namespace, np.Name, np.Kind)
		}
		var types string
		for _, pt := range np.Spec.PolicyTypes {
			types += string(pt)
		}
		seen["policyTypes ["+types+"]"]++
		see("ingress nil", np.Spec.Ingress == nil)
		see("ingress empty", np.Spec.Ingress != nil && len(np.Spec.Ingress) == 0)
		see("egress nil", np.Spec.Egress == nil)
		see("egress empty", np.Spec.Egress != nil && len(np.Spec.Egress) == 0)
		var peerLists [][]networkingv1.NetworkPolicyPeer
		var portLists [][]networkingv1.NetworkPolicyPort
		for _, r := range np.Spec.Ingress {
			peerLists, portLists = append(peerLists, r.From), append(portLists, r.Ports)
		}
		for _, r := range np.Spec.Egress {
			peerLists, portLists = append(peerLists, r.To), append(portLists, r.Ports)
		}
		for _, ps := range peerLists {
			see("peers nil", ps == nil)
			see("peers empty", ps != nil && len(ps) == 0)
		}
		for _, ps := range portLists {
			see("ports nil", ps == nil)
			see("ports empty", ps != nil && len(ps) == 0)
		}
		peers, ports := RuleParts(np)
		for _, p := range peers {
			if p.IPBlock != nil {
				if p.PodSelector != nil || p.NamespaceSelector != nil {
					t.Errorf("peer %+v: ipBlock with selectors", p)
				}
				checkIPBlock(t, p.IPBlock, see)
				continue
			}
			if p.PodSelector == nil && p.NamespaceSelector == nil {
				t.Errorf("peer %+v: nothing", p)
			}
			selector("peer podSelector", p.PodSelector, g.World.PodLabels)
			selector("peer namespaceSelector", p.NamespaceSelector, g.World.NamespaceLabels)
		}
		for _, p := range ports {
			if p.Protocol == nil {
				seen["protocol nil"]++
			} else {
				seen["protocol "+string(*p.Protocol)]++
			}
			switch {
			case p.Port == nil:
				seen["port nil"]++
				if p.EndPort != nil {
					t.Errorf("port %+v: endPort without port", p)
				}
			case p.Port.Type == intstr.String:
				see("port named", slices.Contains(g.World.PortNames, p.Port.StrVal))
				see("port named, unknown", p.Port.StrVal == UnknownPortName)
				if p.EndPort != nil {
					t.Errorf("port %+v: endPort with a named port", p)
				}
			default:
				n := p.Port.IntVal
				see("port number", slices.Contains(g.World.PortNumbers, n))
				see("port number, unknown", n == UnknownPortNumber)
				if p.EndPort != nil {
					e := *p.EndPort
					if e < n || e > 65535 {
						t.Errorf("port %+v: endPort %d", p, e)
					}
					see("endPort = port", e == n)
					see("endPort > port", e > n && e < 65535)
					see("endPort 65535", e == 65535)
				}
			}
		}
	}
	for _, f := range []string{
		"policy podSelector empty", "policy podSelector matchLabels", "policy podSelector matchLabels and matchExpressions",
		"policy podSelector In", "policy podSelector In two values", "policy podSelector NotIn",
		"policy podSelector Exists", "policy podSelector DoesNotExist",
		"policyTypes []", "policyTypes [Ingress]", "policyTypes [Egress]", "policyTypes [IngressEgress]", "policyTypes [EgressIngress]",
		"ingress nil", "ingress empty", "egress nil", "egress empty",
		"peers nil", "peers empty", "ports nil", "ports empty",
		"peer podSelector nil", "peer podSelector empty", "peer podSelector matchLabels",
		"peer podSelector In", "peer podSelector NotIn", "peer podSelector Exists", "peer podSelector DoesNotExist",
		"peer namespaceSelector nil", "peer namespaceSelector empty", "peer namespaceSelector matchLabels",
		"peer namespaceSelector In", "peer namespaceSelector NotIn", "peer namespaceSelector Exists", "peer namespaceSelector DoesNotExist",
		"peer namespaceSelector by name",
		"ipBlock v4", "ipBlock v6", "ipBlock v4 single address", "ipBlock v6 single address",
		"ipBlock v4 world", "ipBlock v6 world", "ipBlock v4 except", "ipBlock v6 except",
		"ipBlock v4 except single address", "ipBlock v6 except single address", "ipBlock two excepts",
		"protocol nil", "protocol TCP", "protocol UDP", "protocol SCTP",
		"port nil", "port named", "port named, unknown", "port number", "port number, unknown",
		"endPort = port", "endPort > port", "endPort 65535",
	} {
		if seen[f] == 0 {
			t.Errorf("no draw had %s", f)
		}
	}
	if t.Failed() {
		t.Logf("seen: %v", seen)
	}
}

func checkIPBlock(t *testing.T, b *networkingv1.IPBlock, see func(string, bool)) {
	t.Helper()
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil || cidr != cidr.Masked() {
		t.Errorf("ipBlock %+v: cidr %v", b, err)
		return
	}
	fam := "v6"
	if cidr.Addr().Is4() {
		fam = "v4"
	}
	see("ipBlock "+fam, true)
	see("ipBlock "+fam+" single address", cidr.IsSingleIP())
	see("ipBlock "+fam+" world", cidr.Bits() == 0)
	see("ipBlock "+fam+" except", len(b.Except) > 0)
	see("ipBlock two excepts", len(b.Except) == 2)
	for _, s := range b.Except {
		e, err := netip.ParsePrefix(s)
		if err != nil || e != e.Masked() || e.Bits() <= cidr.Bits() || !cidr.Contains(e.Addr()) {
			t.Errorf("ipBlock %+v: except %s is not a strict subset of the cidr (%v)", b, s, err)
		}
		see("ipBlock "+fam+" except single address", e.IsSingleIP())
	}
}

func TestPodAddrs(t *testing.T) {
	v4, v6 := PodAddrs(12)
	all := Addrs(v4, v6)
	if len(v4) != 12 || len(v6) != 12 || len(all) != 24 {
		t.Fatalf("PodAddrs(12) = %v %v", v4, v6)
	}
	// The narrow CIDRs of DefaultWorld hold a pod address (but for
	// 10.0.0.0/30, which is meant to hold none).
	for _, s := range []string{"10.0.2.0/28", "fd00::/120", "fd00::1:0/112"} {
		p := netip.MustParsePrefix(s)
		if !slices.ContainsFunc(all, p.Contains) {
			t.Errorf("no pod address in %s", p)
		}
	}
}
