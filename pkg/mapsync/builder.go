package mapsync

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
)

// Builder keeps the desired state of one compiler and updates it from
// what changed since its previous Update: the prefixes the compiler's
// ipcache journal names, and the endpoints whose compiled policy (an
// immutable *policy.Endpoint, replaced when it changes) or binding
// changed. Of an endpoint whose policy changed, only the rules of the
// peers whose rules differ are written again (its rules are sorted by
// peer, and a policy key names its peer, so one peer's rules alone make
// its keys). Desired costs every entry of the node instead
// (BenchmarkNodeSync compares the two). With Syncer.ApplyDelta, the plan
// of the map writes costs the changes too.
type Builder struct {
	c    *policy.Compiler // nil: the next Update builds anew
	opts Options
	st   State
	ver  uint64 // the ipcache version st.IPCache is at
	eps  map[uint32]*builtEndpoint

	patched int  // endpoints patched (for tests)
	hinted  int  // of which the compiler named the peers to look at
	check   bool // the next Update compares the patched state with Desired's
}

// builtEndpoint is one binding as the state holds it.
type builtEndpoint struct {
	b   Binding
	ep  *policy.Endpoint // nil: the compiler has no such pod
	err error            // what addEndpoint or a patch reported
}

// Delta names the keys at which a desired state may differ from the
// previous one; All: at any key.
type Delta struct {
	All       bool
	IPCache   []netip.Prefix
	Endpoints []uint32
	Policy    []datapath.PolicyKey
	// Drift counts the entries in which the patched state differed from
	// one built anew, when Check asked for the comparison; the state was
	// then rebuilt (All). Not 0 means a bug in the patching.
	Drift int
}

// Empty reports whether nothing changed.
func (d Delta) Empty() bool {
	return !d.All && len(d.IPCache)+len(d.Endpoints)+len(d.Policy) == 0
}

// NewBuilder returns a Builder whose first Update builds the whole state.
func NewBuilder() *Builder { return &Builder{} }

// Check makes the next Update also build the state anew with Desired and
// compare (Delta.Drift): the agent asks for it with every periodic full
// reconcile, so a wrong patch cannot outlive one reconcile interval.
func (b *Builder) Check() { b.check = true }

// Update returns the desired state for the compiled state of c (after its
// Sync) and the endpoints bound on this node, as Desired does, and what
// changed since the previous Update. The state belongs to the Builder: it
// is valid until the next Update and must not be modified.
func (b *Builder) Update(c *policy.Compiler, bindings []Binding, opts Options) (State, Delta, error) {
	st, d, err := b.update(c, bindings, opts)
	if !b.check {
		return st, d, err
	}
	b.check = false
	if d.All {
		return st, d, err // built anew already
	}
	fresh, _ := Desired(c, bindings, opts)
	if n := countDiffs(st, fresh); n > 0 {
		b.c = nil
		st, d, err = b.update(c, bindings, opts)
		d.Drift = n
	}
	return st, d, err
}

// countDiffs counts the keys at which a and b differ.
func countDiffs(a, b State) int {
	p1, _, d1 := diffMaps(a.IPCache, b.IPCache)
	p2, _, d2 := diffMaps(a.Endpoints, b.Endpoints)
	p3, _, d3 := diffMaps(a.Policy, b.Policy)
	return len(p1) + len(d1) + len(p2) + len(d2) + len(p3) + len(d3)
}

func (b *Builder) update(c *policy.Compiler, bindings []Binding, opts Options) (State, Delta, error) {
	var d Delta
	ipc := c.IPCache()
	if b.c != c || b.opts != opts {
		b.c, b.opts, d.All = c, opts, true
		b.st, b.eps = newState(), map[uint32]*builtEndpoint{}
	}
	if changed, ok := ipc.ChangedSince(b.ver); ok && !d.All {
		for _, p := range changed {
			if e, ok := ipc.Get(p); ok {
				b.st.IPCache[p] = ipcacheVal(e)
			} else {
				delete(b.st.IPCache, p)
			}
		}
		d.IPCache = changed
	} else {
		b.st.IPCache = make(map[netip.Prefix]datapath.IPCacheVal, ipc.Len())
		for p, e := range ipc.Entries() {
			b.st.IPCache[p] = ipcacheVal(e)
		}
		d.All = true
	}
	b.ver = ipc.Version()

	seen := make(map[uint32]bool, len(bindings))
	for _, bd := range bindings {
		if seen[bd.Ifindex] {
			// Two pods on one interface: Desired merges them, and the
			// entries are no longer one binding's. Rare: build it all.
			st, err := Desired(c, bindings, opts)
			b.c, b.st = nil, st
			return st, Delta{All: true}, err
		}
		seen[bd.Ifindex] = true
	}
	for id, e := range b.eps {
		if !seen[id] {
			b.remove(id, e, &d)
			delete(b.eps, id)
		}
	}
	var errs []error
	for _, bd := range bindings {
		ep, _ := c.Endpoint(bd.Pod)
		e := b.eps[bd.Ifindex]
		switch {
		case e != nil && e.b == bd && e.ep == ep:
		case e != nil && e.b == bd && e.ep != nil && ep != nil && e.err == nil && b.patch(e, ep, &d):
		default:
			if e != nil {
				b.remove(bd.Ifindex, e, &d)
			}
			e = &builtEndpoint{b: bd, ep: ep}
			var keys []datapath.PolicyKey
			keys, e.err = addEndpoint(b.st, ep, bd, opts)
			b.eps[bd.Ifindex] = e
			d.Endpoints = append(d.Endpoints, bd.Ifindex)
			d.Policy = append(d.Policy, keys...)
		}
		errs = append(errs, e.err)
	}
	return b.st, d, errors.Join(errs...)
}

