package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	nsA = "e2e-a"
	nsB = "e2e-b"
)

// Policies of the scenario, applied with kubectl.
const (
	denyIngressYAML = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress
  namespace: e2e-a
spec:
  podSelector:
    matchLabels: {app: server}
  policyTypes: [Ingress]
`
	allowClientsHTTPYAML = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-clients-http
  namespace: e2e-a
spec:
  podSelector:
    matchLabels: {app: server}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels: {role: client}
      ports:
        - protocol: TCP
          port: http
`
	allowGrantedNSEchoYAML = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-granted-ns-echo
  namespace: e2e-a
spec:
  podSelector:
    matchLabels: {app: server}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector:
            matchLabels: {access: granted}
      ports:
        - protocol: UDP
          port: echo
`
)

// timing is one measured propagation.
type timing struct {
	what    string
	d, call time.Duration
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// kubectlFn is a measure action running kubectl.
func (c *cluster) kubectlFn(stdin string, args ...string) func() error {
	return func() error { _, err := c.kubectl(stdin, args...); return err }
}

// TestAgent is the node agent against a real API server, with real
// packets. The steps depend on each other and run in order.
func TestAgent(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	var timings []timing
	// measure runs action (a kubectl or API call) while probing with cond
	// every 10 ms from the moment the call starts, and records the time
	// from the call's start to the first probe that saw the change.
	measure := func(t *testing.T, what string, action func() error, cond func() bool) {
		t.Helper()
		start := time.Now()
		errc := make(chan error, 1)
		var call time.Duration
		go func() {
			err := action()
			call = time.Since(start)
			errc <- err
		}()
		d, ok := poll(start, 5*time.Second, 10*time.Millisecond, cond)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("%s: not enforced within 5 s", what)
		}
		timings = append(timings, timing{what, d, call})
		t.Logf("propagation: %s: %s (the call itself took %s)", what, d.Round(time.Millisecond), call.Round(time.Millisecond))
	}
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "\n%-70s %10s %10s\n", "change", "call took", "enforced")
		for _, x := range timings {
			fmt.Fprintf(&b, "%-70s %7.1f ms %7.1f ms\n", x.what, ms(x.call), ms(x.d))
		}
		t.Logf("propagation from the start of the kubectl/API call to the first probe seeing it:%s", b.String())
	}()

	// ---- 2. RBAC: the agent's token is least privilege ----
	t.Run("least privilege", func(t *testing.T) {
		sa := c.agentClient()
		if _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			t.Errorf("list pods: %v", err)
		}
		if _, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			t.Errorf("list namespaces: %v", err)
		}
		if _, err := sa.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			t.Errorf("list networkpolicies: %v", err)
		}
		if _, err := sa.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			t.Errorf("list servicecidrs: %v", err)
		}
		dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
		ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-", Namespace: "default"},
			InvolvedObject: corev1.ObjectReference{Kind: "Namespace", Name: "default"}, Reason: "E2E", Type: corev1.EventTypeNormal}
		if _, err := sa.CoreV1().Events("default").Create(ctx, ev, dry); err != nil {
			t.Errorf("create event (dry run): %v", err)
		}
		forbidden := map[string]error{}
		_, forbidden["list secrets (all namespaces)"] = sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
		_, forbidden["get secret in zt-system"] = sa.CoreV1().Secrets("zt-system").Get(ctx, "x", metav1.GetOptions{})
		_, forbidden["create configmap (dry run)"] = sa.CoreV1().ConfigMaps("zt-system").Create(ctx,
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, dry)
		_, forbidden["create pod (dry run)"] = sa.CoreV1().Pods("default").Create(ctx, podObject("default", "x", "n", nil), dry)
		forbidden["delete networkpolicy"] = sa.NetworkingV1().NetworkPolicies("default").Delete(ctx, "x", metav1.DeleteOptions{})
		_, forbidden["patch pod status"] = sa.CoreV1().Pods("default").Patch(ctx, "x", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{}, "status")
		_, forbidden["list nodes"] = sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		_, forbidden["list events"] = sa.CoreV1().Events("").List(ctx, metav1.ListOptions{})
		_, forbidden["create token"] = sa.CoreV1().ServiceAccounts("zt-system").CreateToken(ctx, "zt-agent", nil, metav1.CreateOptions{})
		names := make([]string, 0, len(forbidden))
		for k := range forbidden {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if err := forbidden[k]; !apierrors.IsForbidden(err) {
				t.Errorf("%s with the zt-agent token: err = %v, want Forbidden", k, err)
			}
		}
		// The same, as the API server's authorizer sees it.
		sar, err := c.admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: "system:serviceaccount:zt-system:zt-agent",
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "secrets"}},
		}, metav1.CreateOptions{})
		if err != nil || sar.Status.Allowed {
			t.Errorf("SubjectAccessReview list secrets: allowed=%v err=%v, want denied", sar != nil && sar.Status.Allowed, err)
		}
		t.Logf("zt-agent token: get/list/watch pods, namespaces, networkpolicies and create events allowed; %d other requests Forbidden", len(names))
	})
	if t.Failed() {
		t.FailNow()
	}

	// ---- 3 + 4. namespaces, pods in the API and as network namespaces ----
	c.srv.CreateNamespace(t, nsA, map[string]string{"team": "a"})
	c.srv.CreateNamespace(t, nsB, map[string]string{"team": "b"})
	pn := newPodNet(t)
	addPod := func(ns, name string, labels map[string]string) *pod {
		t.Helper()
		p := pn.addPod(ns, name, labels)
		if err := createPodAPI(ctx, c.admin, podObject(ns, name, c.node, labels), p.IP.String()); err != nil {
			t.Fatal(err)
		}
		return p
	}
	server := addPod(nsA, "server", map[string]string{"app": "server"})
	client := addPod(nsA, "client", map[string]string{"role": "client"})
	other := addPod(nsA, "other", map[string]string{"role": "other"})
	clientB := addPod(nsB, "client-b", map[string]string{"role": "client"})
	t.Logf("pods: server %s, client %s, other %s, client-b %s (host veths %s…, node %s)",
		server.IP, client.IP, other.IP, clientB.IP, server.hostIf, c.node)

	// ---- 5. the agent, with only the ServiceAccount kubeconfig ----
	agent := c.newAgent()
	agent.ifindexes = pn.ifindexes
	agent.start()
	ready := agent.mustReady(30 * time.Second)
	t.Logf("zt-agent ready %s after start", ready.Round(time.Millisecond))
	if code, _, err := agent.get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz: %d %v", code, err)
	}
	if !strings.Contains(agent.logs(), "socket hooks attached") {
		t.Logf("note: socket hooks not attached (see the agent log); tc enforces alone")
	}
	checkServiceEgress(t, c, agent)

	base := []*pod{server, client, other, clientB}

	// ---- 6a. no policy: everything reaches everything ----
	t.Run("a no policy", func(t *testing.T) {
		expect(t, allPairs(true, base...)...)
	})
	if t.Failed() {
		t.FailNow()
	}

	// ---- 6b. default deny (ingress) on server ----
	t.Run("b default deny", func(t *testing.T) {
		measure(t, "kubectl apply default-deny (client->server tcp dropped)", c.kubectlFn(denyIngressYAML, "apply", "-f", "-"),
			func() bool { return probe(client, server, tcp, 150*time.Millisecond) != nil })
		var flows []flow
		for _, p := range []*pod{client, other, clientB} {
			flows = append(flows, flow{p, server, tcp, false}, flow{p, server, udp, false},
				// server's egress is not isolated: it reaches everyone and
				// their replies come back.
				flow{server, p, tcp, true}, flow{server, p, udp, true})
		}
		flows = append(flows, allPairs(true, client, other, clientB)...)
		expect(t, flows...)
	})
	if t.Failed() {
		t.FailNow()
	}

	// ---- 6c. allow role=client on the named port http ----
	t.Run("c allow named port from labelled pods", func(t *testing.T) {
		measure(t, "kubectl apply allow role=client port http (client->server passes)",
			c.kubectlFn(allowClientsHTTPYAML, "apply", "-f", "-"),
			func() bool { return probe(client, server, tcp, 300*time.Millisecond) == nil })
		expect(t,
			flow{client, server, tcp, true}, // request and echoed reply
			flow{client, server, udp, false},
			flow{other, server, tcp, false},
			flow{other, server, udp, false},
			flow{clientB, server, tcp, false}, // podSelector alone: same namespace only
			flow{clientB, server, udp, false},
		)
	})
	if t.Failed() {
		t.FailNow()
	}

	// ---- 6d. a pod added later with matching labels ----
	var client2 *pod
	t.Run("d new matching pod", func(t *testing.T) {
		client2 = pn.addPod(nsA, "client2", map[string]string{"role": "client"})
		// Before the API knows it, its address is nobody's: denied.
		if err := probe(client2, server, tcp, 300*time.Millisecond); err == nil {
			t.Fatalf("client2 reached server before its pod existed in the API")
		}
		measure(t, "API create pod client2 role=client + status (client2->server passes)",
			func() error {
				return createPodAPI(ctx, c.admin, podObject(nsA, "client2", c.node, client2.Labels), client2.IP.String())
			},
			func() bool { return probe(client2, server, tcp, 300*time.Millisecond) == nil })
		expect(t, flow{client2, server, tcp, true}, flow{client2, server, udp, false},
			flow{client2, client, tcp, true}, flow{other, client2, udp, true})
	})
	if t.Failed() {
		t.FailNow()
	}
	all := append(base[:len(base):len(base)], client2)

	// ---- 6e. namespace labels flip a namespaceSelector allow ----
	t.Run("e namespace labels", func(t *testing.T) {
		c.apply(allowGrantedNSEchoYAML)
		// Nothing is granted yet: the policy changes nothing observable.
		time.Sleep(500 * time.Millisecond)
		expect(t, flow{clientB, server, udp, false}, flow{client, server, udp, false})

		measure(t, "kubectl label ns e2e-b access=granted (client-b->server udp passes)",
			c.kubectlFn("", "label", "ns", nsB, "access=granted"),
			func() bool { return probe(clientB, server, udp, 300*time.Millisecond) == nil })
		expect(t, flow{clientB, server, udp, true}, flow{clientB, server, tcp, false},
			flow{other, server, udp, false}, flow{client, server, udp, false}, flow{client, server, tcp, true})

		measure(t, "kubectl label ns e2e-b access- (client-b->server udp dropped)",
			c.kubectlFn("", "label", "ns", nsB, "access-"),
			func() bool { return probe(clientB, server, udp, 150*time.Millisecond) != nil })
		expect(t, flow{clientB, server, udp, false}, flow{client, server, tcp, true})
	})
	if t.Failed() {
		t.FailNow()
	}

	// ---- 6f. policies deleted: traffic flows again ----
	t.Run("f delete policies", func(t *testing.T) {
		measure(t, "kubectl delete the 3 policies (other->server passes)",
			c.kubectlFn("", "delete", "networkpolicy", "-n", nsA, "deny-ingress", "allow-clients-http", "allow-granted-ns-echo"),
			func() bool { return probe(other, server, tcp, 300*time.Millisecond) == nil })
		expect(t, allPairs(true, all...)...)
	})
	if t.Failed() {
		t.FailNow()
	}

	// ---- 6g. a policy the API serves but zt rejects → Event ----
	t.Run("g invalid policy event", func(t *testing.T) {
		// The API server validates strictly what it admits today, so no
		// policy zt rejects gets through a create. It still serves objects
		// an older API server stored under looser rules (Kubernetes keeps
		// them readable: "ratcheting"), e.g. a CIDR with a leading zero,
		// which Kubernetes reads as decimal. Such an object is written to
		// etcd directly here, the way it would exist after an upgrade.
		// podSelector matches no pod, so the rest of the scenario does not
		// depend on how zt treats it.
		legacy := `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",` +
			`"metadata":{"name":"legacy-cidr","namespace":"e2e-a","uid":"3c1d5e0a-7a6e-4b8e-9f51-2a7d1e0e2e2e",` +
			`"creationTimestamp":"2021-03-04T05:06:07Z"},` +
			`"spec":{"podSelector":{"matchLabels":{"app":"nothing"}},"policyTypes":["Ingress"],` +
			`"ingress":[{"from":[{"ipBlock":{"cidr":"010.231.0.0/16"}}]}]}}`
		etcdPut(t, c, "/registry/networkpolicies/e2e-a/legacy-cidr", legacy)
		out := c.mustKubectl("", "get", "networkpolicy", "-n", nsA, "legacy-cidr", "-o", "jsonpath={.spec.ingress[0].from[0].ipBlock.cidr}")
		if out != "010.231.0.0/16" {
			t.Fatalf("kubectl get legacy-cidr: cidr %q", out)
		}
		var ev *corev1.Event
		deadline := time.Now().Add(10 * time.Second)
		for ev == nil && time.Now().Before(deadline) {
			evs, err := c.admin.CoreV1().Events(nsA).List(ctx, metav1.ListOptions{
				FieldSelector: "involvedObject.kind=NetworkPolicy,involvedObject.name=legacy-cidr"})
			if err != nil {
				t.Fatal(err)
			}
			for i := range evs.Items {
				if evs.Items[i].Reason == "InvalidNetworkPolicy" {
					ev = &evs.Items[i]
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if ev == nil {
			t.Fatalf("no InvalidNetworkPolicy Event for e2e-a/legacy-cidr within 10 s")
		}
		t.Logf("Event %s %s from %s/%s: %s", ev.Type, ev.Reason, ev.Source.Component, ev.Source.Host, ev.Message)
		if ev.Type != corev1.EventTypeWarning || ev.Source.Component != "zt-agent" || !strings.Contains(ev.Message, "spec.ingress[0].from[0].ipBlock.cidr") {
			t.Errorf("unexpected Event: %+v", ev)
		}
		m := agent.metrics()
		if v, _ := m.sum("zt_invalid_policies"); v != 1 {
			t.Errorf("zt_invalid_policies = %v, want 1", v)
		}
		if v, _ := m.sum("zt_errors_total", "kind", "invalid_policy"); v < 1 {
			t.Errorf(`zt_errors_total{kind="invalid_policy"} = %v, want >= 1`, v)
		}
		// Everything else stays enforced (here: nothing isolates anyone).
		expect(t, flow{other, server, tcp, true}, flow{clientB, server, udp, true})
	})

	// ---- 6h. SIGKILL and restart: enforcement holds, nothing allowed lost ----
	t.Run("h restart", func(t *testing.T) {
		c.apply(denyIngressYAML + "---\n" + allowClientsHTTPYAML + "---\n" + allowGrantedNSEchoYAML)
		start := time.Now()
		c.mustKubectl("", "label", "ns", nsB, "access=granted")
		if _, ok := poll(start, 5*time.Second, 10*time.Millisecond, func() bool {
			return probe(other, server, tcp, 150*time.Millisecond) != nil &&
				probe(clientB, server, udp, 300*time.Millisecond) == nil
		}); !ok {
			t.Fatalf("policies not enforced within 5 s")
		}
		expect(t, flow{client, server, tcp, true}, flow{other, server, tcp, false},
			flow{clientB, server, udp, true}, flow{other, server, udp, false})

		allowed := startStream(t, clientB, server, 1, 2*time.Millisecond) // allowed: ns granted, port echo
		denied := startStream(t, other, server, 2, 5*time.Millisecond)    // denied
		time.Sleep(500 * time.Millisecond)

		killedAt := time.Now()
		if err := agent.stop(syscall.SIGKILL, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		// The gap: no agent. The pinned maps and links keep enforcing.
		var gapAllowed, gapDenied, gapBad int
		for time.Since(killedAt) < 1500*time.Millisecond {
			if err := probe(client, server, tcp, 500*time.Millisecond); err != nil {
				gapBad++
				t.Errorf("during the gap: client->server tcp blocked: %v", err)
			} else {
				gapAllowed++
			}
			if probe(other, server, tcp, 100*time.Millisecond) == nil {
				gapBad++
				t.Errorf("during the gap: other->server tcp passed")
			} else {
				gapDenied++
			}
		}
		gap := time.Since(killedAt)
		agent.start()
		ready := agent.mustReady(30 * time.Second)
		t.Logf("agent SIGKILLed; gap %s (%d allowed and %d denied probes as expected, %d wrong); restarted agent ready %s after start",
			gap.Round(time.Millisecond), gapAllowed, gapDenied, gapBad, ready.Round(time.Millisecond))
		// Let the restarted agent reconcile under the streams.
		time.Sleep(1500 * time.Millisecond)
		// Nothing changed while it was down: it kept every adopted
		// identity number, so no ipcache entry was rewritten.
		m := agent.metrics()
		ipcWrites, _ := m.sum("zt_map_writes_total", "map", "ipcache")
		polWrites, _ := m.sum("zt_map_writes_total", "map", "policy")
		t.Logf("restarted agent's map writes: ipcache %v, policy %v", ipcWrites, polWrites)
		if ipcWrites != 0 {
			t.Errorf("restarted agent rewrote %v ipcache entries over unchanged objects, want 0 (adopted identity numbers kept)", ipcWrites)
		}
		allowed.stop()
		denied.stop()
		time.Sleep(300 * time.Millisecond) // in flight
		sent := allowed.sent.Load()
		got, missing := server.udp.received(1, sent)
		t.Logf("allowed UDP stream client-b->server across kill+restart: sent %d, received %d, lost %d (send errors %d) %v",
			sent, got, int(sent)-got, allowed.errs.Load(), missing)
		if got != int(sent) || sent < 500 {
			t.Errorf("allowed stream: sent %d, received %d; missing seqs %v", sent, got, missing)
		}
		dsent := denied.sent.Load()
		dgot, _ := server.udp.received(2, dsent)
		t.Logf("denied UDP stream other->server: sent %d, received %d", dsent, dgot)
		if dgot != 0 {
			t.Errorf("denied stream: %d of %d datagrams reached the server", dgot, dsent)
		}
		// The restarted agent enforces the same, and applies changes.
		expect(t, flow{client, server, tcp, true}, flow{client2, server, tcp, true}, flow{other, server, tcp, false},
			flow{clientB, server, udp, true}, flow{clientB, server, tcp, false}, flow{other, server, udp, false})
		measure(t, "restarted agent: kubectl label pod other role=client (passes)",
			c.kubectlFn("", "label", "pod", "-n", nsA, "other", "role=client", "--overwrite"),
			func() bool { return probe(other, server, tcp, 300*time.Millisecond) == nil })
		for _, l := range strings.Split(agent.logs(), "\n") {
			if strings.Contains(l, "ready") && strings.Contains(l, "first full sync") {
				t.Logf("agent: %s", l)
			}
		}
	})

	// ---- 6i. metrics ----
	t.Run("i metrics", func(t *testing.T) {
		m := agent.metrics()
		check := func(name string, min float64, labels ...string) float64 {
			t.Helper()
			v, ok := m.sum(name, labels...)
			if !ok || v < min {
				t.Errorf("%s%v = %v (present %v), want >= %v", name, labels, v, ok, min)
			}
			return v
		}
		check("zt_sync_duration_seconds_count", 1)
		check("zt_policy_propagation_seconds_count", 1)
		if v := check("zt_endpoints", 5); v != 5 {
			t.Errorf("zt_endpoints = %v, want 5", v)
		}
		check("zt_map_entries", 5, "map", "endpoints")
		check("zt_map_entries", 5, "map", "ipcache")
		check("zt_map_entries", 1, "map", "policy")
		drops := check("zt_datapath_packets_total", 1, "verdict", "drop", "reason", "policy-denied")
		check("zt_datapath_packets_total", 1, "verdict", "allow")
		if _, ok := m.sum("zt_errors_total"); !ok {
			t.Errorf("zt_errors_total missing")
		}
		errs, _ := m.sum("zt_errors_total")
		sc, _ := m.sum("zt_sync_duration_seconds_count")
		ss, _ := m.sum("zt_sync_duration_seconds_sum")
		pc, _ := m.sum("zt_policy_propagation_seconds_count")
		ps, _ := m.sum("zt_policy_propagation_seconds_sum")
		t.Logf("metrics of the restarted agent: %v syncs (mean %.2f ms), %v propagations (mean %.2f ms), policy-denied drops %v, zt_errors_total %v",
			sc, 1000*ss/max(sc, 1), pc, 1000*ps/max(pc, 1), drops, errs)
	})

	// ---- 6j. a rollout: volatile labels ----
	t.Run("j rollout", func(t *testing.T) {
		// syncs counts the agent's syncs; synced waits for one after
		// syncs returned n0, and for any a burst of events brings (they
		// are at least 100 ms apart).
		syncs := func() float64 {
			n, _ := agent.metrics().sum("zt_sync_duration_seconds_count")
			return n
		}
		synced := func(n0 float64) {
			t.Helper()
			if _, ok := poll(time.Now(), 5*time.Second, 20*time.Millisecond, func() bool { return syncs() > n0 }); !ok {
				t.Fatalf("no agent sync within 5 s")
			}
			time.Sleep(300 * time.Millisecond)
		}
		state := func() (float64, float64) {
			m := agent.metrics()
			w, _ := m.sum("zt_map_writes_total", "map", "policy")
			ids, _ := m.sum("zt_identities")
			return w, ids
		}
		w0, ids0 := state()
		n0 := syncs()
		// Each pod as if its ReplicaSet rolled: a pod-template-hash of its
		// own, tested by no policy.
		c.mustKubectl("", "label", "pod", "-n", nsA, "client", "pod-template-hash=aaa")
		c.mustKubectl("", "label", "pod", "-n", nsA, "client2", "pod-template-hash=bbb")
		c.mustKubectl("", "label", "pod", "-n", nsA, "other", "pod-template-hash=bbb")
		synced(n0)
		w1, ids1 := state()
		t.Logf("pod-template-hash on 3 pods: %v policy map writes, identities %v -> %v", w1-w0, ids0, ids1)
		if w1 != w0 || ids1 != ids0 {
			t.Errorf("an untested pod-template-hash wrote %v policy entries and changed identities %v -> %v, want none",
				w1-w0, ids0, ids1)
		}
		expect(t, flow{client, server, tcp, true}, flow{client2, server, tcp, true}, flow{other, server, tcp, true},
			flow{client, server, udp, false}, flow{client2, server, udp, false})

		// A policy testing the hash tells the pods apart.
		hashPolicy := strings.Replace(strings.Replace(allowGrantedNSEchoYAML, "allow-granted-ns-echo", "allow-hash-bbb-echo", 1),
			"namespaceSelector:\n            matchLabels: {access: granted}", "podSelector:\n            matchLabels: {pod-template-hash: bbb}", 1)
		n0 = syncs()
		measure(t, "kubectl apply allow pod-template-hash=bbb udp echo (client2->server udp passes)",
			c.kubectlFn(hashPolicy, "apply", "-f", "-"),
			func() bool { return probe(client2, server, udp, 300*time.Millisecond) == nil })
		expect(t, flow{client2, server, udp, true}, flow{other, server, udp, true}, flow{client, server, udp, false},
			flow{client, server, tcp, true}, flow{client2, server, tcp, true})
		synced(n0)
		_, ids2 := state()
		if ids2 <= ids0 {
			t.Errorf("with pod-template-hash tested, identities %v, want more than %v", ids2, ids0)
		}
		n0 = syncs()
		measure(t, "kubectl delete that policy (client2->server udp dropped)",
			c.kubectlFn("", "delete", "networkpolicy", "-n", nsA, "allow-hash-bbb-echo"),
			func() bool { return probe(client2, server, udp, 150*time.Millisecond) != nil })
		synced(n0)
		if _, ids3 := state(); ids3 != ids0 {
			t.Errorf("with the policy gone, identities %v, want %v again", ids3, ids0)
		}
		t.Logf("identities: %v untested, %v with pod-template-hash tested", ids0, ids2)
		expect(t, flow{client, server, tcp, true}, flow{client2, server, tcp, true}, flow{client2, server, udp, false})
	})
}

// etcdPut writes value at key in the test API server's etcd, bypassing the
// API server (etcd's JSON gateway; the API server decodes JSON from storage).
func etcdPut(t testing.TB, c *cluster, key, value string) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(c.srv.Dir(), "kube-apiserver-*.log"))
	sort.Strings(logs)
	if len(logs) == 0 {
		t.Fatal("no kube-apiserver log to read --etcd-servers from")
	}
	data, err := os.ReadFile(logs[len(logs)-1])
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`--etcd-servers=(http://[0-9.:]+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("--etcd-servers not found in the kube-apiserver log")
	}
	body, _ := json.Marshal(map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString([]byte(value)),
	})
	resp, err := http.Post(string(m[1])+"/v3/kv/put", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("etcd put %s: %d %s", key, resp.StatusCode, b)
	}
}
