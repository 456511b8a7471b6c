package policy

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// FuzzCompile decodes arbitrary bytes as a NetworkPolicy (YAML or JSON),
// compiles it into a small fixed world, updates and deletes it, and
// evaluates traffic: errors are fine, panics are not, and an accepted
// policy must agree with the reference evaluator.
func FuzzCompile(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/conformance/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		var sc struct {
			Steps []struct {
				Apply []any `json:"apply"`
			} `json:"steps"`
		}
		if yaml.Unmarshal(b, &sc) != nil {
			continue // templated ones
		}
		for _, st := range sc.Steps {
			for _, o := range st.Apply {
				y, _ := yaml.Marshal(o)
				f.Add(y)
			}
		}
	}
	for _, s := range []string{
		`{"metadata":{"namespace":"x","name":"p"},"spec":{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.0.0.0/16"]}}],"ports":[{"port":"http"},{"port":80,"endPort":90,"protocol":"UDP"}]}]}}`,
		"metadata: {namespace: x, name: p}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Exists}]}\n  egress: [{to: [{namespaceSelector: {}, podSelector: {}}], ports: [{port: http, protocol: SCTP}]}]\n",
		"metadata: {namespace: x, name: p}\nspec: {podSelector: {}, policyTypes: [Egress, Ingress, Egress]}\n",
		"metadata: {namespace: x, name: p}\nspec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: '::/0', except: ['::ffff:0:0/96']}}]}]}\n",
		"metadata: {namespace: x, name: p}\nspec: {podSelector: {}, ingress: [{from: [{}]}]}\n",
		"",
		"{",
	} {
		f.Add([]byte(s))
	}
	world := Snapshot{
		Namespaces: []Namespace{mkNS("x", "team", "a"), mkNS("y")},
		Pods: []Pod{
			mkPod("x/a", "10.0.0.1,fd00::1", "http:8080/TCP,dns:53/UDP", "app", "web", "a", "1"),
			mkPod("x/b", "10.0.0.2", "http:9090/SCTP", "app", "db"),
			mkPod("y/a", "10.1.0.1,fd01::1", ""),
			mkPod("y/pending", "", "http:80/TCP"),
		},
		HostIPs: []netip.Addr{netip.MustParseAddr("10.0.9.1")},
	}
	addrs := []netip.Addr{
		netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.1.0.1"),
		netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd01::1"), netip.MustParseAddr("10.0.9.1"),
		netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"),
	}
	probes := []probe{{ProtoTCP, 80}, {ProtoTCP, 8080}, {ProtoUDP, 53}, {ProtoSCTP, 9090}, {1, 0}}
	f.Fuzz(func(t *testing.T, data []byte) {
		var np networkingv1.NetworkPolicy
		if err := yaml.Unmarshal(data, &np); err != nil {
			return
		}
		if np.Namespace == "" {
			np.Namespace = "x"
		}
		if np.Name == "" {
			np.Name = "fuzz"
		}
		c := Build(world, Options{})
		err := c.SetPolicy(&np)
		full := Build(Snapshot{Namespaces: world.Namespaces, Pods: world.Pods, HostIPs: world.HostIPs, Policies: []*networkingv1.NetworkPolicy{&np}}, Options{DenyFromHost: true})
		if (err == nil) != (len(full.Problems()) == 0) {
			t.Fatalf("SetPolicy error %v but Build problems %v", err, full.Problems())
		}
		w := &refWorld{Namespaces: world.Namespaces, Pods: world.Pods, HostIPs: world.HostIPs}
		if err == nil {
			w.Policies = []*networkingv1.NetworkPolicy{&np}
		}
		for _, src := range addrs {
			for _, dst := range addrs {
				for _, pr := range probes {
					v := c.Evaluate(src, dst, pr.Proto, pr.Port)
					if src.Is4() == dst.Is4() {
						if want := w.refAllowed(src, dst, pr.Proto, pr.Port); v.Allowed != want {
							t.Fatalf("%s -> %s %s: compiler %v, reference %v (%s)", src, dst, pr, v.Allowed, want, fmtVerdict(v))
						}
					}
					_ = full.Evaluate(src, dst, pr.Proto, pr.Port)
				}
			}
		}
		for _, k := range []PodKey{{"x", "a"}, {"y", "pending"}, {"nope", "nope"}} {
			_, _ = c.EvaluatePods(k, PodKey{"x", "b"}, ProtoTCP, 80)
		}
		// Churn around it: relabel, move, delete.
		c.SetPod(mkPod("x/b", "10.0.0.3", "", "app", "web"))
		c.SetNamespace(mkNS("x"))
		c.DeleteNamespace("y")
		c.SetHostIPs(nil)
		c.DeletePolicy(PolicyKey{np.Namespace, np.Name})
		c.Sync()
		if len(c.Problems()) != 0 {
			t.Fatalf("problems after delete: %v", c.Problems())
		}
		checkInvariants(t, c)
	})
}
