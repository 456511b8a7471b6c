package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ztnet/zt/pkg/identity"
)

// ErrInvalid marks a NetworkPolicy the compiler rejects.
var ErrInvalid = errors.New("invalid networkpolicy")

// fieldError names the offending field, as the API server would.
func fieldError(path, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, path, fmt.Sprintf(format, args...))
}

// compiledPolicy is a validated, defaulted NetworkPolicy with its selectors
// parsed once.
type compiledPolicy struct {
	key    PolicyKey
	podSel labels.Selector
	types  [2]bool // indexed by Direction
	rules  [2][]compiledRule
	cidrs  []netip.Prefix // every prefix the policy references
	// podCIDRs are the prefixes of the ipBlock peers of its rules that
	// resolve pods (compiledRule.resolvesPods): pod identities carry
	// those holding their address.
	podCIDRs []netip.Prefix
	named    []namedRef // egress named ports it references
	// volatileKeys are the volatile pod label keys its peers' pod selectors
	// test: a volatile label is part of a pod identity only while some
	// policy tests it.
	volatileKeys []string
	// synthetic marks policies zt makes itself (cluster-default-deny).
	synthetic bool
}

// volatileLabels are the pod labels that controllers set to a value of
// their own per rollout, revision, pod or run: a Deployment's
// pod-template-hash, a StatefulSet's or DaemonSet's revision hash and
// StatefulSet pod names and indexes, a Job's uid, name and completion
// index (a CronJob's jobs are named per run). In a pod identity they would
// make a new identity per rollout (and rewrite every rule naming the app,
// on every node) or per pod, so a volatile label is in a pod's identity
// only while some peer pod selector tests its key; no policy tells apart
// pods that differ only in labels no selector tests, so verdicts are the
// same. Other labels are always in it: a policy that starts testing one
// costs no relabelling.
var volatileLabels = map[string]bool{
	"pod-template-hash":                        true,
	"controller-revision-hash":                 true,
	"statefulset.kubernetes.io/pod-name":       true,
	"apps.kubernetes.io/pod-index":             true,
	"controller-uid":                           true,
	"job-name":                                 true,
	"batch.kubernetes.io/controller-uid":       true,
	"batch.kubernetes.io/job-name":             true,
	"batch.kubernetes.io/job-completion-index": true,
}

type compiledRule struct {
	id       RuleID
	allPeers bool
	// resolvesPods: an egress rule with a named port, which resolves on
	// the destination pod, so its ipBlock peers admit pods by their pod
	// identity (carrying the prefixes holding their address) rather than
	// by the prefix identity of their address (bpf/zt_abi.h, "Prefix
	// identity of an address"), which no named port resolves on.
	resolvesPods bool
	peers        []compiledPeer
	// ports is empty when the rule allows every port and protocol.
	ports []compiledPort
}

type compiledPeer struct {
	// podSel nil: every pod of the selected namespaces.
	podSel labels.Selector
	// nsSel nil: only the policy's own namespace.
	nsSel labels.Selector
	// ipBlock peers set cidr; except are inside it.
	ipBlock bool
	cidr    netip.Prefix
	except  []netip.Prefix
}

type compiledPort struct {
	proto   Protocol
	port    uint16 // 0: every port of proto
	endPort uint16
	name    string // named port, resolved per destination pod
}

type namedRef struct {
	name  string
	proto Protocol
}

// DefaultPolicy applies the API server's defaults to a NetworkPolicy that
// did not pass through one: policyTypes (Ingress, plus Egress when egress
// rules exist) and protocol TCP on ports. It mirrors
// SetDefaults_NetworkPolicy and SetDefaults_NetworkPolicyPort of
// k8s.io/kubernetes/pkg/apis/networking/v1. It returns a defaulted copy.
func DefaultPolicy(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	np = np.DeepCopy()
	if len(np.Spec.PolicyTypes) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) != 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
	defaultPorts := func(ports []networkingv1.NetworkPolicyPort) {
		for i := range ports {
			if ports[i].Protocol == nil {
				tcp := corev1.ProtocolTCP
				ports[i].Protocol = &tcp
			}
		}
	}
	for i := range np.Spec.Ingress {
		defaultPorts(np.Spec.Ingress[i].Ports)
	}
	for i := range np.Spec.Egress {
		defaultPorts(np.Spec.Egress[i].Ports)
	}
	return np
}

