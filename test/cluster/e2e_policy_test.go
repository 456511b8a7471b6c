//go:build cluster

package cluster

import (
	"fmt"
	"testing"
)

// e2eWorld: a server and a client in namespace a, a client in namespace b
// and one in namespace c, every one a Deployment of ztnettest.
type e2eWorld struct {
	a, b, c        string // namespaces
	srv, cliA      e2ePod
	cliB, cliC     e2ePod
	denySrv, allow string // policy names in a
}

func newE2EWorld(e *e2e) *e2eWorld {
	e.t.Helper()
	w := &e2eWorld{
		a: e.namespace("zte2e-a", map[string]string{"zt-e2e": e.tag}),
		b: e.namespace("zte2e-b", map[string]string{"zt-e2e": e.tag}),
		c: e.namespace("zte2e-c", map[string]string{"zt-e2e": e.tag}),
	}
	e.deployment(w.a, "srv")
	e.deployment(w.a, "cli")
	e.deployment(w.b, "cli")
	e.deployment(w.c, "cli")
	w.srv, w.cliA = e.pod(w.a, "srv"), e.pod(w.a, "cli")
	w.cliB, w.cliC = e.pod(w.b, "cli"), e.pod(w.c, "cli")
	return w
}

// isolate applies, in namespace a, default-deny ingress for the server and
// an allow from its own namespace's clients and from namespaces labelled
// zt-e2e-allow=<tag>.
func (w *e2eWorld) isolate(e *e2e) {
	e.t.Helper()
	w.denySrv, w.allow = "deny-srv", "allow-cli"
	e.apply(fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-srv, namespace: %[1]s}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-cli, namespace: %[1]s}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: cli}}
    - namespaceSelector: {matchLabels: {zt-e2e-allow: "%[2]s"}}
      podSelector: {matchLabels: {app: cli}}
    ports:
    - {protocol: TCP, port: 8080}
`, w.a, e.tag))
}

// TestE2EPolicies: NetworkPolicies applied with kubectl hold for real
// connections; they follow pods restarted with new IPs (as source and as
// destination) and namespace labels turning a namespaceSelector on and off.
func TestE2EPolicies(t *testing.T) {
	e := newE2E(t)
	w := newE2EWorld(e)

	e.expect("no policy", e2eAllow(w.cliA, w.srv), e2eAllow(w.cliB, w.srv), e2eAllow(w.cliC, w.srv), e2eAllow(w.srv, w.cliB))

	w.isolate(e)
	e.expect("isolated server", e2eAllow(w.cliA, w.srv), e2eDeny(w.cliB, w.srv), e2eDeny(w.cliC, w.srv),
		// not isolated: the server's own egress and other pods' ingress
		e2eAllow(w.srv, w.cliB), e2eAllow(w.cliB, w.cliC))

	// The destination restarts with a new IP.
	old := w.srv
	w.srv = e.restart(w.srv, "srv")
	t.Logf("server %s restarted as %s", old, w.srv)
	e.expect("server restarted", e2eAllow(w.cliA, w.srv), e2eDeny(w.cliB, w.srv), e2eDeny(w.cliC, w.srv))

	// An allowed source and a denied source restart with new IPs.
	w.cliA = e.restart(w.cliA, "cli")
	w.cliB = e.restart(w.cliB, "cli")
	t.Logf("clients restarted as %s and %s", w.cliA, w.cliB)
	e.expect("clients restarted", e2eAllow(w.cliA, w.srv), e2eDeny(w.cliB, w.srv), e2eDeny(w.cliC, w.srv))

	// Namespace labels turn the namespaceSelector allow on and off.
	e.must("", "label", "namespace", w.b, "zt-e2e-allow="+e.tag)
	e.expect("namespace b labelled", e2eAllow(w.cliB, w.srv), e2eDeny(w.cliC, w.srv), e2eAllow(w.cliA, w.srv))
	e.must("", "label", "namespace", w.b, "zt-e2e-allow-")
	e.expect("namespace b unlabelled", e2eDeny(w.cliB, w.srv), e2eDeny(w.cliC, w.srv), e2eAllow(w.cliA, w.srv))

	// Deleting the policies opens the server again.
	e.must("", "-n", w.a, "delete", "networkpolicy", w.denySrv, w.allow)
	e.expect("policies deleted", e2eAllow(w.cliB, w.srv), e2eAllow(w.cliC, w.srv))
}
