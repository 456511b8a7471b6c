package e2e_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Bulk pods live in the API only, on other nodes (no netns): they are the
// cluster the agent must hold as peers. Their addresses are 10.232.x.y and
// never routed.
const (
	bulkNamespaces = 10
	bulkGroups     = 50
	bulkNodes      = 20
)

func bulkIP(i int) string { return fmt.Sprintf("10.232.%d.%d", i/250, i%250+1) }

// TestAgentPerf measures policy propagation (kubectl apply/delete to the
// first probe seeing it) with 100 and 1,000 pods, and the agent's memory
// with 10,000 pods and 1,000 policies. Not part of the default run:
//
//	ZT_E2E_PERF=1 go test -count=1 -v -run Perf -timeout 30m ./test/e2e/
func TestAgentPerf(t *testing.T) {
	if os.Getenv("ZT_E2E_PERF") != "1" {
		t.Skip("set ZT_E2E_PERF=1 to run the performance test")
	}
	const flips = 20
	c := newCluster(t)
	ctx := context.Background()
	const ns = "perf"
	c.srv.CreateNamespace(t, ns, map[string]string{"team": "perf"})
	for i := range bulkNamespaces {
		c.srv.CreateNamespace(t, fmt.Sprintf("bulk-%d", i), map[string]string{"team": fmt.Sprintf("t%d", i%3)})
	}
	pn := newPodNet(t)
	addPod := func(name string, labels map[string]string) *pod {
		p := pn.addPod(ns, name, labels)
		if err := createPodAPI(ctx, c.admin, podObject(ns, name, c.node, labels), p.IP.String()); err != nil {
			t.Fatal(err)
		}
		return p
	}
	server := addPod("server", map[string]string{"app": "server"})
	client := addPod("client", map[string]string{"role": "client"})
	other := addPod("other", map[string]string{"role": "other"})
	// The server is isolated; bulk pods (all of them peers) may reach it.
	c.apply(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-server, namespace: perf}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {}
          podSelector: {matchLabels: {tier: bulk}}
      ports: [{protocol: TCP, port: http}]
`)
	const allowClient = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client, namespace: perf}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {matchLabels: {role: client}}
      ports: [{protocol: TCP, port: http}]
`

	agent := c.newAgent("--log-level", "debug")
	agent.ifindexes = pn.ifindexes
	agent.start()
	agent.mustReady(60 * time.Second)
	expect(t, flow{client, server, tcp, false}, flow{other, server, tcp, false}, flow{server, client, tcp, true})

	const allowOther = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-other, namespace: perf}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {matchLabels: {role: other}}
      ports: [{protocol: TCP, port: http}]
