//go:build cluster

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ztctl runs ztctl flows on the host with a kubeconfig and no agent socket,
// so it reaches the agents through the API server (port-forward).
func (e *e2e) ztctlFlows(kubeconfig string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args = append([]string{"flows", "--kubeconfig", kubeconfig,
		"--socket", filepath.Join(e.t.TempDir(), "no-agent.sock")}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(C.Bin, "ztctl"), args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	return out.String(), stderr.String(), err
}

// kubeconfigFor writes a kubeconfig for a ServiceAccount token, against
// the admin kubeconfig's cluster.
func (e *e2e) kubeconfigFor(ns, sa string) string {
	e.t.Helper()
	server := e.must("", "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
	ca := e.must("", "config", "view", "--minify", "--raw", "-o", "jsonpath={.clusters[0].cluster.certificate-authority}")
	token := strings.TrimSpace(e.must("", "-n", ns, "create", "token", sa, "--duration=10m"))
	path := filepath.Join(e.t.TempDir(), sa+".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: %q, certificate-authority: %q}
users:
- name: %s
  user: {token: %q}
contexts:
- name: c
  context: {cluster: c, user: %s}
current-context: c
`, server, ca, sa, token, sa)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// serviceAccount creates a ServiceAccount in ns bound, in zt-system, to a
// Role (removed at cleanup; the account goes with ns).
func (e *e2e) serviceAccount(ns, name, role string) {
	e.t.Helper()
	binding := name + "-" + e.tag
	e.apply(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: %[4]s, namespace: zt-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: %[3]s}
subjects:
- {kind: ServiceAccount, name: %[2]s, namespace: %[1]s}
`, ns, name, role, binding))
	e.t.Cleanup(func() {
		if _, err := e.kubectl("", "-n", "zt-system", "delete", "rolebinding", binding, "--ignore-not-found"); err != nil {
			e.t.Errorf("cleanup: %v", err)
		}
	})
}

type e2eFlow struct {
	Time            time.Time
	Verdict, Reason string
	Src, Dst        struct{ Namespace, Pod string }
	Policies        []string
}

// TestE2EFlows: `ztctl flows` on the host, through a real port-forward to
// the agent, shows the denied connection with its policy; a user bound to
// zt-flows-reader reads it too; a user who may read pods but lacks
// pods/portforward is refused, saying so.
func TestE2EFlows(t *testing.T) {
	e := newE2E(t)
	w := newE2EWorld(e)
	w.isolate(e)
	start := time.Now()
	e.expect("isolated server", e2eAllow(w.cliA, w.srv), e2eDeny(w.cliB, w.srv))
	// The two policies of isolate are two watch events: the agent may
	// enforce deny-srv alone for a moment, and drop cliA's first attempt
	// as the API then said. Once expect has seen both in force, nothing
	// of cliA's is dropped.
	settled := time.Now()

	find := func(kubeconfig string) ([]e2eFlow, error) {
		out, stderr, err := e.ztctlFlows(kubeconfig, "-n", w.a, "--verdict", "dropped", "-o", "jsonl",
			"--since", start.Add(-time.Second).UTC().Format(time.RFC3339))
		if err != nil {
			return nil, fmt.Errorf("ztctl flows: %w: %s", err, stderr)
		}
		var hits []e2eFlow
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var f e2eFlow
			if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
				return nil, fmt.Errorf("ztctl flows line %q: %w", sc.Text(), err)
			}
			if f.Time.IsZero() {
				return nil, fmt.Errorf("ztctl flows line without its time: %s", sc.Text())
			}
			if f.Src.Namespace == w.b && f.Src.Pod == w.cliB.name && f.Dst.Namespace == w.a && f.Dst.Pod == w.srv.name {
				hits = append(hits, f)
			}
			if f.Src.Pod == w.cliA.name && f.Src.Namespace == w.a && !f.Time.Before(settled) {
				return nil, fmt.Errorf("an allowed connection is reported dropped after both policies were in force: %s", sc.Text())
			}
		}
		if len(hits) == 0 {
			return nil, fmt.Errorf("no drop %s -> %s among:\n%s", w.cliB, w.srv, out)
		}
		return hits, nil
	}
	check := func(who, kubeconfig string) {
		t.Helper()
		var hits []e2eFlow
		var err error
		for i := 0; i < 10; i++ { // the journal may lag a moment
			if hits, err = find(kubeconfig); err == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		f := hits[0]
		if f.Verdict != "drop" || f.Reason != "policy-denied" {
			t.Errorf("%s: drop reported as verdict %q reason %q, want drop/policy-denied", who, f.Verdict, f.Reason)
		}
		want := w.a + "/" + w.denySrv
		if !strings.Contains(strings.Join(f.Policies, ","), want) {
			t.Errorf("%s: drop names policies %v, want %s among them", who, f.Policies, want)
		}
		t.Logf("%s: %d records of %s -> %s, e.g. %+v", who, len(hits), w.cliB, w.srv, f)
	}
	check("admin", e.kubeconfig)

	// A user with exactly zt-flows-reader reads the same.
	e.serviceAccount(w.a, "flows-reader", "zt-flows-reader")
	check("zt-flows-reader", e.kubeconfigFor(w.a, "flows-reader"))

	// A user who may read the agent pods but not port-forward is refused.
	e.apply(fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: zte2e-pod-reader-%s, namespace: zt-system}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
`, e.tag))
	t.Cleanup(func() {
		if _, err := e.kubectl("", "-n", "zt-system", "delete", "role", "zte2e-pod-reader-"+e.tag, "--ignore-not-found"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	e.serviceAccount(w.a, "pod-reader", "zte2e-pod-reader-"+e.tag)
	kc := e.kubeconfigFor(w.a, "pod-reader")
	if _, err := e.kubectlAs(kc, "", "-n", "zt-system", "get", "pods"); err != nil {
		t.Fatalf("the pod reader cannot even list the agent pods (test setup): %v", err)
	}
	out, stderr, err := e.ztctlFlows(kc, "-n", w.a, "--verdict", "dropped", "-o", "jsonl")
	if err == nil {
		t.Fatalf("ztctl flows without pods/portforward succeeded:\n%s", out)
	}
	if !strings.Contains(stderr, "pods/portforward") || !strings.Contains(strings.ToLower(stderr), "forbidden") {
		t.Errorf("refusal does not say why (want forbidden and pods/portforward): %s", stderr)
	}
	if strings.Contains(out, w.cliB.name) {
		t.Errorf("a refused user saw records:\n%s", out)
	}
}
