package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ztnet/zt/internal/testenv"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cluster is one API server with deploy/ applied, the agent's
// ServiceAccount kubeconfig, and this node's pods.
type cluster struct {
	t     testing.TB
	srv   *testenv.APIServer
	admin kubernetes.Interface
	// agentKubeconfig holds only the server URL, its CA and the zt-agent
	// ServiceAccount token.
	agentKubeconfig string
	agentToken      string
	node            string
	net             *podNet
}

// newCluster starts etcd + kube-apiserver, applies deploy/ with kubectl and
// writes the agent's kubeconfig.
func newCluster(t testing.TB) *cluster {
	t.Helper()
	start := time.Now()
	srv := testenv.StartAPIServer(t)
	t.Logf("kube-apiserver %s ready in %s", srv.URL(), time.Since(start).Round(time.Millisecond))
	c := &cluster{t: t, srv: srv, admin: srv.AdminClient(t)}
	// Raise the admin client's rate limits: the perf test creates 10,000 pods.
	acfg := srv.AdminConfig()
	acfg.QPS, acfg.Burst = 2000, 4000
	c.admin = kubernetes.NewForConfigOrDie(acfg)

	out := srv.Kubectl(t, "apply", "-k", filepath.Join(repoRoot, "deploy"))
	t.Logf("kubectl apply -k deploy/:\n%s", strings.TrimSpace(out))

	c.agentToken = srv.TokenFor(t, "zt-system", "zt-agent")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: srv.URL(), CertificateAuthorityData: srv.CACert()}
	cfg.AuthInfos["zt-agent"] = &clientcmdapi.AuthInfo{Token: c.agentToken}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "zt-agent"}
	cfg.CurrentContext = "e2e"
	c.agentKubeconfig = filepath.Join(t.TempDir(), "zt-agent.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, c.agentKubeconfig); err != nil {
		t.Fatal(err)
	}
	c.node = "zt-e2e-node-" + randHex(3)
	return c
}

// agentClient is a clientset built from the agent's kubeconfig file.
func (c *cluster) agentClient() kubernetes.Interface {
	c.t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", c.agentKubeconfig)
	if err != nil {
		c.t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(rc)
}

// kubectl runs kubectl with the admin kubeconfig, stdin as its input.
func (c *cluster) kubectl(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := c.srv.KubectlCmd(ctx, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (c *cluster) mustKubectl(stdin string, args ...string) string {
	c.t.Helper()
	out, err := c.kubectl(stdin, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// apply runs `kubectl apply -f -` on yaml.
func (c *cluster) apply(yaml string) {
	c.t.Helper()
	c.mustKubectl(yaml, "apply", "-f", "-")
}

// podObject is the API object of a pod on node with the named ports every
// test pod serves: http (TCP 8080) and echo (UDP 9090).
func podObject(namespace, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "app", Image: "example.invalid/app:1",
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: httpPort, Protocol: corev1.ProtocolTCP},
					{Name: "echo", ContainerPort: echoPort, Protocol: corev1.ProtocolUDP},
				},
			}},
		},
	}
}

// createPodAPI creates the pod and, as a kubelet would, reports it
// Running with ip (status subresource, admin client).
func createPodAPI(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod, ip string) error {
	got, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	got.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  ip,
		PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{
			Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
		}},
	}
	if _, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// ---- the agent process ----

// agentRunner starts and restarts zt-agent with fixed flags.
type agentRunner struct {
	t         testing.TB
	args      []string
	bpffs     string
	healthURL string
	logDir    string
	runs      int
	cur       *agentProc
	// ifindexes of host veths the agent may have attached to, checked at
	// cleanup for leftover tcx links.
	ifindexes func() []int
}

type agentProc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	started time.Time
}