// compile validates and defaults np. ids hands out rule numbers.
func compile(np *networkingv1.NetworkPolicy, ruleID func(RuleRef) RuleID) (*compiledPolicy, error) {
	key := PolicyKey{Namespace: np.Namespace, Name: np.Name}
	if np.Name == "" {
		return nil, fieldError("metadata.name", "required")
	}
	if np.Namespace == "" {
		return nil, fieldError("metadata.namespace", "required")
	}
	np = DefaultPolicy(np)
	cp := &compiledPolicy{key: key}
	var err error
	if cp.podSel, err = selector("spec.podSelector", &np.Spec.PodSelector); err != nil {
		return nil, err
	}
	// As the API server validates: at most two entries, each Ingress or
	// Egress. A repeated value passes its validation, so it is accepted
	// here too (rejecting it would leave an admitted policy unenforced).
	if len(np.Spec.PolicyTypes) > 2 {
		return nil, fieldError("spec.policyTypes", "may not specify more than two policyTypes")
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			cp.types[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			cp.types[Egress] = true
		default:
			return nil, fieldError(fmt.Sprintf("spec.policyTypes[%d]", i), "unsupported value %q (want Ingress or Egress)", t)
		}
	}
	for i, r := range np.Spec.Ingress {
		path := fmt.Sprintf("spec.ingress[%d]", i)
		cr, err := cp.compileRule(path, r.From, "from", r.Ports, Ingress)
		if err != nil {
			return nil, err
		}
		cr.id = ruleID(RuleRef{Policy: key, Direction: Ingress, Index: i})
		cp.rules[Ingress] = append(cp.rules[Ingress], cr)
	}
	for i, r := range np.Spec.Egress {
		path := fmt.Sprintf("spec.egress[%d]", i)
		cr, err := cp.compileRule(path, r.To, "to", r.Ports, Egress)
		if err != nil {
			return nil, err
		}
		cr.id = ruleID(RuleRef{Policy: key, Direction: Egress, Index: i})
		cp.rules[Egress] = append(cp.rules[Egress], cr)
	}
	slices.SortFunc(cp.cidrs, identity.ComparePrefix)
	cp.cidrs = slices.Compact(cp.cidrs)
	slices.SortFunc(cp.podCIDRs, identity.ComparePrefix)
	cp.podCIDRs = slices.Compact(cp.podCIDRs)
	slices.SortFunc(cp.named, func(a, b namedRef) int {
		return identity.CompareNamedPort(identity.NamedPort{Name: a.name, Protocol: a.proto}, identity.NamedPort{Name: b.name, Protocol: b.proto})
	})
	cp.named = slices.Compact(cp.named)
	slices.Sort(cp.volatileKeys)
	cp.volatileKeys = slices.Compact(cp.volatileKeys)
	return cp, nil
}

func selector(path string, s *metav1.LabelSelector) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil, fieldError(path, "%v", err)
	}
	return sel, nil
}

func (cp *compiledPolicy) compileRule(path string, peers []networkingv1.NetworkPolicyPeer, peerField string, ports []networkingv1.NetworkPolicyPort, dir Direction) (compiledRule, error) {
	var cr compiledRule
	// A missing or empty from/to allows every peer.
	cr.allPeers = len(peers) == 0
	for j, p := range peers {
		ppath := fmt.Sprintf("%s.%s[%d]", path, peerField, j)
		cpeer, err := cp.compilePeer(ppath, p)
		if err != nil {
			return cr, err
		}
		cr.peers = append(cr.peers, cpeer)
	}
	for j, p := range ports {
		ppath := fmt.Sprintf("%s.ports[%d]", path, j)
		cport, err := compilePort(ppath, p)
		if err != nil {
			return cr, err
		}
		if cport.name != "" && dir == Egress {
			cp.named = append(cp.named, namedRef{cport.name, cport.proto})
			cr.resolvesPods = true
		}
		cr.ports = append(cr.ports, cport)
	}
	if cr.resolvesPods {
		for _, p := range cr.peers {
			if p.ipBlock {
				cp.podCIDRs = append(cp.podCIDRs, p.cidr)
				cp.podCIDRs = append(cp.podCIDRs, p.except...)
			}
		}
	}
	return cr, nil
}

