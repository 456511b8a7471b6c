package controlplane

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/internal/kubeenv"
	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/lab"
)

// The lab: three pods with network namespaces on node1 (server isolated,
// reachable from bulk pods only), plus bulk pods that exist in the API
// only, on other nodes, as the peers the agent must hold.
const (
	benchNS    = "perf"
	serverPort = 8080
	labBundle  = `apiVersion: v1
kind: Namespace
metadata: {name: perf, labels: {team: perf}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: perf, name: server, labels: {app: server}}
spec:
  nodeName: node1
  containers: [{name: s, image: zt/probe, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.244.1.10}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: perf, name: client, labels: {role: client}}
spec:
  nodeName: node1
  containers: [{name: c, image: zt/probe}]
status: {podIPs: [{ip: 10.244.1.11}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: perf, name: other, labels: {role: other}}
spec:
  nodeName: node1
  containers: [{name: o, image: zt/probe}]
status: {podIPs: [{ip: 10.244.1.12}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-server, namespace: perf}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: bulk}}}]
      ports: [{protocol: TCP, port: http}]
`
	allowClient = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: perf}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
      ports: [{protocol: TCP, port: http}]
`
	allowOther = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-other, namespace: perf}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {role: other}}}]
      ports: [{protocol: TCP, port: http}]
`
	localPods      = 3
	bulkNamespaces = 10
	bulkGroups     = 50
	bulkNodes      = 20
	bulkWorkers    = 8
	// agentSyncInterval is zt-agent's default --min-sync-interval, passed
	// explicitly because the lab's own default is shorter.
	agentSyncInterval = "100ms"
)

// bulkIP is the address of bulk pod i: 100.64.0.0/10, never routed here.
func bulkIP(i int) string {
	n := uint32(100)<<24 | uint32(64)<<16 | uint32(i+1)
	return fmt.Sprintf("%d.%d.%d.%d", n>>24, n>>16&0xff, n>>8&0xff, n&0xff)
}

type benchLab struct {
	l       *lab.Lab
	cs      kubernetes.Interface
	kubectl []string // kubectl --kubeconfig ...
	metrics string   // the agent's /metrics URL
	agent   int      // the agent's pid
	hc      *http.Client
	etcd    *etcdWriter // nil: bulk pods are created through the API
	created int         // bulk pods created so far
	extra   int         // ipcache entries that are not pods
	holes   atomic.Int64
	logf    func(string, ...any)
}

func startLab(ctx context.Context, bins binaries, k8sBin, via string, logf func(string, ...any)) (*benchLab, error) {
	b, err := bundle.Decode(strings.NewReader(labBundle))
	if err != nil {
		return nil, fmt.Errorf("decode the lab bundle: %w", err)
	}
	tag := make([]byte, 3)
	_, _ = rand.Read(tag)
	name := "ztb" + hex.EncodeToString(tag)
	dir, err := os.MkdirTemp("", "zt-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	l, err := lab.Up(ctx, lab.Config{
		Dir: dir, Name: name, BinDir: k8sBin, AgentBin: bins.agent, Self: bins.ztlab,
		Log: logWriter{logf}, AgentArgs: []string{"--min-sync-interval", agentSyncInterval},
	}, b)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lab up: %w", err)
	}
	bl := &benchLab{l: l, hc: &http.Client{Timeout: 5 * time.Second}, logf: logf}
	st := l.State()
	etcdPid := 0
	for _, p := range st.Procs {
		switch p.Role {
		case "agent":
			bl.agent = p.Pid
		case "etcd":
			etcdPid = p.Pid
		}
	}
	if via == BulkViaEtcd {
		err := errNoEtcd
		if etcdPid != 0 {
			var url string
			if url, err = etcdClientURL(etcdPid); err == nil {
				bl.etcd = newEtcdWriter(url)
			}
		}
		if err != nil {
			bl.close()
			return nil, err
		}
	}
	if len(st.Nodes) != 1 || bl.agent == 0 {
		bl.close()
		return nil, fmt.Errorf("lab has %d nodes and agent pid %d, want one node with an agent", len(st.Nodes), bl.agent)
	}
	bl.metrics = "http://" + st.Nodes[0].HealthAddr + "/metrics"
	bl.kubectl = []string{st.Kubectl, "--kubeconfig", st.AdminKubeconfig}
	rc, err := clientcmd.BuildConfigFromFlags("", st.AdminKubeconfig)
	if err == nil {
		rc.QPS, rc.Burst = 1000, 2000
		rc.ContentType = "application/vnd.kubernetes.protobuf"
		bl.cs, err = kubernetes.NewForConfig(rc)
	}
	if err != nil {
		bl.close()
		return nil, fmt.Errorf("admin client: %w", err)
	}
	for i := range bulkNamespaces {
		ns := fmt.Sprintf("bulk-%d", i)
		_, err := bl.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"team": fmt.Sprintf("t%d", i%3)}}}, metav1.CreateOptions{})
		if err == nil {
			err = kubeenv.EnsureServiceAccount(ctx, bl.cs, ns, "default")
		}
		if err != nil {
			bl.close()
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	ipc, err := bl.gauge("zt_map_entries", "map", "ipcache")
	if err != nil {
		bl.close()
		return nil, err
	}
	bl.extra = int(ipc) - localPods
	return bl, nil
}

