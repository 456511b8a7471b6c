package policy

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ztnet/zt/pkg/identity"
)

// idOf is the identity the ipcache gives address ip.
func idOf(t *testing.T, c *Compiler, ip string) identity.ID {
	t.Helper()
	a := netip.MustParseAddr(ip)
	e, ok := c.IPCache().Get(netip.PrefixFrom(a, a.BitLen()))
	if !ok {
		t.Fatalf("%s has no ipcache entry", ip)
	}
	return e.ID
}

// Pods that differ only in volatile labels (pod-template-hash here) that no
// peer selector tests share an identity: a Deployment's rollout makes no
// new identity and changes no other endpoint. A policy that starts testing
// the label (or its absence) tells them apart, and they merge again once it
// is gone; other labels are always in the identity. Verdicts follow the
// reference evaluator throughout.
func TestIdentityHoldsTestedVolatileLabels(t *testing.T) {
	ns := []Namespace{mkNS("x")}
	pods := []Pod{
		mkPod("x/db", "10.0.0.1", "", "app", "db"),
		mkPod("x/web-1", "10.0.0.2", "", "app", "web", "pod-template-hash", "aaa"),
		mkPod("x/web-2", "10.0.0.3", "", "app", "web", "pod-template-hash", "bbb"),
		mkPod("x/solo", "10.0.0.4", "", "app", "web"),
		mkPod("x/canary", "10.0.0.6", "", "app", "web", "pod-template-hash", "aaa", "canary", "yes"),
	}
	base := `
metadata: {namespace: x, name: web-to-db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]`
	hash := `
---
metadata: {namespace: x, name: hash-aaa}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {pod-template-hash: aaa}}}], ports: [{port: 6000}]}]`
	noHash := `
---
metadata: {namespace: x, name: no-hash}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod-template-hash, operator: DoesNotExist}]}}], ports: [{port: 7000}]}]`

	// Verdicts, against the reference, with and without the policies
	// testing the volatile label.
	runSpecCase(t, specCase{ns: ns, pods: pods, policies: base, checks: []check{
		{"x/web-1", "x/db", "TCP", 5432, true}, {"x/web-2", "x/db", "TCP", 5432, true},
		{"x/solo", "x/db", "TCP", 5432, true}, {"x/web-1", "x/db", "TCP", 6000, false},
	}})
	runSpecCase(t, specCase{ns: ns, pods: pods, policies: base + noHash, checks: []check{
		{"x/solo", "x/db", "TCP", 7000, true}, {"x/web-2", "x/db", "TCP", 7000, false},
	}})
	runSpecCase(t, specCase{ns: ns, pods: pods, policies: base + hash + noHash, checks: []check{
		{"x/web-1", "x/db", "TCP", 6000, true}, {"x/web-2", "x/db", "TCP", 6000, false},
		{"x/canary", "x/db", "TCP", 6000, true}, {"x/web-2", "x/db", "TCP", 5432, true},
		{"x/solo", "x/db", "TCP", 7000, true}, {"x/web-2", "x/db", "TCP", 7000, false},
		{"x/solo", "x/db", "TCP", 6000, false},
	}})

	for _, build := range []bool{true, false} {
		var c *Compiler
		if build {
			c = Build(Snapshot{Namespaces: ns, Pods: pods, Policies: mkPolicies(t, base)}, Options{})
		} else {
			c = New(Options{})
			c.SetNamespace(ns[0])
			for _, p := range pods {
				c.SetPod(p)
			}
			for _, np := range mkPolicies(t, base) {
				if err := c.SetPolicy(np); err != nil {
					t.Fatal(err)
				}
			}
			c.Sync()
		}
		web := idOf(t, c, "10.0.0.2")
		if idOf(t, c, "10.0.0.3") != web || idOf(t, c, "10.0.0.4") != web {
			t.Fatalf("build=%v: web pods differing in an untested volatile label have identities %d, %d, %d, want one", build,
				web, idOf(t, c, "10.0.0.3"), idOf(t, c, "10.0.0.4"))
		}
		if ident, _ := c.Identity(web); len(ident.Labels.PodLabels) != 1 || ident.Labels.PodLabels["app"] != "web" {
			t.Errorf("build=%v: identity labels %v, want only app=web", build, ident.Labels.PodLabels)
		}
		// canary, tested by no policy either, is no volatile label.
		if ident, _ := c.Identity(idOf(t, c, "10.0.0.6")); ident.ID == web || ident.Labels.PodLabels["canary"] != "yes" {
			t.Errorf("build=%v: canary pod's identity %d labels %v, want its own, with canary=yes", build, ident.ID, ident.Labels.PodLabels)
		}
		dbBefore, _ := c.Endpoint(PodKey{"x", "db"})
		nIDs := len(c.Identities())

		// A rollout: a pod of a new ReplicaSet arrives.
		c.SetPod(mkPod("x/web-3", "10.0.0.5", "", "app", "web", "pod-template-hash", "ccc"))
		ch := c.Sync()
		if !slices.Equal(ch.Endpoints, []PodKey{{"x", "web-3"}}) || len(c.Identities()) != nIDs || idOf(t, c, "10.0.0.5") != web {
			t.Errorf("build=%v: rollout changed endpoints %v, identities %d -> %d, new pod's identity %d (web %d); want only its own endpoint, the same identity",
				build, ch.Endpoints, nIDs, len(c.Identities()), idOf(t, c, "10.0.0.5"), web)
		}
		if db, _ := c.Endpoint(PodKey{"x", "db"}); db != dbBefore {
			t.Errorf("build=%v: rollout rebuilt x/db's endpoint", build)
		}

		// Policies testing the hash and its absence.
		extra := mkPolicies(t, hash[5:]+noHash)
		for _, np := range extra {
			if err := c.SetPolicy(np); err != nil {
				t.Fatal(err)
			}
		}
		c.Sync()
		ids := []identity.ID{idOf(t, c, "10.0.0.2"), idOf(t, c, "10.0.0.3"), idOf(t, c, "10.0.0.4"), idOf(t, c, "10.0.0.5")}
		if len(slices.Compact(slices.Sorted(slices.Values(ids)))) != 4 {
			t.Errorf("build=%v: with the hash tested, identities %v, want four", build, ids)
		}
		for ip, want := range map[string][2]bool{"10.0.0.2": {true, false}, "10.0.0.3": {false, false}, "10.0.0.4": {false, true}, "10.0.0.5": {false, false}} {
			for i, port := range []uint16{6000, 7000} {
				v := c.Evaluate(netip.MustParseAddr(ip), netip.MustParseAddr("10.0.0.1"), ProtoTCP, port)
				if v.Allowed != want[i] {
					t.Errorf("build=%v: %s -> x/db TCP/%d allowed=%v, want %v", build, ip, port, v.Allowed, want[i])
				}
			}
		}
		checkInvariants(t, c)

		// Gone again: the web pods share one identity.
		for _, np := range extra {
			c.DeletePolicy(PolicyKey{np.Namespace, np.Name})
		}
		c.Sync()
		for _, ip := range []string{"10.0.0.3", "10.0.0.4", "10.0.0.5"} {
			if idOf(t, c, ip) != idOf(t, c, "10.0.0.2") {
				t.Errorf("build=%v: after the policies went, %s has identity %d, 10.0.0.2 %d", build, ip, idOf(t, c, ip), idOf(t, c, "10.0.0.2"))
			}
		}
		if v := c.Evaluate(netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1"), ProtoTCP, 6000); v.Allowed {
			t.Errorf("build=%v: TCP/6000 still allowed after its policy went", build)
		}
		checkInvariants(t, c)
	}
}

// Build counts what the cluster-default-deny policies reference (they are
// made by SetNamespace, before Build recounts): an exemption to an ipBlock
// gets its CIDR identity, and one to pods their tested label.
func TestBuildCountsDefaultDenyReferences(t *testing.T) {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(443)
	dd := DefaultExemptions()
	dd.Allow = append(dd.Allow, DefaultDenyAllow{
		Name:  "api",
		To:    networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}},
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
	})
	runSpecCase(t, specCase{
		ns: []Namespace{mkNS("kube-system"), mkNS("x")},
		pods: []Pod{
			mkPod("kube-system/coredns", "10.0.5.1", "", "k8s-app", "kube-dns"),
			mkPod("x/a", "10.0.0.1", "", "app", "web"),
		},
		opts: Options{ClusterDefaultDeny: dd},
		checks: []check{
			{"x/a", "192.0.2.7", "TCP", 443, true},
			{"x/a", "198.51.100.7", "TCP", 443, false},
			{"x/a", "kube-system/coredns", "UDP", 53, true},
		},
	})
}