`
	// catchUp returns once the agent has processed every earlier event: a
	// marker change (allow-other applied, then deleted) made after them is
	// enforced, and the agent syncs its pending keys in one batch.
	catchUp := func(timeout time.Duration) time.Duration {
		start := time.Now()
		c.apply(allowOther)
		if _, ok := poll(start, timeout, 20*time.Millisecond, func() bool {
			return probe(other, server, tcp, 300*time.Millisecond) == nil
		}); !ok {
			t.Fatalf("agent did not catch up within %s", timeout)
		}
		c.mustKubectl("", "delete", "networkpolicy", "-n", ns, "allow-other")
		if _, ok := poll(time.Now(), timeout, 20*time.Millisecond, func() bool {
			return probe(other, server, tcp, 150*time.Millisecond) != nil
		}); !ok {
			t.Fatalf("agent did not catch up within %s", timeout)
		}
		return time.Since(start)
	}
	// The hole watch: client must never reach server, except during the
	// flips (which allow it).
	watch := startHoleWatch(t, client, server)

	// Non-pod ipcache entries (the node's own addresses).
	ipc0, _ := agent.metrics().sum("zt_map_entries", "map", "ipcache")
	extra := int(ipc0) - 3
	t.Logf("ipcache before bulk pods: %v entries (%d not pods)", ipc0, extra)
	created := 0
	grow := func(total int) time.Duration {
		start := time.Now()
		createBulkPods(t, c, created, total)
		created = total
		return time.Since(start)
	}
	// settle waits until the agent's ipcache holds every pod and returns
	// how long that took from since.
	settle := func(since time.Time, wantIPCache int) time.Duration {
		d, ok := poll(since, 5*time.Minute, 100*time.Millisecond, func() bool {
			v, _ := agent.metrics().sum("zt_map_entries", "map", "ipcache")
			return int(v) >= wantIPCache
		})
		if !ok {
			v, _ := agent.metrics().sum("zt_map_entries", "map", "ipcache")
			t.Fatalf("agent ipcache %v entries after 5 min, want >= %d", v, wantIPCache)
		}
		return d
	}

	type row struct {
		pods, policies         int
		apply, del             []time.Duration
		syncMean, propMean     time.Duration
		ipcache, policyEntries float64
	}
	var rows []row
	measureFlips := func(pods, policies int) {
		watch.pause()
		defer watch.resume()
		before := agent.metrics()
		r := row{pods: pods, policies: policies}
		for range flips {
			start := time.Now()
			errc := make(chan error, 1)
			go func() { _, err := c.kubectl(allowClient, "apply", "-f", "-"); errc <- err }()
			d, ok := poll(start, 30*time.Second, 5*time.Millisecond, func() bool {
				return probe(client, server, tcp, 300*time.Millisecond) == nil
			})
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Fatalf("%d pods: allow-client not enforced within 30 s", pods)
			}
			r.apply = append(r.apply, d)
			start = time.Now()
			go func() { _, err := c.kubectl("", "delete", "networkpolicy", "-n", ns, "allow-client"); errc <- err }()
			d, ok = poll(start, 30*time.Second, 5*time.Millisecond, func() bool {
				return probe(client, server, tcp, 150*time.Millisecond) != nil
			})
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Fatalf("%d pods: deleting allow-client not enforced within 30 s", pods)
			}
			r.del = append(r.del, d)
		}
		after := agent.metrics()
		delta := func(name string) time.Duration {
			s0, _ := before.sum(name + "_sum")
			n0, _ := before.sum(name + "_count")
			s1, _ := after.sum(name + "_sum")
			n1, _ := after.sum(name + "_count")
			if n1 == n0 {
				return 0
			}
			return time.Duration((s1 - s0) / (n1 - n0) * float64(time.Second))
		}
		r.syncMean = delta("zt_sync_duration_seconds")
		r.propMean = delta("zt_policy_propagation_seconds")
		r.ipcache, _ = after.sum("zt_map_entries", "map", "ipcache")
		r.policyEntries, _ = after.sum("zt_map_entries", "map", "policy")
		rows = append(rows, r)
		t.Logf("%d pods, %d policies: apply p50 %s p99 %s; delete p50 %s p99 %s", pods, policies,
			pct(r.apply, 50), pct(r.apply, 99), pct(r.del, 50), pct(r.del, 99))
	}

	local := 3
	for _, total := range []int{100, 1000} {
		since := time.Now()
		took := grow(total - local)
		s := settle(since, total+extra)
		cu := catchUp(time.Minute)
		t.Logf("%d pods in the API (%d bulk created in %s); agent ipcache complete %s after the first create; caught up (marker) in %s",
			total, total-local, took.Round(time.Millisecond), s.Round(time.Millisecond), cu.Round(time.Millisecond))
		measureFlips(total, 2)
	}

	// 10,000 pods and 1,000 policies.
	since := time.Now()
	took := grow(10000 - local)
	t.Logf("%s: 10000 pods in the API (bulk created in %s)", time.Now().Format("15:04:05.000"), took.Round(time.Millisecond))
	pstart := time.Now()
	createPolicies(t, c, 1000-1)
	t.Logf("%s: 999 more policies created in %s", time.Now().Format("15:04:05.000"), time.Since(pstart).Round(time.Millisecond))
	s := settle(since, 10000+extra)
	// Let the agent finish with the policies.
	cu := catchUp(5 * time.Minute)
	t.Logf("agent ipcache complete %s after the first create; caught up (marker) %s after that",
		s.Round(time.Millisecond), cu.Round(time.Millisecond))
	expect(t, flow{client, server, tcp, false}, flow{server, client, tcp, true})
	rssRun, hwmRun := agent.rssKB()
	measureFlips(10000, 1001)
	rssAfterFlips, _ := agent.rssKB()

	// A fresh agent on the same state: cold start.
	if err := agent.stop(syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	agent.start()
	readyIn := agent.mustReady(3 * time.Minute)
	quiet2 := catchUp(5 * time.Minute)
	rssCold, hwmCold := agent.rssKB()
	m := agent.metrics()
	ipc, _ := m.sum("zt_map_entries", "map", "ipcache")
	pol, _ := m.sum("zt_map_entries", "map", "policy")
	ids, _ := m.sum("zt_identities")
	inv, _ := m.sum("zt_invalid_policies")
	expect(t, flow{client, server, tcp, false}, flow{server, client, tcp, true})

	if holes := watch.stop(); len(holes) > 0 {
		t.Errorf("client reached the isolated server %d times outside the flips: %v", len(holes), holes)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\npolicy propagation, kubectl apply/delete of allow-client -> first probe seeing it (%d each):\n", flips)
	fmt.Fprintf(&b, "%8s %9s | %9s %9s %9s | %9s %9s %9s | %10s %10s | %8s %8s\n",
		"pods", "policies", "apply p50", "p99", "max", "del p50", "p99", "max", "agent sync", "agent prop", "ipcache", "policy")
	for _, r := range rows {
		fmt.Fprintf(&b, "%8d %9d | %9s %9s %9s | %9s %9s %9s | %10s %10s | %8.0f %8.0f\n",
			r.pods, r.policies, pct(r.apply, 50), pct(r.apply, 99), pct(r.apply, 100),
			pct(r.del, 50), pct(r.del, 99), pct(r.del, 100),
			r.syncMean.Round(10*time.Microsecond), r.propMean.Round(10*time.Microsecond), r.ipcache, r.policyEntries)
	}
	fmt.Fprintf(&b, "(agent sync / agent prop: means of zt_sync_duration_seconds and zt_policy_propagation_seconds over the flips)\n\n")
	fmt.Fprintf(&b, "agent memory with 10,000 pods, 1,000 policies, %d namespaces (%v identities, ipcache %v, policy %v, invalid %v):\n",
		bulkNamespaces+3, ids, ipc, pol, inv)
	fmt.Fprintf(&b, "  agent that watched them all arrive: VmRSS %6.1f MiB (VmHWM %6.1f MiB); after %d flips: VmRSS %6.1f MiB\n",
		float64(rssRun)/1024, float64(hwmRun)/1024, flips, float64(rssAfterFlips)/1024)
	fmt.Fprintf(&b, "  fresh agent (SIGTERM + start):      VmRSS %6.1f MiB (VmHWM %6.1f MiB); ready %s after start, then caught up (marker) in %s\n",
		float64(rssCold)/1024, float64(hwmCold)/1024, readyIn.Round(time.Millisecond), quiet2.Round(time.Millisecond))
	t.Logf("results:%s", b.String())
	t.Logf("slowest agent syncs:\n%s", slowestSyncs(agent.logs(), 8))
}

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := (p*len(s) + 99) / 100
	k = min(max(k, 1), len(s))
	return s[k-1].Round(100 * time.Microsecond).String()
}

// slowestSyncs picks the n slowest "synced" lines of the agent's debug log
// (and every ready/failed line).
func slowestSyncs(logs string, n int) string {
	type line struct {
		took time.Duration
		text string
	}
	var ls []line
	var keep []string
	re := regexp.MustCompile(`"took": "([^"]+)"`)
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "ready") || strings.Contains(l, "failed") || strings.Contains(l, "=====") {
			keep = append(keep, l)
		}
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		d, err := time.ParseDuration(m[1])
		if err == nil {
			ls = append(ls, line{d, l})
		}
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].took > ls[j].took })
	for i := 0; i < n && i < len(ls); i++ {
		keep = append(keep, ls[i].text)
	}
	return strings.Join(keep, "\n")
}