// remove takes the entries of binding e off the state.
func (b *Builder) remove(id uint32, e *builtEndpoint, d *Delta) {
	delete(b.st.Endpoints, id)
	d.Endpoints = append(d.Endpoints, id)
	if e.ep == nil {
		return
	}
	for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
		for r := range e.ep.Dir(dir).Rules.All() {
			keys, _ := ruleKeys(id, dir, r) // those that failed were never written
			for _, k := range keys {
				delete(b.st.Policy, k)
			}
			d.Policy = append(d.Policy, keys...)
		}
	}
}

// patch brings binding e (written without error) from its endpoint to ep
// by rewriting the keys of the peers whose rules differ. It reports false,
// having changed nothing, when it cannot: the endpoint entry or a rule
// cannot be written (the caller rebuilds the binding, which reports it).
func (b *Builder) patch(e *builtEndpoint, ep *policy.Endpoint, d *Delta) bool {
	id := e.b.Ifindex
	val, err := endpointValue(ep, e.b, b.opts)
	if err != nil {
		return false
	}
	// The compiler patched ep from the endpoint written, recomputing some
	// peers' rules: only those can differ.
	peers, hinted := ep.PatchedFrom(e.ep)
	var runs [2][]peerRun
	for dir := range 2 {
		old, new := e.ep.Dir(policy.Direction(dir)).Rules, ep.Dir(policy.Direction(dir)).Rules
		if hinted {
			runs[dir] = peerRuns(old, new, peers)
		} else {
			var ok bool
			if runs[dir], ok = changedPeers(old, new); !ok {
				return false
			}
		}
		for _, r := range runs[dir] {
			for _, rule := range r.new {
				if _, err := ruleKeys(id, policy.Direction(dir), rule); err != nil {
					return false
				}
			}
		}
	}
	if b.st.Endpoints[id] != val {
		b.st.Endpoints[id] = val
		d.Endpoints = append(d.Endpoints, id)
	}
	for dir := range 2 {
		for _, r := range runs[dir] {
			for _, rule := range r.old {
				keys, _ := ruleKeys(id, policy.Direction(dir), rule)
				for _, k := range keys {
					delete(b.st.Policy, k)
				}
				d.Policy = append(d.Policy, keys...)
			}
			d.Policy, _ = putRules(b.st.Policy, d.Policy, e.b, policy.Direction(dir), slices.Values(r.new))
		}
	}
	e.ep = ep
	b.patched++
	if hinted {
		b.hinted++
	}
	return true
}

// peerRuns returns the runs of peers (sorted) whose rules differ between
// old and new, both sorted by peer first: a binary search each, rather
// than changedPeers' walk of both lists.
func peerRuns(old, new policy.Rules, peers []identity.ID) []peerRun {
	var out []peerRun
	for _, p := range peers {
		if o, n := old.Peer(p), new.Peer(p); !slices.Equal(o, n) {
			out = append(out, peerRun{o, n})
		}
	}
	return out
}

// peerRun is one peer's rules before and after.
type peerRun struct{ old, new []policy.Rule }

// changedPeers returns the runs of the peers whose rules differ between
// old and new (policy.ChangedPeers); false if they come out of peer order,
// which lists sorted as policy.Rules are never do.
func changedPeers(old, new policy.Rules) ([]peerRun, bool) {
	var out []peerRun
	for o, n := range policy.ChangedPeers(old, new) {
		r := peerRun{o, n}
		if len(out) > 0 && r.peer() <= out[len(out)-1].peer() {
			return nil, false // a peer out of order, or seen twice
		}
		out = append(out, r)
	}
	return out, true
}

// peer is the peer whose rules r holds.
func (r peerRun) peer() identity.ID {
	if len(r.old) > 0 {
		return r.old[0].Peer
	}
	return r.new[0].Peer
}
