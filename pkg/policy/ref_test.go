package policy

// A reference evaluator written directly from the NetworkPolicy objects,
// with no identities and no compilation: the obvious reading of
// networking.k8s.io/v1. The compiler must agree with it exactly.

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// refWorld is the plain state the reference reads.
type refWorld struct {
	Namespaces []Namespace
	Pods       []Pod
	Policies   []*networkingv1.NetworkPolicy
	HostIPs    []netip.Addr
	Opts       Options

	sels map[*metav1.LabelSelector]labels.Selector
	pols []*networkingv1.NetworkPolicy
}

// changed drops what the reference caches; call it after editing w.
func (w *refWorld) changed() { w.sels, w.pols = nil, nil }

func (w *refWorld) snapshot() Snapshot {
	return Snapshot{Namespaces: w.Namespaces, Pods: w.Pods, Policies: w.Policies, HostIPs: w.HostIPs}
}

// nsLabels returns a namespace's labels as the API server would have them
// (kubernetes.io/metadata.name always set), and whether it exists.
func (w *refWorld) nsLabels(name string) (map[string]string, bool) {
	for _, ns := range w.Namespaces {
		if ns.Name == name {
			l := map[string]string{}
			for k, v := range ns.Labels {
				l[k] = v
			}
			l[NamespaceNameLabel] = name
			return l, true
		}
	}
	return nil, false
}

// podAt returns the pod endpoint that owns ip: a pod that is not on the
// host network and lists ip. With duplicates, the first by namespace/name.
func (w *refWorld) podAt(ip netip.Addr) *Pod {
	var best *Pod
	for i := range w.Pods {
		p := &w.Pods[i]
		if p.HostNetwork || !slices.Contains(p.IPs, ip) {
			continue
		}
		if best == nil || comparePodKey(p.Key(), best.Key()) < 0 {
			best = p
		}
	}
	return best
}

func refSelector(s *metav1.LabelSelector) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		panic(err) // the generators only make valid selectors
	}
	return sel
}

// sel parses a selector once per world.
func (w *refWorld) sel(s *metav1.LabelSelector) labels.Selector {
	if w.sels == nil {
		w.sels = map[*metav1.LabelSelector]labels.Selector{}
	}
	if sel, ok := w.sels[s]; ok {
		return sel
	}
	sel := refSelector(s)
	w.sels[s] = sel
	return sel
}

// refTypes returns whether the policy applies to ingress and egress,
// after the API server's defaulting.
func refTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return
}

// refPeerMatches: does peer (an address, maybe a pod) match one peer of a
// rule in a policy of namespace polNS?
func (w *refWorld) refPeerMatches(peers []networkingv1.NetworkPolicyPeer, polNS string, ip netip.Addr, pod *Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			cidr := netip.MustParsePrefix(p.IPBlock.CIDR).Masked()
			if !cidr.Contains(ip) {
				continue
			}
			excluded := false
			for _, e := range p.IPBlock.Except {
				if netip.MustParsePrefix(e).Masked().Contains(ip) {
					excluded = true
				}
			}
			if !excluded {
				return true
			}
			continue
		}
		if pod == nil {
			continue // pod and namespace selectors select pods only
		}
		if p.NamespaceSelector == nil {
			if pod.Namespace != polNS {
				continue
			}
		} else {
			sel := w.sel(p.NamespaceSelector)
			nsl, ok := w.nsLabels(pod.Namespace)
			// A namespace the compiler has not seen has no labels; only the
			// selector of all namespaces matches it.
			if !ok && !sel.Empty() {
				continue
			}
			if ok && !sel.Matches(labels.Set(nsl)) {
				continue
			}
		}
		if p.PodSelector != nil && !w.sel(p.PodSelector).Matches(labels.Set(pod.Labels)) {
			continue
		}
		return true
	}
	return false
}

