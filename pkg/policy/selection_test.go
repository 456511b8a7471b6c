package policy

import (
	"net/netip"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ztnet/zt/pkg/identity"
)

// selWorld is a small cluster whose policies repeat peers across
// namespaces: a namespace-scoped podSelector (never shared between
// namespaces), a namespaceSelector (shared by every policy and direction
// using it), and an ipBlock listed in another order and twice.
func selWorld(t *testing.T) Snapshot {
	s := Snapshot{
		Namespaces: []Namespace{mkNS("x", "team", "a"), mkNS("y", "team", "a"), mkNS("z", "team", "b")},
		Pods: []Pod{
			mkPod("x/web", "10.0.0.1", "", "app", "web"),
			mkPod("x/db", "10.0.0.2", "", "app", "db"),
			mkPod("y/web", "10.0.1.1", "", "app", "web"),
			mkPod("y/db", "10.0.1.2", "", "app", "db"),
			mkPod("z/web", "10.0.2.1", "", "app", "web"),
		},
		HostIPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")},
		Policies: mkPolicies(t, `
metadata: {namespace: x, name: own}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
metadata: {namespace: "y", name: own}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
metadata: {namespace: x, name: team}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]
---
metadata: {namespace: "y", name: team}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}], ports: [{port: 80}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: a}}}]}]
---
metadata: {namespace: x, name: blocks}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.9.0/24, 192.168.8.0/24]}}, {namespaceSelector: {matchLabels: {team: b}}}]}]
---
metadata: {namespace: "y", name: blocks}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {ipBlock: {cidr: 192.168.0.0/16, except: [192.168.8.0/24, 192.168.9.0/24]}}, {namespaceSelector: {matchLabels: {team: b}}}]}]
`),
	}
	for i := range s.Pods {
		s.Pods[i].NodeName = "n1"
	}
	return s
}

func podIdent(t *testing.T, c *Compiler, key string) identity.ID {
	t.Helper()
	for k, st := range c.pods {
		if k.String() == key && len(st.ids) > 0 {
			return st.ids[0]
		}
	}
	t.Fatalf("no identity for pod %s", key)
	return 0
}

// checkFull checks c's incremental state and that a full Build of s
// compiles the same endpoints.
func checkFull(t *testing.T, c *Compiler, s Snapshot, opts Options, what string) {
	t.Helper()
	checkIncrementalState(t, c)
	if got, want := canonicalEndpoints(c), canonicalEndpoints(Build(s, opts)); got != want {
		t.Fatalf("%s: endpoints differ from a full build:\n%s", what, lineDiff(got, want))
	}
	if t.Failed() {
		t.FailNow()
	}
}

func TestSelectionsShared(t *testing.T) {
	for _, opts := range []Options{{}, {NodeName: "n1"}} {
		s := selWorld(t)
		c := Build(s, opts)
		checkFull(t, c, s, opts, "build")
		key := func(ns, name string) PolicyKey { return PolicyKey{Namespace: ns, Name: name} }

		// The same podSelector in two namespaces: two selections, of
		// different identities.
		nx, xs := c.SelectionUsers(key("x", "own"), Ingress, 0)
		ny, ys := c.SelectionUsers(key("y", "own"), Ingress, 0)
		if nx != 1 || ny != 1 {
			t.Fatalf("namespace-scoped peers shared: %d and %d users", nx, ny)
		}
		if want := []identity.ID{podIdent(t, c, "x/web")}; !slices.Equal(xs, want) {
			t.Errorf("x/own peers %v, want %v", xs, want)
		}
		if want := []identity.ID{podIdent(t, c, "y/web")}; !slices.Equal(ys, want) {
			t.Errorf("y/own peers %v, want %v", ys, want)
		}
		if c.policies[key("x", "own")].peers[Ingress][0] == c.policies[key("y", "own")].peers[Ingress][0] {
			t.Fatal("x/own and y/own share a selection")
		}
		// One namespaceSelector, used by three rules in two policies and
		// both directions.
		team := c.policies[key("x", "team")].peers[Ingress][0]
		yt := c.policies[key("y", "team")]
		if yt.peers[Ingress][0] != team || yt.peers[Egress][0] != team || team.refs != 3 {
			t.Fatalf("namespaceSelector team=a not shared: refs %d", team.refs)
		}
		// Peers in another order, and repeated: shared.
		if b := c.policies[key("x", "blocks")].peers[Ingress][0]; b != c.policies[key("y", "blocks")].peers[Ingress][0] || b.refs != 2 {
			t.Fatal("the same peers in another order are not shared")
		}
		if _, ids := c.SelectionUsers(key("x", "blocks"), Ingress, 0); !slices.Contains(ids, identity.Host) || !slices.Contains(ids, podIdent(t, c, "z/web")) {
			t.Errorf("x/blocks peers %v: want the host and z/web", ids)
		}
		// own x, own y, team, blocks.
		if n := c.Selections(); n != 4 {
			t.Errorf("%d selections, want 4", n)
		}

		// Deleting one user keeps the others' peers.
		want := slices.Clone(team.list())
		c.DeletePolicy(key("x", "team"))
		s2 := s
		s2.Policies = slices.DeleteFunc(slices.Clone(s.Policies), func(np *networkingv1.NetworkPolicy) bool {
			return np.Namespace == "x" && np.Name == "team"
		})
		c.Sync()
		if n, ids := c.SelectionUsers(key("y", "team"), Egress, 0); n != 2 || !slices.Equal(ids, want) {
			t.Errorf("after deleting x/team: y/team egress has %d users, peers %v, want 2, %v", n, ids, want)
		}
		checkFull(t, c, s2, opts, "x/team deleted")

		// Replacing a policy keeps the selections both versions use.
		np := s2.Policies[slices.IndexFunc(s2.Policies, func(np *networkingv1.NetworkPolicy) bool {
			return np.Namespace == "y" && np.Name == "team"
		})]
		np2 := np.DeepCopy()
		np2.Spec.Egress = nil
		np2.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if err := c.SetPolicy(np2); err != nil {
			t.Fatal(err)
		}
		c.Sync()
		if c.policies[key("y", "team")].peers[Ingress][0] != team || team.refs != 1 {
			t.Errorf("replaced y/team: selection not kept (refs %d)", team.refs)
		}
		*np = *np2
		checkFull(t, c, s2, opts, "y/team replaced")

		// The last user drops it.
		for _, pk := range []PolicyKey{key("x", "own"), key("y", "own"), key("y", "team"), key("x", "blocks"), key("y", "blocks")} {
			c.DeletePolicy(pk)
		}
		c.Sync()
		if n := c.Selections(); n != 0 {
			t.Errorf("%d selections left without policies", n)
		}
		s2.Policies = nil
		checkFull(t, c, s2, opts, "every policy deleted")
	}
}