// createBulkPods creates bulk pods [from, to) with 16 workers.
func createBulkPods(t testing.TB, c *cluster, from, to int) {
	t.Helper()
	ctx := context.Background()
	inParallel(t, from, to, func(i int) error {
		labels := map[string]string{"tier": "bulk", "group": fmt.Sprintf("g%d", i%bulkGroups)}
		p := podObject(fmt.Sprintf("bulk-%d", i%bulkNamespaces), fmt.Sprintf("p-%d", i),
			fmt.Sprintf("other-node-%d", i%bulkNodes), labels)
		return createPodAPI(ctx, c.admin, p, bulkIP(i))
	})
}

// inParallel runs f(i) for i in [from, to) on 16 workers and fails the test
// with the first error (the others stop at their next index).
func inParallel(t testing.TB, from, to int, f func(i int) error) {
	t.Helper()
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(to))
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
}

// createPolicies creates n policies spread over the bulk namespaces (and
// a few selecting the local server): pod and namespace selectors, named
// and numbered ports, port ranges and ipBlocks.
func createPolicies(t testing.TB, c *cluster, n int) {
	t.Helper()
	ctx := context.Background()
	tcpP, udpP := corev1.ProtocolTCP, corev1.ProtocolUDP
	named := intstr.FromString("http")
	num := intstr.FromInt32(9090)
	end := int32(9100)
	inParallel(t, 0, n, func(i int) error {
		ns := fmt.Sprintf("bulk-%d", i%bulkNamespaces)
		sel := map[string]string{"group": fmt.Sprintf("g%d", i%bulkGroups)}
		if i%100 == 0 {
			ns, sel = "perf", map[string]string{"app": "server"}
		}
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np-%d", i), Namespace: ns},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: sel},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{
						{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"group": fmt.Sprintf("g%d", (i+1)%bulkGroups)}}},
						{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%3)}},
							PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
								Key: "group", Operator: metav1.LabelSelectorOpIn,
								Values: []string{fmt.Sprintf("g%d", (i+2)%bulkGroups), fmt.Sprintf("g%d", (i+3)%bulkGroups)}}}}},
					},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcpP, Port: &named}, {Protocol: &udpP, Port: &num, EndPort: &end}},
				}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To: []networkingv1.NetworkPolicyPeer{
						{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("10.232.%d.0/24", i%40), Except: []string{fmt.Sprintf("10.232.%d.128/25", i%40)}}},
						{NamespaceSelector: &metav1.LabelSelector{}},
					},
				}},
			},
		}
		if ns == "perf" {
			np.Spec.PolicyTypes = np.Spec.PolicyTypes[:1] // keep the server's egress open
			np.Spec.Egress = nil
		}
		_, err := c.admin.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
		return err
	})
}