func (p *agentProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// newAgent prepares the agent for this cluster's node on a unique bpffs
// root and health port; cleanup stops it (SIGTERM), removes its pins and
// checks that no tcx link is left on the test's interfaces.
func (c *cluster) newAgent(extra ...string) *agentRunner {
	t := c.t
	t.Helper()
	port := freePort(t)
	r := &agentRunner{
		t:         t,
		bpffs:     "/sys/fs/bpf/zt-e2e-" + randHex(4),
		healthURL: fmt.Sprintf("http://127.0.0.1:%d", port),
		logDir:    t.TempDir(),
	}
	r.args = append([]string{
		"--node-name", c.node,
		"--kubeconfig", c.agentKubeconfig,
		"--bpffs-root", r.bpffs,
		"--health-addr", fmt.Sprintf("127.0.0.1:%d", port),
		"--log-format", "console",
		"--min-sync-interval", "50ms",
		"--netns-dirs", "/run/netns",
	}, extra...)
	t.Cleanup(func() {
		r.stop(syscall.SIGTERM, 15*time.Second)
		if t.Failed() {
			r.dumpLogs()
		}
		if err := removePins(r.bpffs); err != nil {
			t.Errorf("remove agent pins: %v", err)
		}
		if r.ifindexes != nil {
			if left := tcxLinksOn(r.ifindexes()); len(left) > 0 {
				t.Errorf("tcx links still attached after cleanup: %v", left)
			}
		}
	})
	return r
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs a new agent process; its output goes to agent-<n>.log.
func (r *agentRunner) start() *agentProc {
	t := r.t
	t.Helper()
	r.runs++
	logPath := filepath.Join(r.logDir, fmt.Sprintf("agent-%d.log", r.runs))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(agentBin, r.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	// Own process group; SIGKILL if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start zt-agent: %v", err)
	}
	p := &agentProc{cmd: cmd, logPath: logPath, done: make(chan struct{}), started: time.Now()}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	r.cur = p
	return p
}

// stop signals the current agent and waits (SIGKILL after grace).
func (r *agentRunner) stop(sig syscall.Signal, grace time.Duration) error {
	p := r.cur
	if p == nil || p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("zt-agent did not exit within %s of %s", grace, sig)
	}
	return nil
}

// waitReady polls /readyz until 200 and returns how long it took from the
// process start.
func (r *agentRunner) waitReady(timeout time.Duration) (time.Duration, error) {
	p := r.cur
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: time.Second}
	for {
		if p.exited() {
			return 0, fmt.Errorf("zt-agent exited: %v\n%s", p.err, tail(p.logPath, 40))
		}
		resp, err := hc.Get(r.healthURL + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(p.started), nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("zt-agent not ready within %s\n%s", timeout, tail(p.logPath, 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *agentRunner) mustReady(timeout time.Duration) time.Duration {
	r.t.Helper()
	d, err := r.waitReady(timeout)
	if err != nil {
		r.t.Fatal(err)
	}
	return d
}

func (r *agentRunner) get(path string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(r.healthURL + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (r *agentRunner) metrics() metricSet {
	r.t.Helper()
	code, body, err := r.get("/metrics")
	if err != nil || code != http.StatusOK {
		r.t.Fatalf("GET /metrics: %d %v", code, err)
	}
	return parseMetrics(body)
}

// logs returns the whole log of every run so far.
func (r *agentRunner) logs() string {
	var b strings.Builder
	for i := 1; i <= r.runs; i++ {
		data, _ := os.ReadFile(filepath.Join(r.logDir, fmt.Sprintf("agent-%d.log", i)))
		fmt.Fprintf(&b, "===== zt-agent run %d =====\n%s", i, data)
	}
	return b.String()
}

func (r *agentRunner) dumpLogs() {
	r.t.Logf("zt-agent logs (%s):\n%s", r.logDir, r.logs())
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- metrics ----

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type metricSet []sample

// parseMetrics reads the Prometheus text format (no escapes in our labels).
func parseMetrics(body string) metricSet {
	var out metricSet
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s := sample{labels: map[string]string{}, value: v}
		head := line[:i]
		if j := strings.IndexByte(head, '{'); j >= 0 {
			s.name = head[:j]
			for _, kv := range splitLabels(strings.TrimSuffix(head[j+1:], "}")) {
				k, val, _ := strings.Cut(kv, "=")
				s.labels[k] = strings.Trim(val, `"`)
			}
		} else {
			s.name = head
		}
		out = append(out, s)
	}
	return out
}

func splitLabels(s string) []string {
	var out []string
	inQ, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			inQ = !inQ
		case ',':
			if !inQ {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// sum adds the samples of name whose labels include want (k=v pairs).
func (m metricSet) sum(name string, want ...string) (float64, bool) {
	var total float64
	found := false
next:
	for _, s := range m {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(want); i += 2 {
			if s.labels[want[i]] != want[i+1] {
				continue next
			}
		}
		total += s.value
		found = true
	}
	return total, found
}

// ---- helpers ----

// poll calls cond every interval until it is true or timeout passes; it
// returns the time from start to the beginning of the first successful
// call. Calls overlap (one starts every interval whatever the previous
// ones do), so a probe that times out just before the change does not
// delay the measurement by its timeout: the resolution is interval.
func poll(start time.Time, timeout, interval time.Duration, cond func() bool) (time.Duration, bool) {
	type result struct {
		at time.Time
		ok bool
	}
	results := make(chan result, int(timeout/interval)+16)
	var wg sync.WaitGroup
	defer wg.Wait()
	deadline := start.Add(timeout)
	var first time.Time
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for first.IsZero() && time.Now().Before(deadline) {
		at := time.Now()
		wg.Go(func() { results <- result{at, cond()} })
	wait:
		for first.IsZero() {
			select {
			case r := <-results:
				if r.ok {
					first = r.at
				}
			case <-tick.C:
				break wait
			}
		}
	}
	if first.IsZero() {
		return time.Since(start), false
	}
	// Calls started earlier may still succeed: take the earliest.
	wg.Wait()
	close(results)
	for r := range results {
		if r.ok && r.at.Before(first) {
			first = r.at
		}
	}
	return max(first.Sub(start), 0), true
}
