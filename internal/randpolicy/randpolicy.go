// Package randpolicy draws random Kubernetes NetworkPolicies, and the label
// selectors, peers and ports they are made of, from the whole field space
// of the networking.k8s.io/v1 API: matchLabels and matchExpressions with
// every operator, empty and missing selectors, namespace selectors (by
// label and by the kubernetes.io/metadata.name label), ipBlocks with
// excepts in IPv4 and IPv6, numbered and named ports, port ranges, every
// protocol, every combination of policy types, and missing, empty and
// populated rule lists.
//
// A Gen draws from a rand source and a World: the namespaces and labels
// that exist, the ports pods declare and the addresses an ipBlock may be
// drawn around. It returns upstream API objects only, so that any test
// (pkg/policy's reference comparison, the kernel differential test) can use
// it; it depends on nothing of this module.
package randpolicy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// LabelSpace is the labels objects may carry: the keys, and the values each
// key may take. Keys is ordered so that draws are deterministic.
type LabelSpace struct {
	Keys   []string
	Values map[string][]string
}

// World describes what a Gen draws from.
type World struct {
	// Namespaces are the namespaces a namespace selector may name by the
	// kubernetes.io/metadata.name label.
	Namespaces []string
	// NamespaceLabels and PodLabels are the labels selectors select on.
	NamespaceLabels LabelSpace
	PodLabels       LabelSpace
	// PortNames and PortNumbers are the container ports pods may declare.
	// A policy port also names UnknownPortName or UnknownPortNumber
	// (neither declared) now and then.
	PortNames   []string
	PortNumbers []int32
	// CIDRs are the ipBlock CIDRs drawn besides single addresses of Addrs.
	CIDRs []string
	// Addrs are the addresses an ipBlock may be drawn around: a CIDR that
	// is exactly one of them, and excepts around those in a CIDR. They are
	// typically the pods', the nodes' and a few external addresses, and
	// change from world to world.
	Addrs []netip.Addr
}

const (
	// UnknownPortName is a port name no pod of a DefaultWorld declares.
	UnknownPortName = "nope"
	// UnknownPortNumber is a port number no pod of a DefaultWorld declares.
	UnknownPortNumber = 100
)

// PodAddrs returns n IPv4 and n IPv6 addresses of the pod address plan
// DefaultWorld's CIDRs are drawn around: 10.0.(i%3).(10+i) and
// fd00::(i%3):(16+i), three subnets per family. n is at most 240.
func PodAddrs(n int) (v4, v6 []netip.Addr) {
	for i := range n {
		v4 = append(v4, netip.AddrFrom4([4]byte{10, 0, byte(i % 3), byte(10 + i)}))
		v6 = append(v6, netip.MustParseAddr(fmt.Sprintf("fd00::%x:%x", i%3, 16+i)))
	}
	return v4, v6
}

// DefaultWorld returns a small world whose selectors often match and as
// often do not: namespaces ns0..ns(n-1) labelled team and env, pods
// labelled app, tier and role, four port names and six port numbers, and
// CIDRs around the PodAddrs plan, the node subnets 10.0.9.0/24 and
// fd00::9:0/112, and the world (v4 and v6). Addrs is left empty: set it to
// the world's addresses before drawing.
func DefaultWorld(namespaces int) World {
	w := World{
		NamespaceLabels: LabelSpace{
			Keys:   []string{"team", "env"},
			Values: map[string][]string{"team": {"a", "b", "c"}, "env": {"prod", "dev"}},
		},
		// pod-template-hash is a volatile label: in a pod's identity only
		// while some selector tests it (pkg/policy).
		PodLabels: LabelSpace{
			Keys: []string{"app", "tier", "role", "pod-template-hash"},
			Values: map[string][]string{"app": {"web", "db", "api"}, "tier": {"fe", "be"}, "role": {"x", "y"},
				"pod-template-hash": {"1", "2", "3"}},
		},
		PortNames:   []string{"http", "dns", "metrics", "web"},
		PortNumbers: []int32{53, 80, 81, 443, 8080, 9000},
		CIDRs: []string{
			"10.0.0.0/16", "10.0.1.0/24", "10.0.0.0/8", "0.0.0.0/0", "10.0.0.0/30", "10.0.2.0/28", "10.0.9.0/24", "8.8.8.0/24",
			"fd00::/64", "::/0", "fd00::1:0/112", "fd00::/120", "fd00::9:0/112", "2001:db8::/32",
		},
	}
	for i := range namespaces {
		w.Namespaces = append(w.Namespaces, fmt.Sprintf("ns%d", i))
	}
	return w
}

