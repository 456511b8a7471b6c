// Package mapsync keeps the kernel maps equal to the compiled policy.
//
//	policy.Compiler ──Desired()──▶ desired state ──diff──▶ ordered writes ──▶ Maps (kernel)
//	                                      ▲                                     │
//	                                      └──────── realized (cache, or a dump on Reconcile)
//
// A Builder keeps the desired state and patches it from what the compiler
// changed, and Syncer.ApplyDelta diffs only the keys its Delta names, so
// an agent's sync costs its changes rather than the size of its maps.
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
// The programs read policy and ipcache entries only for a direction an
// endpoint isolates. When no endpoint in the maps isolates one until step
// 5 (a node's first load), no packet depends on steps 1 to 4: nothing is
// parked, and with BatchMaps the policy and ipcache puts go to the kernel
// at the same time (Stats.Concurrent).
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
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sync"

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

// BatchMaps is implemented by Maps that write many entries in one call
// (*datapath.Datapath, with BPF_MAP_*_BATCH). Each call writes its entries
// each visible to the datapath as it is written, as if by one single write
// after the other (in slice order; the datapath writes an ipcache call's
// host addresses, then its shorter prefixes); on error it returns how many
// entries it wrote (deletes: handled; a missing key is no error). mapsync
// uses one call per step of the order above and never merges steps, so a
// batch changes nothing the order guarantees. Calls on different maps must
// be safe at the same time: when no endpoint is isolated before step 5 (a
// node's first load), no packet depends on the order of steps 1 to 4, and
// the policy and ipcache puts run concurrently. Maps without it get one
// write per entry, in the order above.
type BatchMaps interface {
	IPCachePutMany([]datapath.IPCacheKey, []datapath.IPCacheVal) (int, error)
	IPCacheDeleteMany([]datapath.IPCacheKey) (int, error)
	EndpointPutMany([]uint32, []datapath.Endpoint) (int, error)
	EndpointDeleteMany([]uint32) (int, error)
	PolicyPutMany([]datapath.PolicyKey, []datapath.PolicyVal) (int, error)
	PolicyDeleteMany([]datapath.PolicyKey) (int, error)
}

