//go:build cluster

package cluster

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke: zt installed with `kubectl apply -k hack/cluster/zt`
// becomes Ready unprivileged, and a default-deny NetworkPolicy applied with
// kubectl blocks a connection between two namespaces that an allow reopens.
func TestSmoke(t *testing.T) {
	c := C
	t0 := time.Now()
	if out, err := c.Kubectl("apply", "-k", filepath.Join(c.Repo, "hack", "cluster", "zt")); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.WaitRollout(t, "zt-system", "daemonset/zt-agent", 3*time.Minute)
	phase("zt DaemonSet Ready", t0)

	// Ready with the base's securityContext: no privileged container.
	priv, err := c.Kubectl("-n", "zt-system", "get", "pods", "-l", "app.kubernetes.io/name=zt-agent",
		"-o", `jsonpath={range .items[*].spec.containers[*]}{.securityContext.privileged}{","}{.image}{"\n"}{end}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Fields(priv) {
		p, img, _ := strings.Cut(l, ",")
		if p == "true" || img != "zt.local/zt-agent:dev" {
			t.Errorf("agent container privileged=%q image=%q, want not privileged and zt.local/zt-agent:dev", p, img)
		}
	}
	if strings.TrimSpace(priv) == "" {
		t.Fatal("no zt-agent pod")
	}

	t0 = time.Now()
	nsA := c.Namespace(t, "ztsmoke-a")
	nsB := c.Namespace(t, "ztsmoke-b")
	client := c.ServerDeployment(t, nsA, "client")
	server := c.ServerDeployment(t, nsB, "server")
	phase("two test Deployments Ready", t0)
	addr := server.IP + ":8080"

	t0 = time.Now()
	Eventually(t, 30*time.Second, "connection before any policy", func() error {
		got, err := c.Connect(nsA, client.Name, addr)
		if err != nil {
			return err
		}
		if got != server.Name {
			return fmt.Errorf("answer %q, want the server's hostname %q", got, server.Name)
		}
		return nil
	})
	phase("connection passes", t0)

	t0 = time.Now()
	c.Apply(t, fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: %s}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`, nsB))
	Eventually(t, 30*time.Second, "connection blocked by default-deny", func() error {
		if got, err := c.Connect(nsA, client.Name, addr); err == nil {
			return fmt.Errorf("connected (answer %q)", got)
		}
		return nil
	})
	// Still blocked: a second try is not a fluke.
	if got, err := c.Connect(nsA, client.Name, addr); err == nil {
		t.Fatalf("connected again under default-deny (answer %q)", got)
	}
	phase("default-deny blocks", t0)

	t0 = time.Now()
	c.Apply(t, fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-a, namespace: %s}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: %s}}
    ports: [{port: 8080, protocol: TCP}]
`, nsB, nsA))
	Eventually(t, 30*time.Second, "connection allowed again", func() error {
		got, err := c.Connect(nsA, client.Name, addr)
		if err != nil {
			return err
		}
		if got != server.Name {
			return fmt.Errorf("answer %q, want %q", got, server.Name)
		}
		return nil
	})
	phase("allow reopens", t0)

	// The reverse direction was never isolated: b's server reaches a's.
	if _, err := c.Connect(nsB, server.Name, client.IP+":8080"); err != nil {
		t.Errorf("b -> a (no policy in a): %v", err)
	}
}
