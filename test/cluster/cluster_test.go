//go:build cluster

package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ServerImage is the test server and client image (test/cluster/cmd/ztnettest).
const ServerImage = "zt.local/ztnettest:dev"

// Cluster is the one cluster every test of this package shares.
type Cluster struct {
	Repo           string // repository root
	Dir            string // hack/cluster.sh's ZT_CLUSTER_DIR
	Bin            string // _out/bin: kubectl and friends
	CNI            string // ptp or bridge
	KubeconfigPath string // admin kubeconfig
}

// C is set by TestMain before any test runs.
var C *Cluster

// cmdTimeout bounds every kubectl call.
const cmdTimeout = 2 * time.Minute

// Kubectl runs kubectl with the admin kubeconfig and returns its stdout;
// the error carries stderr.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return c.KubectlIn("", args...)
}

// KubectlIn is Kubectl with stdin.
func (c *Cluster) KubectlIn(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, "kubectl"), append([]string{"--kubeconfig", c.KubeconfigPath}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Apply applies a YAML document (or several) and fails the test on error.
func (c *Cluster) Apply(t testing.TB, yaml string) {
	t.Helper()
	if out, err := c.KubectlIn(yaml, "apply", "-f", "-"); err != nil {
		t.Fatalf("apply: %v\n%s\n%s", err, out, yaml)
	}
}

// Exec runs a command in a pod's first container and returns its stdout.
func (c *Cluster) Exec(ns, pod string, cmd ...string) (string, error) {
	return c.Kubectl(append([]string{"-n", ns, "exec", pod, "--"}, cmd...)...)
}

// Connect opens a TCP connection from a pod running ServerImage to addr
// (host:port) and returns the server's answer; the error means no connection.
func (c *Cluster) Connect(ns, pod, addr string) (string, error) {
	out, err := c.Exec(ns, pod, "/ztnettest", "connect", "-timeout", "2s", addr)
	return strings.TrimSpace(out), err
}

// Namespace creates a namespace with a unique name starting with prefix and
// deletes it (without waiting) when the test ends.
func (c *Cluster) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	ns := prefix + "-" + hex.EncodeToString(b)
	if out, err := c.Kubectl("create", "namespace", ns); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := c.Kubectl("delete", "namespace", ns, "--wait=false"); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
	return ns
}

// WaitRollout waits until a Deployment or DaemonSet ("deployment/name",
// "daemonset/name") has all its pods updated and ready.
func (c *Cluster) WaitRollout(t testing.TB, ns, obj string, timeout time.Duration) {
	t.Helper()
	if out, err := c.Kubectl("-n", ns, "rollout", "status", obj, "--timeout", timeout.String()); err != nil {
		c.dumpPods(t, ns)
		t.Fatalf("%s not rolled out: %v\n%s", obj, err, out)
	}
}

// Eventually polls f every 500ms until it returns nil or timeout passes, and
// fails the test with the last error.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ServerPod is one pod of a ServerDeployment.
type ServerPod struct{ Namespace, Name, IP string }

// ServerDeployment creates a one-replica Deployment of ServerImage serving
// TCP 8080 in ns, with labels app=<name>, waits for it and returns its pod.
func (c *Cluster) ServerDeployment(t testing.TB, ns, name string) ServerPod {
	t.Helper()
	c.Apply(t, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      terminationGracePeriodSeconds: 1
      enableServiceLinks: false
      containers:
      - name: server
        image: %[3]s
        imagePullPolicy: Never
        args: [serve, -listen, ":8080"]
        ports: [{name: tcp, containerPort: 8080}]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
`, name, ns, ServerImage))
	c.WaitRollout(t, ns, "deployment/"+name, 2*time.Minute)
	out, err := c.Kubectl("-n", ns, "get", "pods", "-l", "app="+name,
		"-o", `jsonpath={range .items[?(@.status.phase=="Running")]}{.metadata.name} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("deployment %s/%s: want one running pod, got %q", ns, name, out)
	}
	return ServerPod{Namespace: ns, Name: f[0], IP: f[1]}
}

func (c *Cluster) dumpPods(t testing.TB, ns string) {
	t.Helper()
	out, _ := c.Kubectl("-n", ns, "get", "pods", "-o", "wide")
	ev, _ := c.Kubectl("-n", ns, "get", "events", "--sort-by", ".lastTimestamp")
	t.Logf("pods in %s:\n%s\nevents:\n%s", ns, out, ev)
}

// phases records how long each named step took, printed at the end.
var phases []string

func phase(name string, start time.Time) {
	phases = append(phases, fmt.Sprintf("%-34s %6.1fs", name, time.Since(start).Seconds()))
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	repo, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c := &Cluster{Repo: repo, Bin: filepath.Join(repo, "_out", "bin"), CNI: os.Getenv("ZT_CLUSTER_CNI"),
		Dir: os.Getenv("ZT_CLUSTER_DIR")}
	if c.CNI == "" {
		c.CNI = "ptp"
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(repo, "_out", "cluster-test")
	}
	c.KubeconfigPath = filepath.Join(c.Dir, "admin.kubeconfig")
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "test/cluster: must run as root (it starts a kubelet and containerd)")
		return 1
	}
	script := func(args ...string) error {
		cmd := exec.Command(filepath.Join(repo, "hack", args[0]), args[1:]...)
		cmd.Env = append(os.Environ(), "ZT_CLUSTER_DIR="+c.Dir)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	t0 := time.Now()
	if err := script("k8s-bins.sh"); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-bins:", err)
		return 1
	}
	if err := script("cluster.sh", "images"); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		return 1
	}
	phase("binaries and images", t0)

	before, err := snapshotHost(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		return 1
	}
	t0 = time.Now()
	code := 0
	if err := script("cluster.sh", "up", "--cni", c.CNI); err != nil {
		fmt.Fprintln(os.Stderr, "cluster up:", err)
		code = 1
	} else {
		phase("cluster up ("+c.CNI+")", t0)
		C = c
		code = m.Run()
	}
	t0 = time.Now()
	if err := script("cluster.sh", "down"); err != nil {
		fmt.Fprintln(os.Stderr, "cluster down:", err)
		code = 1
	}
	phase("cluster down", t0)
	after, err := snapshotHost(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		return 1
	}
	if d := before.diff(after); d != "" {
		fmt.Fprintf(os.Stderr, "FAIL: the host is not as it was before the cluster:\n%s", d)
		code = 1
	} else {
		fmt.Fprintln(os.Stderr, "host state after down equals the state before up")
	}
	fmt.Fprintln(os.Stderr, "phases:")
	for _, p := range phases {
		fmt.Fprintln(os.Stderr, "  "+p)
	}
	return code
}