// TestSelectionsRelabel moves identities in and out of shared selections
// (a pod relabel, a namespace relabel, the node's addresses) and checks
// every policy using them against a full Build each time.
func TestSelectionsRelabel(t *testing.T) {
	for _, opts := range []Options{{}, {NodeName: "n1"}} {
		s := selWorld(t)
		c := Build(s, opts)
		checkFull(t, c, s, opts, "build")
		team := c.policies[PolicyKey{Namespace: "x", Name: "team"}].peers[Ingress][0]

		setNS := func(i int, kv ...string) {
			s.Namespaces[i] = mkNS(s.Namespaces[i].Name, kv...)
			c.SetNamespace(s.Namespaces[i])
		}
		setPod := func(i int, kv ...string) {
			p := s.Pods[i]
			p.Labels = kvs(kv...)
			s.Pods[i] = p
			c.SetPod(p)
		}
		steps := []struct {
			what string
			do   func()
		}{
			{"z joins team a", func() { setNS(2, "team", "a") }},
			{"z leaves team a", func() { setNS(2, "team", "b") }},
			{"x/web becomes db", func() { setPod(0, "app", "db") }},
			{"x/web back", func() { setPod(0, "app", "web") }},
			{"x leaves team a", func() { setNS(0, "team", "c") }},
			{"x rejoins team a", func() { setNS(0, "team", "a") }},
			{"node moves out of the ipBlock", func() {
				s.HostIPs = []netip.Addr{netip.MustParseAddr("192.168.9.1")}
				c.SetHostIPs(s.HostIPs)
			}},
			{"node moves back", func() {
				s.HostIPs = []netip.Addr{netip.MustParseAddr("192.168.0.1")}
				c.SetHostIPs(s.HostIPs)
			}},
		}
		for _, st := range steps {
			st.do()
			ch := c.Sync()
			checkFull(t, c, s, opts, st.what)
			// Both namespaces' db pods use each changed selection: both
			// endpoints change.
			for _, pk := range []PodKey{{Namespace: "x", Name: "db"}, {Namespace: "y", Name: "db"}} {
				if !slices.Contains(ch.Endpoints, pk) {
					t.Errorf("%s: endpoint %s not updated (changed %v)", st.what, pk, ch.Endpoints)
				}
			}
		}
		if want := []identity.ID{podIdent(t, c, "x/db"), podIdent(t, c, "x/web"), podIdent(t, c, "y/db"), podIdent(t, c, "y/web")}; !slices.Equal(team.list(), sortedIDs(want)) {
			t.Errorf("team a selection %v, want %v", team.list(), want)
		}
	}
}

func sortedIDs(ids []identity.ID) []identity.ID {
	slices.SortFunc(ids, compareID)
	return ids
}
