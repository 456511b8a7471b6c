// Package mapsync keeps the kernel maps equal to the compiled policy.
//
//	policy.Compiler ──Desired()──▶ desired state ──diff──▶ ordered writes ──▶ Maps (kernel)
//	                                      ▲                                     │
//	                                      └──────── realized (cache, or a dump on Reconcile)
//
// It never flushes and refills, and it opens no window: traffic allowed
// before and after an update passes at every intermediate step, and traffic
// denied before and after never passes. Writes go in this order:
//
//  0. delete endpoints that are gone, and put endpoints that only lose
//     isolation: everything they pass afterwards is allowed;
//  1. a prefix (pod address or CIDR) whose identity changes while the
//     allows of its old identity (or the wildcard's) change too is first
//     parked on a temporary identity holding a copy of its old allows;
//  2. put policy entries (new allows, changed rule references);
//  3. delete policy entries no longer wanted: an address that keeps its
//     identity sees its allows grow, then shrink to the final set;
//  4. ipcache: each moving prefix goes from an identity whose allows are
//     as before to its final identity, whose allows are final, in one write;
//  5. put new endpoints and those gaining isolation, now their allows exist;
//  6. delete the temporary copies.
//
// Identity numbers are never reused within one compiler, which is what
// makes "an identity's allows" meaningful across an update; after a restart
// the compiler must number identities above those in the adopted maps
// (policy.Options.FirstIdentity). Before writing, the peak size of every
// map (realized + additions + temporary copies) is checked against its
// capacity: an update that cannot fit is refused whole with ErrMapFull, and
// the previous state stays enforced.
package mapsync

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
)

// isolation are the endpoint flags that make the datapath deny by default.
const isolation = datapath.EndpointIngressIsolated | datapath.EndpointEgressIsolated

// ErrMapFull is returned (wrapped, naming the map) when an update does not
// fit; it wraps datapath.ErrMapFull so callers test one sentinel.
var ErrMapFull = datapath.ErrMapFull

// Maps is what mapsync reads and writes: the typed map access of
// *datapath.Datapath, as an interface so unit tests can use a fake.
type Maps interface {
	IPCacheList() (map[netip.Prefix]datapath.IPCacheVal, error)
	IPCachePut(netip.Prefix, datapath.IPCacheVal) error
	IPCacheDelete(netip.Prefix) error
	EndpointList() (map[uint32]datapath.Endpoint, error)
	EndpointPut(uint32, datapath.Endpoint) error
	EndpointDelete(uint32) error
	PolicyList() (map[datapath.PolicyKey]datapath.PolicyVal, error)
	PolicyPut(datapath.PolicyKey, datapath.PolicyVal) error
	PolicyDelete(datapath.PolicyKey) error
	Capacity() datapath.MapSizes
}

// Binding ties a compiled endpoint to the host-side interface of its pod.
type Binding struct {
	Pod     policy.PodKey
	Ifindex uint32
	// Audit passes would-be drops, counting and reporting them as audit.
	Audit bool
}

// Options shape the desired state.
type Options struct {
	// DenyFromHost clears ALLOW_HOST on every endpoint.
	DenyFromHost bool
}

// State is a full set of map contents.
type State struct {
	IPCache   map[netip.Prefix]datapath.IPCacheVal
	Endpoints map[uint32]datapath.Endpoint
	Policy    map[datapath.PolicyKey]datapath.PolicyVal
}

func newState() State {
	return State{
		IPCache:   map[netip.Prefix]datapath.IPCacheVal{},
		Endpoints: map[uint32]datapath.Endpoint{},
		Policy:    map[datapath.PolicyKey]datapath.PolicyVal{},
	}
}

func (s State) clone() State {
	return State{IPCache: maps.Clone(s.IPCache), Endpoints: maps.Clone(s.Endpoints), Policy: maps.Clone(s.Policy)}
}