// MaskMaps is implemented by Maps whose policy lookups probe only the
// prefix lengths a mask names (*datapath.Datapath): every policy write
// adds its own lengths, and after each Reconcile the Syncer sets the mask
// to exactly the lengths of the desired policy, dropping those no key
// uses any more.
type MaskMaps interface {
	SetPolicyMask(datapath.PolicyMask) error
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

// ipcacheVal is the kernel's value of a compiler ipcache entry.
func ipcacheVal(e identity.Entry) datapath.IPCacheVal {
	return datapath.IPCacheVal{Identity: datapath.Identity(e.ID), CidrIdentity: datapath.Identity(e.CIDR)}
}

// Desired computes the map contents for the compiled state of c and the
// endpoints bound on this node. The endpoint id is the host ifindex: it is
// stable for the life of the pod's interface and across agent restarts, so
// an adopted map needs no rewrite. Bindings of pods the compiler does not
// know are an error (listed, the rest still computed).
func Desired(c *policy.Compiler, bindings []Binding, opts Options) (State, error) {
	s := newState()
	for p, e := range c.IPCache().Entries() {
		s.IPCache[p] = ipcacheVal(e)
	}
	var errs []error
	for _, b := range bindings {
		ep, _ := c.Endpoint(b.Pod)
		_, err := addEndpoint(s, ep, b, opts)
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

// addEndpoint adds the endpoint entry and policy entries of ep (nil: the
// compiler has no such pod) bound as b to s, and returns the policy keys it
// wrote (possibly repeated). An endpoint that cannot be compiled adds
// nothing; a rule that cannot be is left out. Both are in the error.
func addEndpoint(s State, ep *policy.Endpoint, b Binding, opts Options) ([]datapath.PolicyKey, error) {
	if ep == nil {
		return nil, fmt.Errorf("endpoint %s (ifindex %d): no compiled policy (pod unknown or not on this node)", b.Pod, b.Ifindex)
	}
	val, err := endpointValue(ep, b, opts)
	if err != nil {
		return nil, err
	}
	s.Endpoints[b.Ifindex] = val
	var errs []error
	var written []datapath.PolicyKey
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		var err error
		if written, err = putRules(s.Policy, written, b, d, ep.Dir(d).Rules.All()); err != nil {
			errs = append(errs, err)
		}
	}
	return written, errors.Join(errs...)
}

// putRules puts the policy entries of rules (direction d of the endpoint
// bound as b) into pol and appends their keys to written. A rule that
// cannot be expressed is left out, and in the error.
func putRules(pol map[datapath.PolicyKey]datapath.PolicyVal, written []datapath.PolicyKey, b Binding, d policy.Direction, rules iter.Seq[policy.Rule]) ([]datapath.PolicyKey, error) {
	var errs []error
	for r := range rules {
		keys, err := ruleKeys(b.Ifindex, d, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s rule %v: %w", b.Pod, r, err))
			continue
		}
		for _, k := range keys {
			// Overlapping rules share keys: keep the lowest rule number,
			// so the result does not depend on order.
			if old, ok := pol[k]; ok && old.RuleId <= uint32(r.ID) {
				continue
			}
			pol[k] = datapath.PolicyVal{RuleId: uint32(r.ID), Action: datapath.ActionAllow}
			written = append(written, k)
		}
	}
	return written, errors.Join(errs...)
}

// ruleKeys are the policy keys of rule r of direction d of endpoint id.
func ruleKeys(id uint32, d policy.Direction, r policy.Rule) ([]datapath.PolicyKey, error) {
	return datapath.PolicyKeys(datapath.PortRule{
		EndpointID: id,
		Dir:        datapath.Dir(d),
		Peer:       datapath.Identity(r.Peer),
		Proto:      uint8(r.Protocol),
		Port:       r.Port,
		EndPort:    r.EndPort,
	})
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
	// Concurrent: no endpoint was isolated before step 5, and the policy
	// and ipcache entries were written at the same time (BatchMaps only).
	Concurrent bool
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
	// temps are the temporary identities (TempIdentityBase and up) the
	// realized maps hold: only what a dump found, left by an update that
	// was interrupted. A completed update leaves none.
	temps map[datapath.Identity]bool
	// byPeer indexes the realized policy keys by peer identity, for
	// freeze: every key put since it was built, so also keys deleted since
	// and keys put twice (byPeerLen counts them all). Built by the first
	// freeze that needs it (one pass, as a freeze without it made every
	// time), kept by commit, and dropped whenever the realized state is
	// replaced or it holds more than twice the realized keys.
	byPeer    map[datapath.Identity][]datapath.PolicyKey
	byPeerLen int
}

// setRealized replaces the realized state (nil: unknown).
func (s *Syncer) setRealized(r *State) {
	s.realized, s.byPeer, s.byPeerLen = r, nil, 0
}

// peerKeys returns the policy keys of peer identity id put since the
// index was built (building it): a superset of the realized ones, which
// the caller tells by looking them up in the realized state.
func (s *Syncer) peerKeys(id datapath.Identity) []datapath.PolicyKey {
	if s.byPeer == nil {
		s.byPeer = map[datapath.Identity][]datapath.PolicyKey{}
		for k := range s.realized.Policy {
			s.byPeer[k.PeerId] = append(s.byPeer[k.PeerId], k)
		}
		s.byPeerLen = len(s.realized.Policy)
	}
	return s.byPeer[id]
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
	s.setRealized(&realized)
	s.temps = tempsIn(realized)
	st, err := s.apply(desired)
	if err != nil {
		return st, err
	}
	if mm, ok := s.maps.(MaskMaps); ok {
		if err := mm.SetPolicyMask(datapath.PolicyMaskOf(maps.Keys(desired.Policy))); err != nil {
			return st, fmt.Errorf("set policy mask: %w", err)
		}
	}
	return st, nil
}

// Apply writes the difference between the last realized state and desired.
// Without an earlier Reconcile it reconciles.
func (s *Syncer) Apply(desired State) (Stats, error) {
	if s.realized == nil {
		return s.Reconcile(desired)
	}
	return s.apply(desired)
}

// ApplyDelta is Apply for a desired state that differs from the state
// this Syncer last wrote only at the keys d names (a Builder's Update
// since then): the plan looks at those keys alone, so an update costs
// its changes and not the size of the maps. Without an earlier
// Reconcile, after a failed or refused update, or with d.All, it is Apply.
func (s *Syncer) ApplyDelta(desired State, d Delta) (Stats, error) {
	if s.realized == nil || d.All {
		return s.Apply(desired)
	}
	return s.applyWith(desired, &d)
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

// entry is one key and value of a map.
type entry[K comparable, V comparable] struct {
	k K
	v V
}

// diffMaps returns the entries of want that have lacks or holds with
// another value (added counts the keys have lacks), and the keys of have
// that want lacks. It is one pass over want; have is only walked when a
// key of it may be missing from want.
func diffMaps[K comparable, V comparable](have, want map[K]V) (put []entry[K, V], added int, del []K) {
	if len(have) == 0 {
		put = make([]entry[K, V], 0, len(want))
	}
	common := 0
	for k, v := range want {
		old, ok := have[k]
		if ok {
			common++
			if old == v {
				continue
			}
		} else {
			added++
		}
		put = append(put, entry[K, V]{k, v})
	}
	if common < len(have) {
		for k := range have {
			if _, ok := want[k]; !ok {
				del = append(del, k)
			}
		}
	}
	return put, added, del
}

// diffKeys is diffMaps for maps that can differ only at keys (which may
// repeat): it looks at those alone.
func diffKeys[K comparable, V comparable](have, want map[K]V, keys []K) (put []entry[K, V], added int, del []K) {
	done := make(map[K]struct{}, len(keys))
	for _, k := range keys {
		if _, ok := done[k]; ok {
			continue
		}
		done[k] = struct{}{}
		w, inWant := want[k]
		h, inHave := have[k]
		switch {
		case inWant && !inHave:
			put = append(put, entry[K, V]{k, w})
			added++
		case inWant && h != w:
			put = append(put, entry[K, V]{k, w})
		case !inWant && inHave:
			del = append(del, k)
		}
	}
	return put, added, del
}

// verifyDelta makes every ApplyDelta also diff the whole states and fail
// when the Delta missed a difference (tests set it).
var verifyDelta = false

// checkDelta compares the number of differences found at a Delta's keys
// (each a real one) with that of the whole states: fewer means the Delta
// missed some.
func checkDelta(r *State, desired State, found int) error {
	if all := countDiffs(*r, desired); all != found {
		return fmt.Errorf("delta missed differences: %d found at its keys, %d in the whole states", found, all)
	}
	return nil
}

// polOps are policy writes of one step, in datapath.PolicyKeyRank order
// (any fixed order would do for the policy hash; this one is cheap).
type polOps struct {
	keys []datapath.PolicyKey
	vals []datapath.PolicyVal
}

func newPolOps(es []entry[datapath.PolicyKey, datapath.PolicyVal]) polOps {
	ranks := make([]uint64, 0, 2*len(es))
	for i := range es {
		r := datapath.PolicyKeyRank(&es[i].k)
		ranks = append(ranks, r[:]...)
	}
	o := polOps{keys: make([]datapath.PolicyKey, len(es)), vals: make([]datapath.PolicyVal, len(es))}
	for j, i := range sortByRank(ranks, 2) {
		o.keys[j], o.vals[j] = es[i].k, es[i].v
	}
	return o
}

func sortPolicyKeys(ks []datapath.PolicyKey) []datapath.PolicyKey {
	slices.SortFunc(ks, datapath.ComparePolicyKeys)
	return ks
}

// ipcOps are ipcache writes of one step, in the ipcidr trie's byte order
// (which is identity.ComparePrefix order); vals is nil for deletes.
type ipcOps struct {
	pfxs []netip.Prefix
	keys []datapath.IPCacheKey
	vals []datapath.IPCacheVal
}

func newIPCOps(es []entry[netip.Prefix, datapath.IPCacheVal], pfxs []netip.Prefix) (ipcOps, error) {
	var o ipcOps
	n := len(es) + len(pfxs)
	if n == 0 {
		return o, nil
	}
	pfx := func(i int) netip.Prefix {
		if i < len(es) {
			return es[i].k
		}
		return pfxs[i-len(es)]
	}
	keys := make([]datapath.IPCacheKey, n)
	ranks := make([]uint64, 0, 3*n)
	for i := range n {
		k, err := datapath.IPCacheKeyFor(pfx(i))
		if err != nil {
			return o, fmt.Errorf("ipcache %s: %w", pfx(i), err)
		}
		keys[i] = k
		r := datapath.IPCacheKeyRank(&k)
		ranks = append(ranks, r[:]...)
	}
	perm := sortByRank(ranks, 3)
	o.pfxs = make([]netip.Prefix, n)
	o.keys = make([]datapath.IPCacheKey, n)
	if len(es) > 0 {
		o.vals = make([]datapath.IPCacheVal, n)
	}
	for j, i := range perm {
		o.pfxs[j], o.keys[j] = pfx(int(i)), keys[i]
		if int(i) < len(es) {
			o.vals[j] = es[i].v
		}
	}
	return o, nil
}

// epOps are endpoint writes of one step, by ifindex.
type epOps struct {
	ids  []uint32
	vals []datapath.Endpoint
}

func (o *epOps) add(id uint32, v datapath.Endpoint) {
	o.ids = append(o.ids, id)
	o.vals = append(o.vals, v)
}

// plan is the ordered writes of one update.
type plan struct {
	loosen, tighten epOps // endpoint puts before / after the rest
	epDel           []uint32
	// freeze: temporary identities holding a copy of an identity's
	// before-rules, and the prefixes parked on them meanwhile.
	freezePol polOps
	freezeIPC ipcOps
	polPut    polOps
	polDel    []datapath.PolicyKey
	ipcPut    ipcOps
	ipcDel    ipcOps

	ipcAdded, freezeIPCAdded, polAdded int // keys not in the realized maps

	// enforcing: an endpoint isolates a direction while steps 1 to 4 run.
	// Only then do the policy and ipcache maps decide any packet (the
	// programs read them for isolated directions only), so only then do
	// those steps need their order.
	enforcing bool
}

// changes is the number of entries the update leaves different.
func (p *plan) changes() int {
	return len(p.loosen.ids) + len(p.tighten.ids) + len(p.epDel) + len(p.polPut.keys) + len(p.polDel) +
		len(p.ipcPut.keys) + len(p.ipcDel.keys)
}

// TempIdentityBase is where the temporary identities of an update start;
// the compiler never allocates this high. They live for one Apply.
const TempIdentityBase datapath.Identity = 0xFFF00000

func (s *Syncer) plan(desired State, d *Delta) (plan, error) {
	r := s.realized
	var ipcPut []entry[netip.Prefix, datapath.IPCacheVal]
	var ipcDel []netip.Prefix
	var ipcAdded int
	var polPut []entry[datapath.PolicyKey, datapath.PolicyVal]
	var polDel []datapath.PolicyKey
	var polAdded int
	var epPut []entry[uint32, datapath.Endpoint]
	var epDel []uint32
	par := false
	if d != nil {
		ipcPut, ipcAdded, ipcDel = diffKeys(r.IPCache, desired.IPCache, d.IPCache)
		polPut, polAdded, polDel = diffKeys(r.Policy, desired.Policy, d.Policy)
		epPut, _, epDel = diffKeys(r.Endpoints, desired.Endpoints, d.Endpoints)
		if verifyDelta {
			found := len(ipcPut) + len(ipcDel) + len(polPut) + len(polDel) + len(epPut) + len(epDel)
			if err := checkDelta(r, desired, found); err != nil {
				return plan{}, err
			}
		}
	} else {
		// The ipcache and policy halves of the plan are independent until
		// the freeze: large ones are computed on two CPUs.
		par = min(len(desired.IPCache), len(desired.Policy)) >= parallelPlan
		both(par, func() { ipcPut, ipcAdded, ipcDel = diffMaps(r.IPCache, desired.IPCache) },
			func() { polPut, polAdded, polDel = diffMaps(r.Policy, desired.Policy) })
		epPut, _, epDel = diffMaps(r.Endpoints, desired.Endpoints)
	}
	p := plan{epDel: epDel, polDel: sortPolicyKeys(polDel), ipcAdded: ipcAdded, polAdded: polAdded}
	slices.Sort(p.epDel)
	slices.SortFunc(epPut, func(a, b entry[uint32, datapath.Endpoint]) int { return cmp.Compare(a.k, b.k) })
	for _, e := range epPut {
		cur, ok := r.Endpoints[e.k]
		if ok && e.v.Flags&isolation&^cur.Flags == 0 && cur.EpId == e.v.EpId {
			p.loosen.add(e.k, e.v)
		} else {
			p.tighten.add(e.k, e.v)
		}
	}

	p.enforcing = enforcingDuring(r.Endpoints, p.epDel, p.loosen)

	// A prefix whose identity changes moves in one ipcache write after all
	// policy writes, from a before-identity whose allows are still as they
	// were. When those allows change in this update, the prefix is first
	// parked on a temporary copy of them. Without isolated endpoints
	// nothing is enforced meanwhile: no window to guard.
	var freezePol []entry[datapath.PolicyKey, datapath.PolicyVal]
	var freezeIPC []entry[netip.Prefix, datapath.IPCacheVal]
	if p.enforcing && len(ipcPut)+len(ipcDel) > 0 && len(polPut)+len(polDel) > 0 {
		freezePol, freezeIPC = s.freeze(desired, ipcPut, ipcDel, polPut, polDel)
	}
	for _, e := range freezeIPC {
		if _, ok := r.IPCache[e.k]; !ok {
			p.freezeIPCAdded++
		}
	}
	var err error
	both(par, func() {
		p.polPut = newPolOps(polPut)
		p.freezePol = newPolOps(freezePol)
	}, func() {
		if p.ipcPut, err = newIPCOps(ipcPut, nil); err != nil {
			return
		}
		if p.ipcDel, err = newIPCOps(nil, ipcDel); err != nil {
			return
		}
		p.freezeIPC, err = newIPCOps(freezeIPC, nil)
	})
	return p, err
}

// parallelPlan is the size of the smaller of the desired ipcache and
// policy from which plan computes their halves on two goroutines: below
// it, starting one costs more than it saves.
const parallelPlan = 4096

// both runs f and g, at the same time when par is set.
func both(par bool, f, g func()) {
	if !par {
		f()
		g()
		return
	}
	var wg sync.WaitGroup
	wg.Go(g)
	f()
	wg.Wait()
}

// enforcingDuring reports whether an endpoint of the realized maps still
// isolates a direction after step 0 (deleted endpoints gone, loosened ones
// rewritten); step 5's endpoints are not in the maps yet.
func enforcingDuring(realized map[uint32]datapath.Endpoint, del []uint32, loosen epOps) bool {
	for id, ep := range realized {
		if ep.Flags&isolation == 0 {
			continue
		}
		if _, gone := slices.BinarySearch(del, id); gone {
			continue
		}
		if i, ok := slices.BinarySearch(loosen.ids, id); ok && loosen.vals[i].Flags&isolation == 0 {
			continue
		}
		return true
	}
	return false
}

// freeze returns the temporary copies of the allows of identities that
// change while prefixes move away from them, and those prefixes parked
// on the copies.
func (s *Syncer) freeze(desired State, ipcPut []entry[netip.Prefix, datapath.IPCacheVal], ipcDel []netip.Prefix,
	polPut []entry[datapath.PolicyKey, datapath.PolicyVal], polDel []datapath.PolicyKey,
) ([]entry[datapath.PolicyKey, datapath.PolicyVal], []entry[netip.Prefix, datapath.IPCacheVal]) {
	r := s.realized
	// Identities whose allows change (the wildcard's change counts for
	// every identity).
	changed := map[datapath.Identity]bool{}
	for _, e := range polPut {
		changed[e.k.PeerId] = true
	}
	for _, k := range polDel {
		changed[k.PeerId] = true
	}
	anyChanged := changed[datapath.IdentityAny]

	// An address's allows are those of its identity, the wildcard's and
	// those of its prefix identity (a host entry's CidrIdentity), so it
	// moves off the pair.
	type move struct {
		pfx  netip.Prefix
		from datapath.IPCacheVal
	}
	var moves []move
	consider := func(pfx netip.Prefix) {
		from := lookupPrefix(r.IPCache, pfx)
		if !(anyChanged || changed[from.Identity] || (from.CidrIdentity != datapath.IdentityAny && changed[from.CidrIdentity])) ||
			from == lookupPrefix(desired.IPCache, pfx) {
			return
		}
		moves = append(moves, move{pfx, from})
	}
	for _, e := range ipcPut {
		consider(e.k)
	}
	for _, pfx := range ipcDel {
		consider(pfx)
	}
	if len(moves) == 0 {
		return nil, nil
	}
	slices.SortFunc(moves, func(a, b move) int { return identity.ComparePrefix(a.pfx, b.pfx) })

	// Temporary identities are numbered from TempIdentityBase in prefix
	// order, skipping any the maps hold.
	used := map[datapath.Identity]bool{}
	for t := range s.temps {
		used[t] = true
	}
	temps := map[datapath.IPCacheVal]datapath.Identity{}
	var tempIDs []datapath.Identity
	next := TempIdentityBase
	freezeIPC := make([]entry[netip.Prefix, datapath.IPCacheVal], 0, len(moves))
	for _, m := range moves {
		t, ok := temps[m.from]
		if !ok {
			for used[next] {
				next++
			}
			t = next
			used[t] = true
			temps[m.from] = t
			tempIDs = append(tempIDs, t)
		}
		freezeIPC = append(freezeIPC, entry[netip.Prefix, datapath.IPCacheVal]{m.pfx, datapath.IPCacheVal{Identity: t}})
	}
	// The realized allows of every frozen identity, the wildcard's and
	// those of its prefix identity are copied to each temporary identity
	// (from the index by peer, not a pass over every allow of the node).
	// Where two land on the same key, the one the kernel probes first
	// wins: the frozen identity's own, then the wildcard's, then the
	// prefix identity's.
	copies := map[datapath.PolicyKey]datapath.PolicyVal{}
	copyTo := func(from datapath.Identity, t datapath.Identity) {
		for _, k := range s.peerKeys(from) {
			if v, ok := r.Policy[k]; ok { // else deleted since the index was built
				k.PeerId = t
				copies[k] = v
			}
		}
	}
	for from, t := range temps {
		if from.CidrIdentity != datapath.IdentityAny && from.CidrIdentity != from.Identity {
			copyTo(from.CidrIdentity, t)
		}
	}
	for _, t := range tempIDs {
		copyTo(datapath.IdentityAny, t)
	}
	for from, t := range temps {
		copyTo(from.Identity, t)
	}
	freezePol := make([]entry[datapath.PolicyKey, datapath.PolicyVal], 0, len(copies))
	for k, v := range copies {
		freezePol = append(freezePol, entry[datapath.PolicyKey, datapath.PolicyVal]{k, v})
	}
	return freezePol, freezeIPC
}

// tempsIn returns the temporary identities st names.
func tempsIn(st State) map[datapath.Identity]bool {
	var out map[datapath.Identity]bool
	add := func(id datapath.Identity) {
		if id >= TempIdentityBase {
			if out == nil {
				out = map[datapath.Identity]bool{}
			}
			out[id] = true
		}
	}
	for _, v := range st.IPCache {
		add(v.Identity)
		add(v.CidrIdentity)
	}
	for k := range st.Policy {
		add(k.PeerId)
	}
	return out
}

// lookupPrefix returns the entry addresses of pfx resolve to in m (the
// entry for pfx itself, else the longest shorter prefix containing it).
func lookupPrefix(m map[netip.Prefix]datapath.IPCacheVal, pfx netip.Prefix) datapath.IPCacheVal {
	for bits := pfx.Bits(); bits >= 0; bits-- {
		q, _ := pfx.Addr().Prefix(bits)
		if v, ok := m[q]; ok {
			return v
		}
	}
	return datapath.IPCacheVal{Identity: datapath.IdentityWorld}
}

func (s *Syncer) apply(desired State) (Stats, error) { return s.applyWith(desired, nil) }

// applyWith writes desired; d (nil: any key) names the keys where it may
// differ from the realized state.
func (s *Syncer) applyWith(desired State, d *Delta) (Stats, error) {
	var st Stats
	r := s.realized
	p, err := s.plan(desired, d)
	if err != nil {
		if d != nil {
			// The caller's next Delta will not name these keys again.
			s.setRealized(nil)
		}
		return st, fmt.Errorf("refused, previous state kept: %w", err)
	}

	// Refuse what cannot fit before writing anything: during the update a
	// map holds its realized entries plus the new and temporary ones.
	capa := s.maps.Capacity()
	for _, c := range []struct {
		name      string
		have, add int
		max       uint32
	}{
		{"ipcache", len(r.IPCache), p.ipcAdded + p.freezeIPCAdded, capa.IPCache},
		{"endpoints", len(r.Endpoints), len(p.tighten.ids), capa.Endpoints},
		{"policy", len(r.Policy), p.polAdded + len(p.freezePol.keys), capa.Policy},
	} {
		if c.max > 0 && c.have+c.add > int(c.max) {
			if d != nil {
				s.setRealized(nil) // as above
			}
			return st, fmt.Errorf("map %s: update needs %d entries (%d present + %d new), capacity %d: refused, previous state kept: %w",
				c.name, c.have+c.add, c.have, c.add, c.max, ErrMapFull)
		}
	}

	// Each step is one batch where the Maps support it; the steps never
	// merge, so the order of the package doc holds between them.
	w := writer{m: s.maps, st: &st}
	w.b, _ = s.maps.(BatchMaps)
	polPut := func() error { return w.polPut(p.polPut) }
	ipcPut := func() error { return w.ipcPut(p.ipcPut) }
	if !p.enforcing && w.b != nil && len(p.polPut.keys) > 0 && len(p.ipcPut.keys) > 0 {
		// Nothing is isolated until step 5 (a node's first load, say):
		// no packet depends on the order of steps 1 to 4, and the two
		// largest go to the kernel at the same time.
		st.Concurrent = true
		polPut = func() error { return w.putBoth(p.polPut, p.ipcPut) }
		ipcPut = func() error { return nil }
	}
	for _, step := range []func() error{
		// 0. Endpoints that go away or only lose isolation: what they
		// pass afterwards is allowed, so doing it first opens nothing.
		func() error { return w.epDel(p.epDel) },
		func() error { return w.epPut(p.loosen) },
		// 1. Park moving prefixes on frozen copies of their old allows.
		func() error { return w.polPut(p.freezePol) },
		func() error { return w.ipcPut(p.freezeIPC) },
		// 2, 3. Allows: add, then remove. An address that stays on its
		// identity sees its allows grow then shrink to the final set.
		polPut,
		func() error { return w.polDel(p.polDel) },
		// 4. Addresses move to their final identities in one write each.
		ipcPut,
		func() error { return w.ipcDel(p.ipcDel) },
		// 5. New endpoints and isolation gained, now their allows exist.
		func() error { return w.epPut(p.tighten) },
		// 6. Drop the frozen copies; nothing resolves to them any more.
		func() error { return w.polDel(p.freezePol.keys) },
	} {
		if err := step(); err != nil {
			// A failed write leaves the cache unsure of the kernel: the
			// next Apply reconciles from a dump (which also removes
			// temporary entries).
			s.setRealized(nil)
			return st, err
		}
	}
	st.Frozen = len(p.freezeIPC.keys)
	s.commit(desired, &p)
	return st, nil
}

// commit records that the maps now hold desired: a large update copies
// it, a small one patches the cache. Desired holds no temporary identity
// (the compiler never numbers one that high) and step 6 removed the
// update's own, so none is left.
func (s *Syncer) commit(desired State, p *plan) {
	s.temps = nil
	if n := p.changes(); n > 0 && 4*n > len(desired.IPCache)+len(desired.Policy)+len(desired.Endpoints) {
		c := desired.clone()
		s.setRealized(&c)
		return
	}
	r := s.realized
	for _, i := range p.epDel {
		delete(r.Endpoints, i)
	}
	for _, o := range []epOps{p.loosen, p.tighten} {
		for i, id := range o.ids {
			r.Endpoints[id] = o.vals[i]
		}
	}
	for i, k := range p.polPut.keys {
		r.Policy[k] = p.polPut.vals[i]
		if s.byPeer != nil {
			s.byPeer[k.PeerId] = append(s.byPeer[k.PeerId], k)
			s.byPeerLen++
		}
	}
	for _, k := range p.polDel {
		delete(r.Policy, k)
	}
	if s.byPeerLen > 2*len(r.Policy)+4096 {
		s.byPeer, s.byPeerLen = nil, 0 // mostly deleted keys: built again when needed
	}
	for i, pfx := range p.ipcPut.pfxs {
		r.IPCache[pfx] = p.ipcPut.vals[i]
	}
	for _, pfx := range p.ipcDel.pfxs {
		delete(r.IPCache, pfx)
	}
}

// writer performs the steps of a plan, one batch call per step when the
// Maps support it and one write per entry otherwise, counting writes.
type writer struct {
	m  Maps
	b  BatchMaps // nil: one write per entry
	st *Stats
}

func (w *writer) epDel(ids []uint32) error {
	if len(ids) == 0 {
		return nil
	}
	if w.b != nil {
		n, err := w.b.EndpointDeleteMany(ids)
		w.st.EndpointDeleted += n
		if err != nil {
			return fmt.Errorf("delete endpoints: %w", err)
		}
		return nil
	}
	for _, i := range ids {
		if err := w.m.EndpointDelete(i); err != nil {
			return fmt.Errorf("delete endpoint %d: %w", i, err)
		}
		w.st.EndpointDeleted++
	}
	return nil
}

func (w *writer) epPut(o epOps) error {
	if len(o.ids) == 0 {
		return nil
	}
	if w.b != nil {
		n, err := w.b.EndpointPutMany(o.ids, o.vals)
		w.st.EndpointPut += n
		if err != nil {
			return fmt.Errorf("put endpoints: %w", err)
		}
		return nil
	}
	for j, i := range o.ids {
		if err := w.m.EndpointPut(i, o.vals[j]); err != nil {
			return fmt.Errorf("put endpoint %d: %w", i, err)
		}
		w.st.EndpointPut++
	}
	return nil
}

func (w *writer) polPut(o polOps) error {
	if len(o.keys) == 0 {
		return nil
	}
	if w.b != nil {
		n, err := w.b.PolicyPutMany(o.keys, o.vals)
		w.st.PolicyPut += n
		if err != nil {
			return fmt.Errorf("put policy entries: %w", err)
		}
		return nil
	}
	for i, k := range o.keys {
		if err := w.m.PolicyPut(k, o.vals[i]); err != nil {
			return fmt.Errorf("put policy entry: %w", err)
		}
		w.st.PolicyPut++
	}
	return nil
}

// putBoth writes policy and ipcache entries at the same time, the ipcache
// ones from a second goroutine (BatchMaps take calls on different maps
// concurrently).
func (w *writer) putBoth(pol polOps, ipc ipcOps) error {
	var ist Stats
	iw := writer{m: w.m, b: w.b, st: &ist}
	var ierr error
	var wg sync.WaitGroup
	wg.Go(func() { ierr = iw.ipcPut(ipc) })
	perr := w.polPut(pol)
	wg.Wait()
	w.st.IPCachePut += ist.IPCachePut
	return errors.Join(perr, ierr)
}

func (w *writer) polDel(keys []datapath.PolicyKey) error {
	if len(keys) == 0 {
		return nil
	}
	if w.b != nil {
		n, err := w.b.PolicyDeleteMany(keys)
		w.st.PolicyDeleted += n
		if err != nil {
			return fmt.Errorf("delete policy entries: %w", err)
		}
		return nil
	}
	for _, k := range keys {
		if err := w.m.PolicyDelete(k); err != nil {
			return fmt.Errorf("delete policy entry: %w", err)
		}
		w.st.PolicyDeleted++
	}
	return nil
}

func (w *writer) ipcPut(o ipcOps) error {
	if len(o.keys) == 0 {
		return nil
	}
	if w.b != nil {
		n, err := w.b.IPCachePutMany(o.keys, o.vals)
		w.st.IPCachePut += n
		if err != nil {
			return fmt.Errorf("put ipcache: %w", err)
		}
		return nil
	}
	for i, pfx := range o.pfxs {
		if err := w.m.IPCachePut(pfx, o.vals[i]); err != nil {
			return fmt.Errorf("put ipcache %s: %w", pfx, err)
		}
		w.st.IPCachePut++
	}
	return nil
}

func (w *writer) ipcDel(o ipcOps) error {
	if len(o.keys) == 0 {
		return nil
	}
	if w.b != nil {
		n, err := w.b.IPCacheDeleteMany(o.keys)
		w.st.IPCacheDeleted += n
		if err != nil {
			return fmt.Errorf("delete ipcache: %w", err)
		}
		return nil
	}
	for _, pfx := range o.pfxs {
		if err := w.m.IPCacheDelete(pfx); err != nil {
			return fmt.Errorf("delete ipcache %s: %w", pfx, err)
		}
		w.st.IPCacheDeleted++
	}
	return nil
}

// Realized returns a copy of what the Syncer believes the maps hold.
func (s *Syncer) Realized() (State, bool) {
	if s.realized == nil {
		return State{}, false
	}
	return s.realized.clone(), true
}

// The datapath is the Maps of record, and writes in batches.
var (
	_ Maps      = (*datapath.Datapath)(nil)
	_ BatchMaps = (*datapath.Datapath)(nil)
	_ MaskMaps  = (*datapath.Datapath)(nil)
)
