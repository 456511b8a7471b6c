package benchworld

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// BulkPolicy is the i-th of the control-plane benchmark's bulk policies,
// in namespace ns selecting podSelector, over pods labelled group=g0 to
// g<groups-1> in namespaces labelled team=t0 to t2: ingress from a
// neighbouring group (pod selector) and from two more groups of one team's
// namespaces (combined selectors) on a named port and a UDP port range;
// egress to an ipBlock with an exception and to every pod. The agent's
// memory test compiles the same policies.
func BulkPolicy(i int, ns string, podSelector map[string]string, groups int) *networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	named := intstr.FromString("http")
	num := intstr.FromInt32(9090)
	end := int32(9100)
	group := func(k int) string { return fmt.Sprintf("g%d", (i+k)%groups) }
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np-%d", i), Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: podSelector},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": group(1)}}},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%3)}},
						PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
							Key: "group", Operator: metav1.LabelSelectorOpIn, Values: []string{group(2), group(3)}}}}},
				},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}, {Protocol: &udp, Port: &num, EndPort: &end}},
			}},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("100.64.%d.0/24", i%40), Except: []string{fmt.Sprintf("100.64.%d.128/25", i%40)}}},
					{NamespaceSelector: &metav1.LabelSelector{}},
				},
			}},
		},
	}
}