// Desired computes the map contents for the compiled state of c and the
// endpoints bound on this node. The endpoint id is the host ifindex: it is
// stable for the life of the pod's interface and across agent restarts, so
// an adopted map needs no rewrite. Bindings of pods the compiler does not
// know are an error (listed, the rest still computed).
func Desired(c *policy.Compiler, bindings []Binding, opts Options) (State, error) {
	s := newState()
	for p, id := range c.IPCache().Entries() {
		s.IPCache[p] = datapath.IPCacheVal{Identity: datapath.Identity(id)}
	}
	var errs []error
	for _, b := range bindings {
		ep, ok := c.Endpoint(b.Pod)
		if !ok {
			errs = append(errs, fmt.Errorf("endpoint %s (ifindex %d): no compiled policy (pod unknown or not on this node)", b.Pod, b.Ifindex))
			continue
		}
		val, err := endpointValue(ep, b, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.Endpoints[b.Ifindex] = val
		for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
			for _, r := range ep.Dir(d).Rules {
				keys, err := datapath.PolicyKeys(datapath.PortRule{
					EndpointID: b.Ifindex,
					Dir:        datapath.Dir(d),
					Peer:       datapath.Identity(r.Peer),
					Proto:      uint8(r.Protocol),
					Port:       r.Port,
					EndPort:    r.EndPort,
				})
				if err != nil {
					errs = append(errs, fmt.Errorf("endpoint %s rule %v: %w", b.Pod, r, err))
					continue
				}
				for _, k := range keys {
					// Overlapping rules share keys: keep the lowest rule
					// number, so the result does not depend on order.
					if old, ok := s.Policy[k]; ok && old.RuleId <= uint32(r.ID) {
						continue
					}
					s.Policy[k] = datapath.PolicyVal{RuleId: uint32(r.ID), Action: datapath.ActionAllow}
				}
			}
		}
	}
	return s, errors.Join(errs...)
}

func endpointValue(ep *policy.Endpoint, b Binding, opts Options) (datapath.Endpoint, error) {
	var flags datapath.EndpointFlags
	if ep.Ingress.Isolated {
		flags |= datapath.EndpointIngressIsolated
	}
	if ep.Egress.Isolated {
		flags |= datapath.EndpointEgressIsolated
	}
	if !opts.DenyFromHost {
		flags |= datapath.EndpointAllowHost
	}
	if b.Audit {
		flags |= datapath.EndpointAudit
	}
	v, err := datapath.NewEndpoint(b.Ifindex, flags, ep.IPs...)
	if err != nil {
		return v, fmt.Errorf("endpoint %s: %w", ep.Pod, err)
	}
	return v, nil
}

// Stats counts the writes of one sync.
type Stats struct {
	IPCachePut, IPCacheDeleted   int
	EndpointPut, EndpointDeleted int
	PolicyPut, PolicyDeleted     int
	// Frozen counts prefixes parked on a temporary identity during the
	// update (their writes are included above).
	Frozen int
}

// Writes is the total number of map writes.
func (s Stats) Writes() int {
	return s.IPCachePut + s.IPCacheDeleted + s.EndpointPut + s.EndpointDeleted + s.PolicyPut + s.PolicyDeleted
}

// Syncer writes desired states to the maps. It remembers what it realized,
// so an incremental Apply costs only the difference; Reconcile dumps the
// kernel maps instead and repairs any drift. Not safe for concurrent use.
type Syncer struct {
	maps     Maps
	realized *State // nil until the first Reconcile
}

// New returns a Syncer writing to m. The first call must be Reconcile:
// it adopts whatever the maps already hold (an earlier agent's state).
func New(m Maps) *Syncer { return &Syncer{maps: m} }

// Reconcile dumps the kernel maps and writes the difference to desired.
func (s *Syncer) Reconcile(desired State) (Stats, error) {
	realized, err := s.dump()
	if err != nil {
		return Stats{}, err
	}
	s.realized = &realized
	return s.apply(desired)
}

// Apply writes the difference between the last realized state and desired.
// Without an earlier Reconcile it reconciles.
func (s *Syncer) Apply(desired State) (Stats, error) {
	if s.realized == nil {
		return s.Reconcile(desired)
	}
	return s.apply(desired)
}

func (s *Syncer) dump() (State, error) {
	var st State
	var err error
	if st.IPCache, err = s.maps.IPCacheList(); err != nil {
		return st, fmt.Errorf("dump ipcache: %w", err)
	}
	if st.Endpoints, err = s.maps.EndpointList(); err != nil {
		return st, fmt.Errorf("dump endpoints: %w", err)
	}
	if st.Policy, err = s.maps.PolicyList(); err != nil {
		return st, fmt.Errorf("dump policy: %w", err)
	}
	return st, nil
}

type diff[K comparable, V comparable] struct {
	put map[K]V
	del []K
}

func diffMaps[K comparable, V comparable](have, want map[K]V) diff[K, V] {
	d := diff[K, V]{put: map[K]V{}}
	for k, v := range want {
		if old, ok := have[k]; !ok || old != v {
			d.put[k] = v
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			d.del = append(d.del, k)
		}
	}
	return d
}

func added[K comparable, V any](have map[K]V, put map[K]V) int {
	n := 0
	for k := range put {
		if _, ok := have[k]; !ok {
			n++
		}
	}
	return n
}

// plan is the ordered writes of one update.
type plan struct {
	loosen, tighten []uint32 // endpoint puts before / after the rest
	epDel           []uint32
	// freeze: temporary identities holding a copy of an identity's
	// before-rules, and the prefixes parked on them meanwhile.
	freezePol map[datapath.PolicyKey]datapath.PolicyVal
	freezeIPC map[netip.Prefix]datapath.IPCacheVal
	polPut    map[datapath.PolicyKey]datapath.PolicyVal
	polDel    []datapath.PolicyKey
	ipcPut    map[netip.Prefix]datapath.IPCacheVal
	ipcDel    []netip.Prefix
}