func (cp *compiledPolicy) compilePeer(path string, p networkingv1.NetworkPolicyPeer) (compiledPeer, error) {
	var out compiledPeer
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return out, fieldError(path, "may not specify ipBlock together with podSelector or namespaceSelector")
		}
		cidr, err := parseCIDR(path+".ipBlock.cidr", p.IPBlock.CIDR)
		if err != nil {
			return out, err
		}
		out.ipBlock, out.cidr = true, cidr
		cp.cidrs = append(cp.cidrs, cidr)
		for k, e := range p.IPBlock.Except {
			epath := fmt.Sprintf("%s.ipBlock.except[%d]", path, k)
			ex, err := parseCIDR(epath, e)
			if err != nil {
				return out, err
			}
			if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
				return out, fieldError(epath, "%s must be a strict subset of cidr %s", ex, cidr)
			}
			out.except = append(out.except, ex)
			cp.cidrs = append(cp.cidrs, ex)
		}
		return out, nil
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return out, fieldError(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
	}
	var err error
	if p.PodSelector != nil {
		if out.podSel, err = selector(path+".podSelector", p.PodSelector); err != nil {
			return out, err
		}
		reqs, _ := out.podSel.Requirements()
		for _, r := range reqs {
			if volatileLabels[r.Key()] {
				cp.volatileKeys = append(cp.volatileKeys, r.Key())
			}
		}
	}
	if p.NamespaceSelector != nil {
		if out.nsSel, err = selector(path+".namespaceSelector", p.NamespaceSelector); err != nil {
			return out, err
		}
	}
	return out, nil
}

func parseCIDR(path, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, fieldError(path, "required")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fieldError(path, "invalid CIDR %q: %v", s, err)
	}
	// The API server accepts a CIDR with host bits set; it means the
	// network that contains it.
	return p.Masked(), nil
}

func compilePort(path string, p networkingv1.NetworkPolicyPort) (compiledPort, error) {
	var out compiledPort
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	var err error
	if out.proto, err = identity.ParseProtocol(string(proto)); err != nil {
		return out, fieldError(path+".protocol", "%v", err)
	}
	if p.Port == nil {
		if p.EndPort != nil {
			return out, fieldError(path+".endPort", "may not be specified when port is not specified")
		}
		return out, nil // every port of the protocol
	}
	if p.Port.Type == intstr.String {
		name := p.Port.StrVal
		if errs := validation.IsValidPortName(name); len(errs) != 0 {
			return out, fieldError(path+".port", "invalid port name %q: %s", name, errs[0])
		}
		if p.EndPort != nil {
			return out, fieldError(path+".endPort", "may not be specified when port is a named port")
		}
		out.name = name
		return out, nil
	}
	n := p.Port.IntVal
	if errs := validation.IsValidPortNum(int(n)); len(errs) != 0 {
		return out, fieldError(path+".port", "%d: %s", n, errs[0])
	}
	out.port, out.endPort = uint16(n), uint16(n)
	if p.EndPort != nil {
		e := *p.EndPort
		if errs := validation.IsValidPortNum(int(e)); len(errs) != 0 {
			return out, fieldError(path+".endPort", "%d: %s", e, errs[0])
		}
		if e < n {
			return out, fieldError(path+".endPort", "%d must be greater than or equal to port %d", e, n)
		}
		out.endPort = uint16(e)
	}
	return out, nil
}
