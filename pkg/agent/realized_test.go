package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ztnet/zt/pkg/k8swatch"
	"github.com/ztnet/zt/pkg/policy"
)

// GET /realized: 503 before the first realized sync, then the
// fingerprints of exactly the objects the compiler consumed, equal to
// what a client computes from listing the API; a change is visible only
// once a sync consumed it and published.
func TestRealizedEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", UID: "ns-a", ResourceVersion: "1", Labels: map[string]string{"k": "v"}}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", UID: "pod-p", ResourceVersion: "2", Labels: map[string]string{"app": "p"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.9.0.1"}}},
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "deny", UID: "np-deny", ResourceVersion: "3"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	client := fake.NewClientset(ns, pod, np)
	w, err := k8swatch.New(client, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Start(ctx)
	defer func() { cancel(); w.Shutdown() }()
	if !w.WaitForSync(ctx) {
		t.Fatal("caches not synced")
	}
	a := &Agent{log: zap.NewNop(), watch: w, compiler: policy.New(policy.Options{NodeName: "n"}), metrics: newMetrics(nil),
		bound: map[policy.PodKey]binding{}, missing: map[policy.PodKey]string{}, problems: map[policy.PolicyKey]string{}}
	srv := httptest.NewServer(http.HandlerFunc(a.serveRealized))
	defer srv.Close()

	get := func() (int, RealizedStatus) {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st RealizedStatus
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, st
	}
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("before the first sync: %d, want 503", code)
	}
	// What the lab computes from an API listing.
	api := func() k8swatch.Realized {
		t.Helper()
		nss, _ := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		pods, _ := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		nps, _ := client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
		var r k8swatch.Realized
		r.Namespaces = k8swatch.FingerprintItems(nss.Items)
		r.Pods = k8swatch.FingerprintItems(pods.Items)
		r.NetworkPolicies = k8swatch.FingerprintItems(nps.Items)
		return r
	}
	// One sync: drain, consume, (map writes), publish.
	syncOnce := func() {
		ch, _ := w.Drain()
		a.applyChanges(ch)
		a.compiler.Sync()
		a.realized.publish(0, 0)
	}
	syncOnce()
	code, st := get()
	if code != http.StatusOK {
		t.Fatalf("after a sync: %d", code)
	}
	if d := st.Diff(api()); d != "" {
		t.Fatalf("realized differs from the API: %s", d)
	}
	if st.Pods.Count != 1 || st.Namespaces.Count != 1 || st.NetworkPolicies.Count != 1 || st.Syncs != 1 {
		t.Errorf("status %+v", st)
	}

	// A label change and a deleted policy: not realized until a sync
	// consumed them.
	p2 := pod.DeepCopy()
	p2.Labels["app"] = "q"
	p2.ResourceVersion = "4"
	if _, err := client.CoreV1().Pods("a").Update(ctx, p2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.NetworkingV1().NetworkPolicies("a").Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want := api()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, st = get()
		if st.Diff(want) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("change never realized: %s", st.Diff(want))
		}
		if _, st0 := get(); st0.Syncs == st.Syncs && st0.Diff(want) == "" {
			t.Fatal("realized without a sync")
		}
		time.Sleep(10 * time.Millisecond)
		syncOnce()
	}
	if st.NetworkPolicies.Count != 0 || st.Pods.Count != 1 {
		t.Errorf("after the change: %+v", st)
	}
}