// TempIdentityBase is where the temporary identities of an update start;
// the compiler never allocates this high. They live for one Apply.
const TempIdentityBase datapath.Identity = 0xFFF00000

func (s *Syncer) plan(desired State) plan {
	r := s.realized
	ipc := diffMaps(r.IPCache, desired.IPCache)
	eps := diffMaps(r.Endpoints, desired.Endpoints)
	pol := diffMaps(r.Policy, desired.Policy)
	p := plan{polPut: pol.put, polDel: pol.del, ipcPut: ipc.put, ipcDel: ipc.del, epDel: eps.del,
		freezePol: map[datapath.PolicyKey]datapath.PolicyVal{}, freezeIPC: map[netip.Prefix]datapath.IPCacheVal{}}
	for _, i := range slices.Sorted(maps.Keys(eps.put)) {
		cur, ok := r.Endpoints[i]
		if ok && eps.put[i].Flags&isolation&^cur.Flags == 0 && cur.EpId == eps.put[i].EpId {
			p.loosen = append(p.loosen, i)
		} else {
			p.tighten = append(p.tighten, i)
		}
	}

	// Identities whose allows change (the wildcard's change counts for
	// every identity).
	changed := map[datapath.Identity]bool{}
	for k := range pol.put {
		changed[k.PeerId] = true
	}
	for _, k := range pol.del {
		changed[k.PeerId] = true
	}
	anyChanged := changed[datapath.IdentityAny]

	// A prefix whose identity changes moves in one ipcache write after all
	// policy writes, from a before-identity whose allows are still as they
	// were. When those allows change in this update, the prefix is first
	// parked on a temporary copy of them.
	temps := map[datapath.Identity]datapath.Identity{}
	used := map[datapath.Identity]bool{}
	for _, v := range r.IPCache {
		used[v.Identity] = true
	}
	for k := range r.Policy {
		used[k.PeerId] = true
	}
	next := TempIdentityBase
	moving := slices.Concat(slices.Collect(maps.Keys(ipc.put)), ipc.del)
	slices.SortFunc(moving, identity.ComparePrefix)
	for _, pfx := range moving {
		from := lookupPrefix(r.IPCache, pfx)
		to := lookupPrefix(desired.IPCache, pfx)
		// Without endpoints nothing is enforced yet: no window to guard.
		if from == to || !(anyChanged || changed[from]) || len(r.Endpoints) == 0 {
			continue
		}
		t, ok := temps[from]
		if !ok {
			for used[next] {
				next++
			}
			t = next
			used[t] = true
			temps[from] = t
			for k, v := range r.Policy {
				if k.PeerId == from || k.PeerId == datapath.IdentityAny {
					k.PeerId = t
					p.freezePol[k] = v
				}
			}
		}
		p.freezeIPC[pfx] = datapath.IPCacheVal{Identity: t}
	}
	return p
}

// lookupPrefix returns the identity addresses of pfx resolve to in m (the
// entry for pfx itself, else the longest shorter prefix containing it).
func lookupPrefix(m map[netip.Prefix]datapath.IPCacheVal, pfx netip.Prefix) datapath.Identity {
	for bits := pfx.Bits(); bits >= 0; bits-- {
		q, _ := pfx.Addr().Prefix(bits)
		if v, ok := m[q]; ok {
			return v.Identity
		}
	}
	return datapath.IdentityWorld
}

