package policy_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/pkg/policy"
)

// TestIncrementalClusterWorld applies random changes of every kind the
// benchmarks time (pod relabels, pods added and deleted, policies added,
// replaced and deleted, namespace relabels, pods moving between nodes) to
// a small version of the benchmark world, in one node's view and in the
// cluster view, and checks after each Sync that every endpoint equals its
// rebuild from scratch, exactly, and that a fresh Build of the same objects
// compiles the same endpoints (modulo identity numbers). Endpoints are
// patched (patchMaxChanged) or rebuilt, at random.
func TestIncrementalClusterWorld(t *testing.T) {
	seed := policy.TestingSeed(t)
	r := rand.New(rand.NewPCG(seed, 2))
	defer policy.SetPatchMaxChanged(policy.PatchMaxChanged())
	runs := 6
	if testing.Short() || policy.RaceEnabled {
		runs = 2
	}
	for run := range runs {
		s := benchworld.Generate(300+r.IntN(300), 30+r.IntN(60))
		opts := policy.Options{}
		if run%2 == 0 {
			opts.NodeName = s.Pods[r.IntN(len(s.Pods))].NodeName
		}
		if run%3 == 2 {
			opts.ClusterDefaultDeny = policy.DefaultExemptions()
		}
		c := policy.Build(s, opts)
		var history []string
		for step := range 60 {
			policy.SetPatchMaxChanged([]int{0, 4, 256}[r.IntN(3)])
			history = append(history, mutateCluster(r, &s, c, step))
			c.Sync()
			policy.CheckIncrementalState(t, c)
			if t.Failed() {
				t.Fatalf("run %d step %d: history %v", run, step, history)
			}
			if step%10 == 9 {
				if got, want := policy.CanonicalEndpoints(c), policy.CanonicalEndpoints(policy.Build(s, opts)); got != want {
					t.Fatalf("run %d step %d: endpoints differ from a full build:\n%s\nhistory %v", run, step, policy.LineDiff(got, want), history)
				}
			}
		}
	}
}

// mutateCluster applies one random change to s and c alike.
func mutateCluster(r *rand.Rand, s *policy.Snapshot, c *policy.Compiler, step int) string {
	switch r.IntN(8) {
	case 0, 1: // relabel, as compilebench does, or to another app of the world
		i := r.IntN(len(s.Pods))
		p := benchworld.Relabel(s.Pods[i], r.IntN(6))
		if r.IntN(2) == 0 {
			p.Labels["app"] = benchworld.App(r.IntN(benchworld.Apps))
		}
		s.Pods[i] = p
		c.SetPod(p)
		return "relabel " + p.Key().String()
	case 2: // new pod, on some node
		q := s.Pods[r.IntN(len(s.Pods))]
		q.Name = fmt.Sprintf("new-%d", step)
		q.Labels = maps.Clone(q.Labels)
		q.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 254, byte(step >> 8), byte(step)})}
		s.Pods = append(s.Pods, q)
		c.SetPod(q)
		return "add " + q.Key().String()
	case 3: // pod deleted
		i := r.IntN(len(s.Pods))
		k := s.Pods[i].Key()
		s.Pods = slices.Delete(s.Pods, i, i+1)
		c.DeletePod(k)
		return "delete " + k.String()
	case 4: // policy added or replaced
		p := s.Pods[r.IntN(len(s.Pods))]
		np := benchworld.UpdatePolicy(p, r.IntN(benchworld.Apps))
		np.Name = fmt.Sprintf("upd-%d", r.IntN(4))
		if i := slices.IndexFunc(s.Policies, func(o *networkingv1.NetworkPolicy) bool { return o.Namespace == np.Namespace && o.Name == np.Name }); i >= 0 {
			s.Policies[i] = np
		} else {
			s.Policies = append(s.Policies, np)
		}
		if err := c.SetPolicy(np); err != nil {
			panic(err)
		}
		return "set policy " + np.Namespace + "/" + np.Name
	case 5: // policy deleted
		i := r.IntN(len(s.Policies))
		np := s.Policies[i]
		s.Policies = slices.Delete(s.Policies, i, i+1)
		c.DeletePolicy(policy.PolicyKey{Namespace: np.Namespace, Name: np.Name})
		return "delete policy " + np.Namespace + "/" + np.Name
	case 6: // namespace relabelled
		i := r.IntN(len(s.Namespaces))
		ns := s.Namespaces[i]
		ns.Labels = map[string]string{"team": fmt.Sprintf("t%d", r.IntN(10)), "env": []string{"prod", "staging", "dev"}[r.IntN(3)]}
		s.Namespaces[i] = ns
		c.SetNamespace(ns)
		return "namespace " + ns.Name
	default: // pod moved to another node (in or out of the view)
		i := r.IntN(len(s.Pods))
		p := s.Pods[i]
		p.NodeName = s.Pods[r.IntN(len(s.Pods))].NodeName
		s.Pods[i] = p
		c.SetPod(p)
		return "move " + p.Key().String()
	}
}
