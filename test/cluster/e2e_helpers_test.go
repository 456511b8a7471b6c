//go:build cluster

package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The end-to-end suite's own helpers (e2e_*), over the shared fixture C:
// namespaces with labels, Deployments of ServerImage whose pods the tests
// restart, and connections made with kubectl exec.

// e2e is one test's handle on the cluster.
type e2e struct {
	t          *testing.T
	kubeconfig string
	tag        string // unique per test: names of what it creates outside its namespaces
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	if C == nil {
		t.Fatal("no cluster: TestMain did not bring one up")
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	e := &e2e{t: t, kubeconfig: C.KubeconfigPath, tag: hex.EncodeToString(b)}
	e.ensureZT()
	return e
}

// kubectl runs kubectl with the admin kubeconfig (bounded by a minute).
func (e *e2e) kubectl(stdin string, args ...string) (string, error) {
	return e.kubectlAs(e.kubeconfig, stdin, args...)
}

func (e *e2e) kubectlAs(kubeconfig, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(C.Bin, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

func (e *e2e) must(stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.kubectl(stdin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *e2e) apply(yaml string) {
	e.t.Helper()
	C.Apply(e.t, yaml)
}

// ensureZT deploys zt (hack/cluster/zt) unless the DaemonSet is
// there, and waits until it is rolled out.
func (e *e2e) ensureZT() {
	e.t.Helper()
	if _, err := e.kubectl("", "-n", "zt-system", "get", "daemonset", "zt-agent"); err != nil {
		e.must("", "apply", "-k", filepath.Join(C.Repo, "hack", "cluster", "zt"))
	}
	C.WaitRollout(e.t, "zt-system", "daemonset/zt-agent", 3*time.Minute)
}

// namespace creates a unique namespace (C.Namespace) with labels.
func (e *e2e) namespace(prefix string, labels map[string]string) string {
	e.t.Helper()
	ns := C.Namespace(e.t, prefix)
	args := []string{"label", "namespace", ns}
	for k, v := range labels {
		args = append(args, k+"="+v)
	}
	e.must("", args...)
	return ns
}

// deployment runs one ztnettest server (port 8080) labelled app=<name>.
func (e *e2e) deployment(ns, name string) {
	e.t.Helper()
	e.apply(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[2]s
  namespace: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: %[2]s}
  template:
    metadata:
      labels: {app: %[2]s}
    spec:
      terminationGracePeriodSeconds: 1
      enableServiceLinks: false
      automountServiceAccountToken: false
      containers:
      - name: srv
        image: %[3]s
        imagePullPolicy: Never
        args: [serve, -listen, ":8080"]
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
`, ns, name, ServerImage))
}

// e2ePod is a running pod of a Deployment.
type e2ePod struct{ ns, name, ip string }

func (p e2ePod) String() string { return p.ns + "/" + p.name + "(" + p.ip + ")" }

// pod waits (bounded) for the one ready, not terminating pod with
// app=<app>, whose IP is not one of old.
func (e *e2e) pod(ns, app string, old ...string) e2ePod {
	e.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := e.kubectl("", "-n", ns, "get", "pods", "-l", "app="+app, "-o", "json")
		if err != nil {
			last = err.Error()
			time.Sleep(time.Second)
			continue
		}
		var list struct {
			Items []struct {
				Metadata struct {
					Name              string  `json:"name"`
					DeletionTimestamp *string `json:"deletionTimestamp"`
				} `json:"metadata"`
				Status struct {
					PodIP      string `json:"podIP"`
					Conditions []struct {
						Type, Status string
					} `json:"conditions"`
				} `json:"status"`
			} `json:"items"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			e.t.Fatal(err)
		}
		for _, it := range list.Items {
			ready := false
			for _, c := range it.Status.Conditions {
				ready = ready || (c.Type == "Ready" && c.Status == "True")
			}
			stale := false
			for _, o := range old {
				stale = stale || o == it.Status.PodIP
			}
			if ready && it.Metadata.DeletionTimestamp == nil && it.Status.PodIP != "" && !stale {
				return e2ePod{ns: ns, name: it.Metadata.Name, ip: it.Status.PodIP}
			}
		}
		last = fmt.Sprintf("%d pods, none ready with a new IP", len(list.Items))
		time.Sleep(time.Second)
	}
	e.t.Fatalf("pod app=%s in %s: %s", app, ns, last)
	return e2ePod{}
}

// connect opens a TCP connection from one pod to another's port 8080
// (kubectl exec ztnettest connect) and checks the answer names it. When
// kubectl exec itself fails (not the command in the pod), it tries again
// (at most 3 times): that says nothing about the connection.
func (e *e2e) connect(from, to e2ePod) error {
	var err error
	for i := 0; i < 3; i++ {
		var out string
		out, err = e.kubectl("", "-n", from.ns, "exec", from.name, "--", "/ztnettest", "connect", "-timeout", "2s", to.ip+":8080")
		if err == nil {
			if strings.TrimSpace(out) != to.name {
				return fmt.Errorf("%s answered %q, want its hostname %s", to, strings.TrimSpace(out), to.name)
			}
			return nil
		}
		if strings.Contains(err.Error(), "command terminated with exit code") {
			return err // ztnettest ran and could not connect
		}
		e.t.Logf("kubectl exec failed, not the connection (try %d): %v", i+1, err)
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("%w: %v", errExec, err)
}

// errExec: kubectl exec itself kept failing; the connection is unknown.
var errExec = errors.New("kubectl exec failed")

// expect waits (bounded: policies take effect within a few syncs) until
// every connection does what it should, then checks it once more.
func (e *e2e) expect(what string, conns ...e2eConn) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		bad := e.check(conns)
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: after 30s: %s", what, strings.Join(bad, "; "))
		}
		time.Sleep(time.Second)
	}
	if bad := e.check(conns); len(bad) > 0 {
		e.t.Fatalf("%s: not stable: %s", what, strings.Join(bad, "; "))
	}
}

// e2eConn is one expected connection.
type e2eConn struct {
	from, to e2ePod
	allowed  bool
}

func e2eAllow(from, to e2ePod) e2eConn { return e2eConn{from, to, true} }
func e2eDeny(from, to e2ePod) e2eConn  { return e2eConn{from, to, false} }

func (e *e2e) check(conns []e2eConn) []string {
	var bad []string
	for _, c := range conns {
		err := e.connect(c.from, c.to)
		switch {
		case errors.Is(err, errExec):
			bad = append(bad, fmt.Sprintf("%s -> %s unknown: %v", c.from, c.to, err))
		case c.allowed && err != nil:
			bad = append(bad, fmt.Sprintf("%s -> %s should pass: %v", c.from, c.to, err))
		case !c.allowed && err == nil:
			bad = append(bad, fmt.Sprintf("%s -> %s should be dropped but passed", c.from, c.to))
		}
	}
	return bad
}

// deletePod deletes a pod and returns its Deployment's replacement (a new
// pod with a new IP).
func (e *e2e) restart(p e2ePod, app string) e2ePod {
	e.t.Helper()
	e.must("", "-n", p.ns, "delete", "pod", p.name, "--wait=true", "--timeout=60s")
	return e.pod(p.ns, app, p.ip)
}