func (s *Syncer) apply(desired State) (Stats, error) {
	var st Stats
	r := s.realized
	p := s.plan(desired)

	// Refuse what cannot fit before writing anything: during the update a
	// map holds its realized entries plus the new and temporary ones.
	capa := s.maps.Capacity()
	for _, c := range []struct {
		name      string
		have, add int
		max       uint32
	}{
		{"ipcache", len(r.IPCache), added(r.IPCache, p.ipcPut) + added(r.IPCache, p.freezeIPC), capa.IPCache},
		{"endpoints", len(r.Endpoints), len(p.tighten), capa.Endpoints},
		{"policy", len(r.Policy), added(r.Policy, p.polPut) + len(p.freezePol), capa.Policy},
	} {
		if c.max > 0 && c.have+c.add > int(c.max) {
			return st, fmt.Errorf("map %s: update needs %d entries (%d present + %d new), capacity %d: refused, previous state kept: %w",
				c.name, c.have+c.add, c.have, c.add, c.max, ErrMapFull)
		}
	}

	// A failed write leaves the cache unsure of the kernel: the next Apply
	// reconciles from a dump (which also removes temporary entries).
	fail := func(err error) (Stats, error) {
		s.realized = nil
		return st, err
	}
	putEP := func(i uint32) error {
		if err := s.maps.EndpointPut(i, desired.Endpoints[i]); err != nil {
			return fmt.Errorf("put endpoint %d: %w", i, err)
		}
		r.Endpoints[i] = desired.Endpoints[i]
		st.EndpointPut++
		return nil
	}
	putPol := func(k datapath.PolicyKey, v datapath.PolicyVal) error {
		if err := s.maps.PolicyPut(k, v); err != nil {
			return fmt.Errorf("put policy entry: %w", err)
		}
		r.Policy[k] = v
		st.PolicyPut++
		return nil
	}
	delPol := func(k datapath.PolicyKey) error {
		if err := s.maps.PolicyDelete(k); err != nil {
			return fmt.Errorf("delete policy entry: %w", err)
		}
		delete(r.Policy, k)
		st.PolicyDeleted++
		return nil
	}
	putIPC := func(pfx netip.Prefix, v datapath.IPCacheVal) error {
		if err := s.maps.IPCachePut(pfx, v); err != nil {
			return fmt.Errorf("put ipcache %s: %w", pfx, err)
		}
		r.IPCache[pfx] = v
		st.IPCachePut++
		return nil
	}

	// 0. Endpoints that go away or only lose isolation: what they pass
	// afterwards is allowed, so doing it first opens nothing.
	for _, i := range slices.Sorted(slices.Values(p.epDel)) {
		if err := s.maps.EndpointDelete(i); err != nil {
			return fail(fmt.Errorf("delete endpoint %d: %w", i, err))
		}
		delete(r.Endpoints, i)
		st.EndpointDeleted++
	}
	for _, i := range p.loosen {
		if err := putEP(i); err != nil {
			return fail(err)
		}
	}
	// 1. Park moving prefixes on frozen copies of their old allows.
	for _, k := range sortedPolicyKeys(keysOf(p.freezePol)) {
		if err := putPol(k, p.freezePol[k]); err != nil {
			return fail(err)
		}
	}
	for _, pfx := range slices.SortedFunc(maps.Keys(p.freezeIPC), identity.ComparePrefix) {
		if err := putIPC(pfx, p.freezeIPC[pfx]); err != nil {
			return fail(err)
		}
	}
	// 2, 3. Allows: add, then remove. An address that stays on its identity
	// sees its allows grow then shrink to the final set.
	for _, k := range sortedPolicyKeys(keysOf(p.polPut)) {
		if err := putPol(k, p.polPut[k]); err != nil {
			return fail(err)
		}
	}
	for _, k := range sortedPolicyKeys(p.polDel) {
		if err := delPol(k); err != nil {
			return fail(err)
		}
	}
	// 4. Addresses move to their final identities in one write each.
	for _, pfx := range slices.SortedFunc(maps.Keys(p.ipcPut), identity.ComparePrefix) {
		if err := putIPC(pfx, p.ipcPut[pfx]); err != nil {
			return fail(err)
		}
	}
	slices.SortFunc(p.ipcDel, identity.ComparePrefix)
	for _, pfx := range p.ipcDel {
		if err := s.maps.IPCacheDelete(pfx); err != nil {
			return fail(fmt.Errorf("delete ipcache %s: %w", pfx, err))
		}
		delete(r.IPCache, pfx)
		st.IPCacheDeleted++
	}
	// 5. New endpoints and isolation gained, now that their allows exist.
	for _, i := range p.tighten {
		if err := putEP(i); err != nil {
			return fail(err)
		}
	}
	// 6. Drop the frozen copies; nothing resolves to them any more.
	for _, k := range sortedPolicyKeys(keysOf(p.freezePol)) {
		if err := delPol(k); err != nil {
			return fail(err)
		}
	}
	st.Frozen = len(p.freezeIPC)
	return st, nil
}

// Realized returns a copy of what the Syncer believes the maps hold.
func (s *Syncer) Realized() (State, bool) {
	if s.realized == nil {
		return State{}, false
	}
	return s.realized.clone(), true
}

func keysOf[K comparable, V any](m map[K]V) []K { return slices.Collect(maps.Keys(m)) }

func sortedPolicyKeys(ks []datapath.PolicyKey) []datapath.PolicyKey {
	slices.SortFunc(ks, func(a, b datapath.PolicyKey) int {
		return cmp.Or(cmp.Compare(a.EpId, b.EpId), cmp.Compare(a.Dir, b.Dir), cmp.Compare(a.PeerId, b.PeerId),
			cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Prefixlen, b.Prefixlen))
	})
	return ks
}

// The datapath is the Maps of record.
var _ Maps = (*datapath.Datapath)(nil)
