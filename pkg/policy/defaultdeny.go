package policy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// DefaultDeny configures cluster-default-deny, zt's zero-trust option
// beyond the standard: every pod outside ExemptNamespaces is isolated for
// ingress and egress, as if each namespace held a deny-all NetworkPolicy,
// and only NetworkPolicies and the Allow list open traffic.
//
// It is carried out with NetworkPolicies zt makes itself, so it has exactly
// the semantics of the standard and every drop names the policy behind it:
//
//	zt:cluster-default-deny        in every non-exempt namespace: selects all
//	                               pods, both policy types, egress rules from Allow
//	zt:cluster-default-allow-NAME  in each non-exempt namespace that Allow[i].To
//	                               selects: ingress from every pod to those pods
//
// The names contain a colon, which Kubernetes names cannot, so they never
// collide with a user's policy.
type DefaultDeny struct {
	// ExemptNamespaces are not isolated by cluster-default-deny.
	ExemptNamespaces []string `json:"exemptNamespaces"`
	// Allow lists traffic every pod may send despite the default deny.
	Allow []DefaultDenyAllow `json:"allow"`
}

// DefaultDenyAllow lets every pod reach the pods To selects on Ports.
type DefaultDenyAllow struct {
	Name  string                           `json:"name"`
	To    networkingv1.NetworkPolicyPeer   `json:"to"`
	Ports []networkingv1.NetworkPolicyPort `json:"ports,omitempty"`
}

// Names of the policies cluster-default-deny makes.
const (
	DefaultDenyPolicyName       = "zt:cluster-default-deny"
	DefaultDenyAllowPolicyLabel = "zt:cluster-default-allow-"
)

// DefaultExemptions is the default configuration of cluster-default-deny:
// kube-system is exempt, and every pod may resolve names through the
// cluster DNS (pods labelled k8s-app=kube-dns in kube-system, port 53 UDP
// and TCP).
func DefaultExemptions() *DefaultDeny {
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	dns := intstr.FromInt32(53)
	return &DefaultDeny{
		ExemptNamespaces: []string{"kube-system"},
		Allow: []DefaultDenyAllow{{
			Name: "dns",
			To: networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceNameLabel: "kube-system"}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
			},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}},
		}},
	}
}

// Validate checks the configuration by compiling the policies it makes.
func (d *DefaultDeny) Validate() error {
	seen := map[string]bool{}
	for i, a := range d.Allow {
		if a.Name == "" || seen[a.Name] {
			return fmt.Errorf("cluster-default-deny allow[%d]: name %q must be set and unique", i, a.Name)
		}
		seen[a.Name] = true
	}
	for _, np := range d.policies("validate", map[string]string{NamespaceNameLabel: "validate"}) {
		if _, err := compile(np, func(RuleRef) RuleID { return 0 }); err != nil {
			return fmt.Errorf("cluster-default-deny: %w", err)
		}
	}
	return nil
}

// policies returns the policies cluster-default-deny puts in namespace ns
// with labels nsLabels.
func (d *DefaultDeny) policies(ns string, nsLabels map[string]string) []*networkingv1.NetworkPolicy {
	for _, e := range d.ExemptNamespaces {
		if e == ns {
			return nil
		}
	}
	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: DefaultDenyPolicyName},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{},
		},
	}
	out := []*networkingv1.NetworkPolicy{deny}
	for _, a := range d.Allow {
		deny.Spec.Egress = append(deny.Spec.Egress, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{a.To}, Ports: a.Ports,
		})
		// Ingress to the allowed pods, where they are isolated too.
		if a.To.IPBlock != nil || !peerSelectsNamespace(a.To, ns, nsLabels) {
			continue
		}
		podSel := metav1.LabelSelector{}
		if a.To.PodSelector != nil {
			podSel = *a.To.PodSelector
		}
		out = append(out, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: DefaultDenyAllowPolicyLabel + a.Name},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: podSel,
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
					Ports: a.Ports,
				}},
			},
		})
	}
	return out
}

func peerSelectsNamespace(p networkingv1.NetworkPolicyPeer, ns string, nsLabels map[string]string) bool {
	if p.NamespaceSelector == nil {
		return false // a peer without namespaceSelector means the policy's own namespace
	}
	sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
	if err != nil {
		return false
	}
	return sel.Matches(labelsSet(nsLabels))
}

// syncDefaultDeny (re)creates the cluster-default-deny policies of one
// namespace after it or the configuration changed.
func (c *Compiler) syncDefaultDeny(ns string) {
	d := c.opts.ClusterDefaultDeny
	if d == nil {
		return
	}
	want := map[PolicyKey]*networkingv1.NetworkPolicy{}
	if st := c.namespaces[ns]; st != nil && st.labels != nil {
		for _, np := range d.policies(ns, st.labels) {
			want[PolicyKey{Namespace: ns, Name: np.Name}] = np
		}
	}
	for _, key := range sortedKeys(c.nsPolicies[ns], comparePolicyKey) {
		if ps := c.policies[key]; ps.cp.synthetic {
			if _, ok := want[key]; !ok {
				if old := c.removePolicy(key); old != nil {
					c.freeRuleIDs(old, nil)
				}
				delete(c.synthetic, key)
			}
		}
	}
	for _, key := range sortedKeys(want, comparePolicyKey) {
		// Unchanged (the namespace's labels changed in a way that leaves
		// them be): keep it, and the endpoints it selects.
		if ps := c.policies[key]; ps != nil && ps.cp.synthetic && c.synthetic[key] != nil &&
			equality.Semantic.DeepEqual(c.synthetic[key].Spec, want[key].Spec) {
			continue
		}
		c.synthetic[key] = want[key]
		_ = c.setPolicy(key, want[key], true) // validated up front
	}
}