// Gen draws API objects from World with R. World may be changed between
// draws (typically Addrs, as pods come and go).
type Gen struct {
	R     *rand.Rand
	World World
}

// New returns a Gen over r and w.
func New(r *rand.Rand, w World) *Gen { return &Gen{R: r, World: w} }

// Chance reports true with probability p.
func (g *Gen) Chance(p float64) bool { return g.R.Float64() < p }

// Pick returns an element of xs drawn with r; xs must not be empty.
func Pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// Labels draws a label set of space: each key with probability 0.55.
func (g *Gen) Labels(space LabelSpace) map[string]string {
	out := map[string]string{}
	for _, k := range space.Keys {
		if g.Chance(0.55) {
			out[k] = Pick(g.R, space.Values[k])
		}
	}
	return out
}

// Selector draws a selector on space: empty (everything) a quarter of the
// time, else matchLabels, matchExpressions (In with one or two values,
// NotIn, Exists, DoesNotExist) or both.
func (g *Gen) Selector(space LabelSpace) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	if g.Chance(0.25) {
		return s // everything
	}
	if g.Chance(0.5) {
		s.MatchLabels = map[string]string{}
		for range 1 + g.R.IntN(2) {
			k := Pick(g.R, space.Keys)
			s.MatchLabels[k] = Pick(g.R, space.Values[k])
		}
	}
	if len(s.MatchLabels) == 0 || g.Chance(0.3) {
		for range 1 + g.R.IntN(2) {
			k := Pick(g.R, space.Keys)
			req := metav1.LabelSelectorRequirement{Key: k}
			switch g.R.IntN(4) {
			case 0:
				req.Operator = metav1.LabelSelectorOpIn
				req.Values = []string{Pick(g.R, space.Values[k])}
				if g.Chance(0.4) {
					req.Values = append(req.Values, Pick(g.R, space.Values[k]))
				}
			case 1:
				req.Operator = metav1.LabelSelectorOpNotIn
				req.Values = []string{Pick(g.R, space.Values[k])}
			case 2:
				req.Operator = metav1.LabelSelectorOpExists
			case 3:
				req.Operator = metav1.LabelSelectorOpDoesNotExist
			}
			s.MatchExpressions = append(s.MatchExpressions, req)
		}
	}
	return s
}

// PodSelector draws a selector on World.PodLabels.
func (g *Gen) PodSelector() *metav1.LabelSelector { return g.Selector(g.World.PodLabels) }

// NamespaceSelector draws a selector on World.NamespaceLabels or, a fifth
// of the time, on the kubernetes.io/metadata.name label the API server sets
// (In or NotIn one of World.Namespaces).
func (g *Gen) NamespaceSelector() *metav1.LabelSelector {
	if len(g.World.Namespaces) > 0 && g.Chance(0.2) {
		name := Pick(g.R, g.World.Namespaces)
		if g.Chance(0.5) {
			return &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: name}}
		}
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{name}}}}
	}
	return g.Selector(g.World.NamespaceLabels)
}

// IPBlock draws an ipBlock: one of World.CIDRs or, a quarter of the time,
// exactly one of World.Addrs; in a CIDR wider than an address, more than
// half the time one or two excepts, each a strict subset of the CIDR
// around one of World.Addrs in it (often that address alone). World.CIDRs
// and World.Addrs must not both be empty.
func (g *Gen) IPBlock() *networkingv1.IPBlock {
	all := g.World.Addrs
	var cidr netip.Prefix
	if len(all) > 0 && (len(g.World.CIDRs) == 0 || g.Chance(0.25)) {
		a := Pick(g.R, all)
		cidr = netip.PrefixFrom(a, a.BitLen())
	} else {
		cidr = netip.MustParsePrefix(Pick(g.R, g.World.CIDRs)).Masked()
	}
	b := &networkingv1.IPBlock{CIDR: cidr.String()}
	if cidr.Bits() < cidr.Addr().BitLen() && g.Chance(0.6) {
		var in []netip.Addr
		for _, a := range all {
			if cidr.Contains(a) {
				in = append(in, a)
			}
		}
		if len(in) == 0 {
			return b
		}
		for range 1 + g.R.IntN(2) {
			a := Pick(g.R, in)
			bits := cidr.Bits() + 1 + g.R.IntN(a.BitLen()-cidr.Bits())
			if g.Chance(0.5) {
				bits = a.BitLen()
			}
			e, _ := a.Prefix(bits)
			b.Except = append(b.Except, e.String())
		}
	}
	return b
}

