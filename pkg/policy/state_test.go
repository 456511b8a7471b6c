package policy

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ztnet/zt/pkg/identity"
)

// checkIncrementalState checks that what the compiler maintains
// incrementally equals what it would compute from scratch out of its
// current objects: peer sets and their sorted lists, selections, and every
// endpoint, exactly (rule numbers included), against a rebuild of every
// endpoint without patching or sharing. Call it after Sync.
func checkIncrementalState(t *testing.T, c *Compiler) {
	t.Helper()
	live := c.ids.All()
	// The indexes of what a reference may relabel, from scratch.
	volatile, named := map[string]set[PodKey]{}, map[namedRef]set[PodKey]{}
	for pk, st := range c.pods {
		for k := range st.pod.Labels {
			if volatileLabels[k] {
				if volatile[k] == nil {
					volatile[k] = set[PodKey]{}
				}
				volatile[k].add(pk)
			}
		}
		for _, cp := range st.pod.Ports {
			if cp.Name != "" {
				ref := namedRef{cp.Name, cp.Protocol}
				if named[ref] == nil {
					named[ref] = set[PodKey]{}
				}
				named[ref].add(pk)
			}
		}
	}
	if !maps.EqualFunc(volatile, c.volatilePods, maps.Equal) {
		t.Errorf("pods by volatile label key %v, from scratch %v", c.volatilePods, volatile)
	}
	if !maps.EqualFunc(named, c.namedPods, maps.Equal) {
		t.Errorf("pods by named port %v, from scratch %v", c.namedPods, named)
	}
	byCIDR := map[netip.Prefix]set[identity.ID]{}
	for _, ident := range live {
		for _, p := range ident.Labels.CIDRs {
			addTo(byCIDR, p, ident.ID)
		}
	}
	if !maps.EqualFunc(byCIDR, c.cidrIdents, maps.Equal) {
		t.Errorf("identities by CIDR %v, from scratch %v", c.cidrIdents, byCIDR)
	}
	// The prefixes pod identities carry are those of the rules resolving
	// pods, counted per policy; an owned address's ipcache entry names the
	// identity of the longest referenced prefix holding it (found here by
	// a pass over every one).
	podCIDRs := map[netip.Prefix]int{}
	for _, ps := range c.policies {
		for _, p := range ps.cp.podCIDRs {
			podCIDRs[p]++
		}
	}
	if !maps.Equal(podCIDRs, c.podCIDRRefs) {
		t.Errorf("prefixes pod identities carry %v, from scratch %v", c.podCIDRRefs, podCIDRs)
	}
	for _, ident := range live {
		if ident.Labels.Kind != identity.KindPod {
			continue
		}
		for _, p := range ident.Labels.CIDRs {
			if podCIDRs[p] == 0 {
				t.Errorf("identity %d carries %s, which no rule resolving pods references", ident.ID, p)
			}
		}
	}
	for a, owners := range c.ipOwners {
		if st := c.pods[owners[0]]; st.pod.HostNetwork {
			continue
		}
		want, best := identity.ID(0), -1
		for p := range c.cidrRefs {
			if p.Contains(a) && p.Bits() > best {
				want, best = c.cidrIDs[p], p.Bits()
			}
		}
		if e, ok := c.ipc.Get(netip.PrefixFrom(a, a.BitLen())); ok && e.ID != identity.Host && e.CIDR != want {
			t.Errorf("ipcache %s names prefix identity %d, want %d", a, e.CIDR, want)
		}
	}
	var addrs []netip.Addr
	c.addrs.Ascend(func(a netip.Addr) bool { addrs = append(addrs, a); return true })
	if want := slices.SortedFunc(maps.Keys(c.ipOwners), netip.Addr.Compare); !slices.Equal(addrs, want) {
		t.Errorf("ordered addresses %v, owned ones %v", addrs, want)
	}
	// Selections: each counts the rules using it, and none is kept unused.
	uses := map[*peerSelection]int{}
	defer func() {
		for key, s := range c.selections {
			if s.refs != uses[s] || s.refs <= 0 {
				t.Errorf("selection %q: %d users counted, %d rules use it", key, s.refs, uses[s])
			}
		}
		if len(uses) != len(c.selections) {
			t.Errorf("%d selections in use, %d kept", len(uses), len(c.selections))
		}
	}()
	for pk, ps := range c.policies {
		for d := range 2 {
			for i := range ps.peers[d] {
				r := &ps.cp.rules[d][i]
				want := set[identity.ID]{}
				if !r.allPeers {
					for _, ident := range live {
						if c.ruleMatches(ps.cp, r, ident) {
							want.add(ident.ID)
						}
					}
				}
				s := ps.peers[d][i]
				if key := selectionKey(ps.cp, r); s.key != key || c.selections[key] != s {
					t.Errorf("policy %s %s[%d]: selection %q, want the compiler's %q", pk, Direction(d), i, s.key, key)
				}
				uses[s]++
				if !maps.Equal(s.ids, want) {
					t.Errorf("policy %s %s[%d]: peer set %v, from scratch %v", pk, Direction(d), i, sortedKeys(s.ids, compareID), sortedKeys(want, compareID))
				}
				if got := s.list(); !slices.Equal(got, sortedKeys(want, compareID)) {
					t.Errorf("policy %s %s[%d]: sorted peers %v, want %v", pk, Direction(d), i, got, sortedKeys(want, compareID))
				}
			}
		}
		local := set[PodKey]{}
		for k, st := range c.pods {
			if k.Namespace == pk.Namespace && ps.cp.podSel.Matches(labels.Set(st.pod.Labels)) {
				if st.local {
					local.add(k)
					if !st.selectedBy.has(pk) {
						t.Errorf("pod %s: selectedBy lacks %s", k, pk)
					}
				} else if st.selectedBy.has(pk) {
					t.Errorf("pod %s is not local, but its selectedBy holds %s", k, pk)
				}
			}
		}
		if !maps.Equal(ps.local, local) {
			t.Errorf("policy %s: local %v, from scratch %v", pk, ps.local, local)
		}
		if !c.nsPolicies[pk.Namespace].has(pk) {
			t.Errorf("policy %s missing from its namespace's index", pk)
		}
	}
	for k, st := range c.pods {
		for pk := range st.selectedBy {
			if ps := c.policies[pk]; ps == nil || !ps.local.has(k) {
				t.Errorf("pod %s: selectedBy holds %s, which does not select it", k, pk)
			}
		}
	}
	n := 0
	for _, s := range c.nsPolicies {
		n += len(s)
	}
	if n != len(c.policies) {
		t.Errorf("namespace index holds %d policies, compiler %d", n, len(c.policies))
	}
	for ref, s := range c.namedIdents {
		want := set[identity.ID]{}
		for _, ident := range live {
			if ident.Labels.Kind != identity.KindPod {
				continue
			}
			if _, ok := ident.Labels.NamedPort(ref.name, ref.proto); ok {
				want.add(ident.ID)
			}
		}
		if !maps.Equal(s.ids, want) || !slices.Equal(s.list(), sortedKeys(want, compareID)) {
			t.Errorf("named port %v: identities %v, from scratch %v", ref, s.list(), sortedKeys(want, compareID))
		}
	}
	// Endpoints: exactly what a rebuild of each gives.
	for k, st := range c.pods {
		ep, ok := c.endpoints[k]
		if ok != st.local {
			t.Errorf("pod %s: local=%v but endpoint=%v", k, st.local, ok)
			continue
		}
		if !ok {
			continue
		}
		want := c.buildEndpoint(st, map[string]*memoEntry{}, nil, nil)
		if !endpointEqual(ep, want) {
			t.Errorf("endpoint %s differs from a rebuild:\n  have %+v\n  want %+v", k, ep, want)
		}
	}
	for k := range c.endpoints {
		if _, ok := c.pods[k]; !ok {
			t.Errorf("endpoint %s of a deleted pod", k)
		}
	}
}