func (bl *benchLab) close() error {
	dir := bl.l.State().Dir
	err := bl.l.Down()
	if rerr := os.RemoveAll(dir); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

// logWriter turns the lab's progress lines into logf calls.
type logWriter struct{ logf func(string, ...any) }

func (w logWriter) Write(p []byte) (int, error) {
	w.logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// scrape reads the agent's metrics.
func (bl *benchLab) scrape() (map[string]float64, error) {
	resp, err := bl.hc.Get(bl.metrics)
	if err != nil {
		return nil, fmt.Errorf("scrape the agent: %w", err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse the agent's metrics: %w", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			for _, lp := range m.GetLabel() {
				key += "," + lp.GetName() + "=" + lp.GetValue()
			}
			switch {
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[key+"_sum"] = m.GetHistogram().GetSampleSum()
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out, nil
}

// gauge reads one metric; label is a name and value pair, or nothing.
func (bl *benchLab) gauge(name string, label ...string) (float64, error) {
	m, err := bl.scrape()
	if err != nil {
		return 0, err
	}
	key := name
	if len(label) == 2 {
		key += "," + label[0] + "=" + label[1]
	}
	v, ok := m[key]
	if !ok {
		return 0, fmt.Errorf("agent metric %s not found", key)
	}
	return v, nil
}

// grow creates bulk pods up to total bulk pods: into etcd, or through
// the API server on bulkWorkers workers (see BulkViaEtcd, BulkViaAPI).
func (bl *benchLab) grow(ctx context.Context, total int) error {
	if total <= bl.created {
		return nil
	}
	if bl.etcd != nil {
		if err := bl.etcd.grow(ctx, bl.created, total); err != nil {
			return err
		}
		bl.created = total
		return nil
	}
	var next atomic.Int64
	next.Store(int64(bl.created))
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range bulkWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= total || ctx.Err() != nil {
					return
				}
				if err := bl.createBulkPod(ctx, i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(total))
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	if first != nil {
		return first
	}
	bl.created = total
	return nil
}

// bulkPod is bulk pod i without status.
func bulkPod(i int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: fmt.Sprintf("bulk-%d", i%bulkNamespaces), Name: fmt.Sprintf("p-%d", i),
			Labels: map[string]string{"tier": "bulk", "group": fmt.Sprintf("g%d", i%bulkGroups)},
		},
		Spec: corev1.PodSpec{
			NodeName:   fmt.Sprintf("other-node-%d", i%bulkNodes),
			Containers: []corev1.Container{{Name: "c", Image: "zt/probe"}},
		},
	}
}

// createBulkPod creates bulk pod i through the API server: Create, then
// UpdateStatus with its address (status is ignored on create).
func (bl *benchLab) createBulkPod(ctx context.Context, i int) error {
	p := bulkPod(i)
	pods := bl.cs.CoreV1().Pods(p.Namespace)
	var got *corev1.Pod
	err := retryAPI(ctx, func() (err error) {
		got, err = pods.Create(ctx, p, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) { // an earlier attempt timed out after creating it
			got, err = pods.Get(ctx, p.Name, metav1.GetOptions{})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	ip := bulkIP(i)
	got.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	err = retryAPI(ctx, func() error {
		_, err := pods.UpdateStatus(ctx, got, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// retryAPI retries f on the API server's overload answers (timeouts, 429,
// 5xx) and on transport errors (an HTTP/2 stream reset), at most 5 times
// with a growing pause: a busy two-core machine gets them while 100,000
// pods are created.
func retryAPI(ctx context.Context, f func() error) error {
	var err error
	for attempt := range 5 {
		err = f()
		if err == nil || ctx.Err() != nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * time.Second):
		}
	}
	return err
}

func retryable(err error) bool {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return true // not an answer of the API server: the transport
	}
	return apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err)
}

// settle waits until the agent's ipcache holds every pod.
func (bl *benchLab) settle(ctx context.Context, timeout time.Duration) error {
	want := bl.created + localPods + bl.extra
	deadline := time.Now().Add(timeout)
	for {
		v, err := bl.gauge("zt_map_entries", "map", "ipcache")
		if err != nil {
			return err
		}
		if int(v) >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent ipcache holds %v entries after %s, want %d", v, timeout, want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probe makes one TCP connection attempt from a lab pod to the server:
// passed when the server answered, blocked when it did not and one of
// the agent's drop counters moved. Neither (a timeout on a busy machine)
// says nothing.
func (bl *benchLab) probe(ctx context.Context, from string, timeout time.Duration) (passed, blocked bool, err error) {
	r, err := bl.l.Try(ctx, lab.TryOptions{From: benchNS + "/" + from, To: benchNS + "/server",
		Port: serverPort, Protocol: identity.ProtoTCP, Timeout: timeout})
	if err != nil {
		return false, false, fmt.Errorf("probe %s -> server: %w", from, err)
	}
	return r.Passed, r.Blocked(), nil
}

// holeWatch probes from client to the server every 50 ms until the
// returned stop is called, which returns the number of probes made;
// probes that passed are counted in bl.holes.
func (bl *benchLab) holeWatch(ctx context.Context) (stop func() int) {
	src, dst, err := bl.pods("client")
	done := make(chan struct{})
	var n int
	var wg sync.WaitGroup
	wg.Go(func() {
		if err != nil {
			return
		}
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			passed, _, derr := dial(src.Netns, src.Addrs()[0], netip.AddrPortFrom(dst.Addrs()[0], serverPort))
			if derr != nil {
				continue
			}
			n++
			if passed {
				bl.holes.Add(1)
			}
		}
	})
	return func() int {
		close(done)
		wg.Wait()
		return n
	}
}

// pods finds the lab pod from and the server.
func (bl *benchLab) pods(from string) (src, dst *lab.Pod, err error) {
	for i, p := range bl.l.State().Pods {
		switch p.Key() {
		case benchNS + "/" + from:
			src = &bl.l.State().Pods[i]
		case benchNS + "/server":
			dst = &bl.l.State().Pods[i]
		}
	}
	if src == nil || dst == nil || len(src.Addrs()) == 0 || len(dst.Addrs()) == 0 {
		return nil, nil, fmt.Errorf("lab pods %s and server not found", from)
	}
	return src, dst, nil
}

// waitReach runs a probe train (probeTrain) from a lab pod to the server
// until it passes (want) or is blocked (!want).
func (bl *benchLab) waitReach(ctx context.Context, from string, want bool, since time.Time, timeout time.Duration) (time.Duration, error) {
	src, dst, err := bl.pods(from)
	if err != nil {
		return 0, err
	}
	return probeTrain(ctx, src.Netns, src.Addrs()[0], netip.AddrPortFrom(dst.Addrs()[0], serverPort), want, since, timeout)
}

func (bl *benchLab) runKubectl(ctx context.Context, stdin string, args ...string) error {
	cmd := exec.CommandContext(ctx, bl.kubectl[0], append(bl.kubectl[1:], args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// catchUp returns once the agent has handled every earlier event: a
// marker policy applied after them (allow-other) is enforced, then its
// deletion is.
func (bl *benchLab) catchUp(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := bl.runKubectl(ctx, allowOther, "apply", "-f", "-"); err != nil {
		return 0, err
	}
	if _, err := bl.waitReach(ctx, "other", true, start, timeout); err != nil {
		return 0, fmt.Errorf("agent did not catch up: %w", err)
	}
	if err := bl.runKubectl(ctx, "", "delete", "networkpolicy", "-n", benchNS, "allow-other"); err != nil {
		return 0, err
	}
	if _, err := bl.waitReach(ctx, "other", false, time.Now(), timeout); err != nil {
		return 0, fmt.Errorf("agent did not catch up: %w", err)
	}
	return time.Since(start), nil
}

// nodeSide returns the agent's zt_policy_propagation_seconds observations
// since before: exact when there is one, else their mean (n of them).
func (bl *benchLab) nodeSide(before map[string]float64) (time.Duration, int, error) {
	const name = "zt_policy_propagation_seconds"
	// The agent observes just after the map write the probe saw.
	deadline := time.Now().Add(2 * time.Second)
	for {
		after, err := bl.scrape()
		if err != nil {
			return 0, 0, err
		}
		n := int(after[name+"_count"] - before[name+"_count"])
		if n > 0 {
			s := after[name+"_sum"] - before[name+"_sum"]
			return time.Duration(s / float64(n) * float64(time.Second)), n, nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("%s did not move in 2 s after the change was enforced", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// flip makes four changes, each waited for with probes from client to
// the server: kubectl apply of allow-client, kubectl delete of it, then
// the same create and delete through the API client (no kubectl process).
func (bl *benchLab) flip(ctx context.Context, row *PropagationRow) error {
	np, err := decodePolicy(allowClient)
	if err != nil {
		return err
	}
	pols := bl.cs.NetworkingV1().NetworkPolicies(benchNS)
	changes := []struct {
		allow bool
		do    func() error
		out   *[]float64
	}{
		{true, func() error { return bl.runKubectl(ctx, allowClient, "apply", "-f", "-") }, &row.Apply},
		{false, func() error { return bl.runKubectl(ctx, "", "delete", "networkpolicy", "-n", benchNS, np.Name) }, &row.Delete},
		{true, func() error { _, err := pols.Create(ctx, np.DeepCopy(), metav1.CreateOptions{}); return err }, &row.ClientCreate},
		{false, func() error { return pols.Delete(ctx, np.Name, metav1.DeleteOptions{}) }, &row.ClientDelete},
	}
	for _, c := range changes {
		before, err := bl.scrape()
		if err != nil {
			return err
		}
		start := time.Now()
		errc := make(chan error, 1)
		go func() { errc <- c.do() }()
		d, werr := bl.waitReach(ctx, "client", c.allow, start, 30*time.Second)
		if err := <-errc; err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
		node, n, err := bl.nodeSide(before)
		if err != nil {
			return err
		}
		*c.out = append(*c.out, ms(d))
		row.Node = append(row.Node, ms(node))
		if n > 1 {
			row.NodeBatched++
		}
	}
	return nil
}

func decodePolicy(y string) (*networkingv1.NetworkPolicy, error) {
	b, err := bundle.Decode(strings.NewReader(y))
	if err != nil || len(b.Policies) != 1 {
		return nil, fmt.Errorf("decode policy: %v (%d policies)", err, len(b.Policies))
	}
	return b.Policies[0], nil
}

// rss reads the agent's VmRSS and VmHWM in KiB.
func (bl *benchLab) rss() (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", bl.agent))
	if err != nil {
		return 0, 0, fmt.Errorf("agent status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		switch fs[0] {
		case "VmRSS:":
			rss, _ = strconv.ParseInt(fs[1], 10, 64)
		case "VmHWM:":
			hwm, _ = strconv.ParseInt(fs[1], 10, 64)
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", bl.agent)
	}
	return rss, hwm, sc.Err()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// createPolicies creates n policies in the bulk namespaces (every 100th
// selecting the server): pod and namespace selectors, named ports, port
// ranges, ipBlocks with exceptions and egress.
func (bl *benchLab) createPolicies(ctx context.Context, n int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range bulkWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				ns := fmt.Sprintf("bulk-%d", i%bulkNamespaces)
				sel := map[string]string{"group": fmt.Sprintf("g%d", i%bulkGroups)}
				if i%100 == 0 {
					ns, sel = benchNS, map[string]string{"app": "server"}
				}
				np := benchworld.BulkPolicy(i, ns, sel, bulkGroups)
				if _, err := bl.cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
					once.Do(func() { first = fmt.Errorf("create policy %s/%s: %w", ns, np.Name, err) })
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