// Peers draws a rule's peers: missing (every peer), empty (every peer too)
// or one to three of a pod selector, a namespace selector, both, or an
// ipBlock.
func (g *Gen) Peers() []networkingv1.NetworkPolicyPeer {
	switch x := g.R.Float64(); {
	case x < 0.15:
		return nil
	case x < 0.22:
		return []networkingv1.NetworkPolicyPeer{}
	}
	var out []networkingv1.NetworkPolicyPeer
	for range 1 + g.R.IntN(3) {
		var p networkingv1.NetworkPolicyPeer
		switch g.R.IntN(4) {
		case 0:
			p.PodSelector = g.PodSelector()
		case 1:
			p.NamespaceSelector = g.NamespaceSelector()
		case 2:
			p.PodSelector = g.PodSelector()
			p.NamespaceSelector = g.NamespaceSelector()
		case 3:
			p.IPBlock = g.IPBlock()
		}
		out = append(out, p)
	}
	return out
}

// protocols are the protocols a NetworkPolicyPort may name.
var protocols = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}

// Ports draws a rule's ports: missing (every port), empty (every port too)
// or one to three ports, each with a protocol (TCP, UDP, SCTP) or none
// (TCP), and every port of it, a name (of World.PortNames or
// UnknownPortName), or a number (of World.PortNumbers or
// UnknownPortNumber), sometimes with an endPort (the port itself, a little
// or a lot above, or 65535).
func (g *Gen) Ports() []networkingv1.NetworkPolicyPort {
	switch x := g.R.Float64(); {
	case x < 0.3:
		return nil
	case x < 0.38:
		return []networkingv1.NetworkPolicyPort{}
	}
	var out []networkingv1.NetworkPolicyPort
	for range 1 + g.R.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if g.Chance(0.75) {
			proto := Pick(g.R, protocols)
			p.Protocol = &proto
		}
		switch x := g.R.Float64(); {
		case x < 0.15:
			// every port of the protocol
		case x < 0.45 || len(g.World.PortNumbers) == 0:
			name := UnknownPortName
			if n := len(g.World.PortNames); n > 0 && g.R.IntN(n+1) < n {
				name = Pick(g.R, g.World.PortNames)
			}
			v := intstr.FromString(name)
			p.Port = &v
		default:
			n := Pick(g.R, g.World.PortNumbers)
			if g.Chance(0.1) {
				n = UnknownPortNumber
			}
			v := intstr.FromInt32(n)
			p.Port = &v
			if g.Chance(0.35) {
				e := min(n+Pick(g.R, []int32{0, 1, 5, 100, 1000, 65535}), 65535)
				p.EndPort = &e
			}
		}
		out = append(out, p)
	}
	return out
}

// Policy draws a policy named namespace/name: a pod selector, policy types
// missing, Ingress, Egress or both (in either order), and ingress and
// egress rules each missing, empty or one to three rules of Peers and
// Ports.
func (g *Gen) Policy(namespace, name string) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
	}
	np.Spec.PodSelector = *g.PodSelector()
	in, eg := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	switch g.R.IntN(6) {
	case 0, 1:
		// missing: Ingress, plus Egress when there are egress rules
	case 2:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{in}
	case 3:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{eg}
	case 4:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{in, eg}
	case 5:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{eg, in}
	}
	switch x := g.R.Float64(); {
	case x < 0.2:
	case x < 0.3:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
	default:
		for range 1 + g.R.IntN(3) {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.Peers(), Ports: g.Ports()})
		}
	}
	switch x := g.R.Float64(); {
	case x < 0.35:
	case x < 0.45:
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
	default:
		for range 1 + g.R.IntN(3) {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.Peers(), Ports: g.Ports()})
		}
	}
	return np
}

// Addrs returns the union of address lists, sorted and without duplicates:
// a convenient World.Addrs.
func Addrs(lists ...[]netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

// RuleParts returns the peers and the ports of every rule of np, ingress
// rules first.
func RuleParts(np *networkingv1.NetworkPolicy) (peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) {
	for _, r := range np.Spec.Ingress {
		peers, ports = append(peers, r.From...), append(ports, r.Ports...)
	}
	for _, r := range np.Spec.Egress {
		peers, ports = append(peers, r.To...), append(ports, r.Ports...)
	}
	return peers, ports
}