// holeWatch probes a flow that must stay denied every 20 ms and records
// every time it passed (wall clock).
type holeWatch struct {
	mu     sync.Mutex
	paused bool
	holes  []string
	done   chan struct{}
	wg     sync.WaitGroup
}

func startHoleWatch(t testing.TB, from, to *pod) *holeWatch {
	w := &holeWatch{done: make(chan struct{})}
	w.wg.Go(func() {
		for {
			select {
			case <-w.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			w.mu.Lock()
			paused := w.paused
			w.mu.Unlock()
			if paused {
				continue
			}
			at := time.Now()
			if probe(from, to, tcp, 100*time.Millisecond) == nil {
				w.mu.Lock()
				if !w.paused {
					w.holes = append(w.holes, at.Format("15:04:05.000"))
					t.Logf("HOLE: %s -> %s tcp passed at %s", from, to, at.Format("15:04:05.000"))
				}
				w.mu.Unlock()
			}
		}
	})
	return w
}

func (w *holeWatch) pause() {
	w.mu.Lock()
	w.paused = true
	w.mu.Unlock()
}

func (w *holeWatch) resume() {
	// Let the last flip's delete settle first: the flip loop already waited
	// until the flow is denied again.
	w.mu.Lock()
	w.paused = false
	w.mu.Unlock()
}

func (w *holeWatch) stop() []string {
	close(w.done)
	w.wg.Wait()
	return w.holes
}