// refPortMatches: does (proto, port) to destination pod dst (nil: not a
// pod) match the rule's ports?
func refPortMatches(ports []networkingv1.NetworkPolicyPort, dst *Pod, proto Protocol, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if protoName(proto) != string(pp) {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int:
			end := p.Port.IntVal
			if p.EndPort != nil {
				end = *p.EndPort
			}
			if int32(port) >= p.Port.IntVal && int32(port) <= end {
				return true
			}
		default:
			if dst == nil {
				continue
			}
			// The first container port of that name and protocol.
			for _, cp := range dst.Ports {
				if cp.Name == p.Port.StrVal && cp.Protocol == proto {
					if cp.Port == port {
						return true
					}
					break
				}
			}
		}
	}
	return false
}

func protoName(p Protocol) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return "proto-" + p.String()
}

// refPolicies returns the policies in force: the user's plus the ones
// cluster-default-deny stands for, written out by hand.
func (w *refWorld) refPolicies() []*networkingv1.NetworkPolicy {
	if w.pols == nil {
		w.pols = w.makeRefPolicies()
	}
	return w.pols
}

func (w *refWorld) makeRefPolicies() []*networkingv1.NetworkPolicy {
	out := append([]*networkingv1.NetworkPolicy{}, w.Policies...)
	d := w.Opts.ClusterDefaultDeny
	if d == nil {
		return out
	}
	for _, ns := range w.Namespaces {
		if slices.Contains(d.ExemptNamespaces, ns.Name) {
			continue
		}
		deny := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "ref-deny"},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			},
		}
		for _, a := range d.Allow {
			deny.Spec.Egress = append(deny.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{a.To}, Ports: a.Ports})
			// Ingress to the allowed pods from every pod, where they live
			// in a namespace To selects.
			if a.To.NamespaceSelector == nil || a.To.IPBlock != nil {
				continue
			}
			nsl, _ := w.nsLabels(ns.Name)
			if !refSelector(a.To.NamespaceSelector).Matches(labels.Set(nsl)) {
				continue
			}
			sel := metav1.LabelSelector{}
			if a.To.PodSelector != nil {
				sel = *a.To.PodSelector
			}
			out = append(out, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "ref-allow-" + a.Name},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: sel,
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
						Ports: a.Ports,
					}},
				},
			})
		}
		out = append(out, deny)
	}
	return out
}

// refAllowed decides a packet from src to dst the obvious way.
func (w *refWorld) refAllowed(src, dst netip.Addr, proto Protocol, port uint16) bool {
	srcPod, dstPod := w.podAt(src), w.podAt(dst)
	if srcPod != nil && dstPod != nil && srcPod.Key() == dstPod.Key() {
		return true
	}
	pols := w.refPolicies()
	isHost := func(ip netip.Addr) bool { return srcPod == nil && slices.Contains(w.HostIPs, ip) }
	// Egress of the source pod.
	if srcPod != nil {
		isolated, allowed := false, false
		for _, np := range pols {
			if np.Namespace != srcPod.Namespace || !w.sel(&np.Spec.PodSelector).Matches(labels.Set(srcPod.Labels)) {
				continue
			}
			if _, eg := refTypes(np); !eg {
				continue
			}
			isolated = true
			for _, r := range np.Spec.Egress {
				if w.refPeerMatches(r.To, np.Namespace, dst, dstPod) && refPortMatches(r.Ports, dstPod, proto, port) {
					allowed = true
				}
			}
		}
		if isolated && !allowed {
			return false
		}
	}
	// Ingress of the destination pod.
	if dstPod != nil {
		isolated, allowed := false, false
		for _, np := range pols {
			if np.Namespace != dstPod.Namespace || !w.sel(&np.Spec.PodSelector).Matches(labels.Set(dstPod.Labels)) {
				continue
			}
			if in, _ := refTypes(np); !in {
				continue
			}
			isolated = true
			for _, r := range np.Spec.Ingress {
				if w.refPeerMatches(r.From, np.Namespace, src, srcPod) && refPortMatches(r.Ports, dstPod, proto, port) {
					allowed = true
				}
			}
		}
		if isolated && !allowed && !(isHost(src) && !w.Opts.DenyFromHost) {
			return false
		}
	}
	return true
}

// probe is one (protocol, port) a test asks about.
type probe struct {
	Proto Protocol
	Port  uint16
}

func (p probe) String() string {
	return protoName(p.Proto) + "/" + strings.TrimSpace(itoa(int(p.Port)))
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}
