//go:build cluster

package cluster

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// TestE2EService: egress policy holds for connections to a Service's
// ClusterIP, decided on the pod kube-proxy sends them to (as upstream
// NetworkPolicy requires): an egress allow to the server's pods reaches
// them through the ClusterIP, with the client's ingress isolated too (the
// answer comes back from the ClusterIP); an ipBlock over everything except
// the server blocks its ClusterIP, although the ipBlock covers the
// Service range; and deleting the policy opens it again.
func TestE2EService(t *testing.T) {
	e := newE2E(t)
	a := e.namespace("zte2e-svc-a", map[string]string{"zt-e2e": e.tag})
	b := e.namespace("zte2e-svc-b", map[string]string{"zt-e2e": e.tag})
	e.deployment(a, "srv")
	e.deployment(a, "cli")
	e.deployment(b, "other")
	e.apply(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: srv, namespace: %s}
spec:
  selector: {app: srv}
  ports:
  - {protocol: TCP, port: 8080, targetPort: http}
`, a))
	clusterIP := strings.TrimSpace(e.must("", "-n", a, "get", "service", "srv", "-o", "jsonpath={.spec.clusterIP}"))
	if _, err := netip.ParseAddr(clusterIP); err != nil {
		t.Fatalf("Service srv: ClusterIP %q: %v", clusterIP, err)
	}
	srv, cli, other := e.pod(a, "srv"), e.pod(a, "cli"), e.pod(b, "other")
	// The ClusterIP answers with the server pod's name.
	svc := e2ePod{ns: a, name: srv.name, ip: clusterIP}
	t.Logf("Service srv %s -> %s", clusterIP, srv)

	e.expect("no policy", e2eAllow(cli, svc), e2eAllow(cli, other))

	policy := func(egress string) string {
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cli-out, namespace: %s}
spec:
  podSelector: {matchLabels: {app: cli}}
  policyTypes: [Ingress, Egress]
  egress:
%s`, a, egress)
	}
	e.apply(policy(`  - to:
    - podSelector: {matchLabels: {app: srv}}
    ports:
    - {protocol: TCP, port: 8080}
`))
	e.expect("egress allowed to the server's pods", e2eAllow(cli, svc), e2eAllow(cli, srv), e2eDeny(cli, other))

	e.apply(policy(fmt.Sprintf(`  - to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: [%s/32]
`, srv.ip)))
	e.expect("ipBlock except the server", e2eDeny(cli, svc), e2eDeny(cli, srv), e2eAllow(cli, other))

	e.must("", "-n", a, "delete", "networkpolicy", "cli-out")
	e.expect("policy deleted", e2eAllow(cli, svc), e2eAllow(cli, other))
}
