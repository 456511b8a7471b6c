package flows

import (
	"container/list"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// PodInfo is what a record shows of a pod.
type PodInfo struct {
	Namespace string
	Name      string
	// Labels must not be modified once handed over: records share it.
	Labels map[string]string
	// Deleted is set by lookups answered from the recently deleted pods.
	Deleted bool
}

// EndpointInfo is a local endpoint (a pod enforced on this node) and the
// policies isolating it, per direction (index datapath.Dir).
type EndpointInfo struct {
	Pod        PodInfo
	IsolatedBy [2][]string
}

// Resolver answers the enricher's questions. Implementations must be safe
// for concurrent use: the agent's sync loop updates what the reader
// goroutine reads.
type Resolver interface {
	// PodByIP returns the pod owning ip, or the one that owned it until it
	// was deleted a short while ago (Deleted set).
	PodByIP(ip netip.Addr) (PodInfo, bool)
	// Endpoint returns the endpoint attached at host interface ifindex
	// (whose endpoint id is epID).
	Endpoint(ifindex, epID uint32) (EndpointInfo, bool)
	// Rule returns what a rule id of the policy map stands for.
	Rule(id uint32) (string, bool)
	// Identity names a non-pod identity, e.g. the CIDR of an ipBlock.
	Identity(id uint32) (string, bool)
}

// Defaults of the recently deleted pod cache.
const (
	DefaultDeletedTTL = 5 * time.Minute
	DefaultDeletedMax = 65536
)

// PodTable maps pod addresses to pods, and keeps deleted pods' addresses
// resolvable for a TTL (bounded in size, oldest forgotten first) so events
// read after a pod went away still name it. Safe for concurrent use.
type PodTable struct {
	mu     sync.RWMutex
	live   map[netip.Addr]PodInfo
	byPod  map[[2]string][]netip.Addr
	recent map[netip.Addr]*list.Element // of *recentPod, oldest at Front
	order  *list.List
	ttl    time.Duration
	max    int
	now    func() time.Time
}

type recentPod struct {
	ip      netip.Addr
	info    PodInfo
	expires time.Time
}

// NewPodTable returns an empty table keeping deleted pods for ttl, at
// most max addresses (zero values: DefaultDeletedTTL, DefaultDeletedMax).
func NewPodTable(ttl time.Duration, max int) *PodTable {
	if ttl <= 0 {
		ttl = DefaultDeletedTTL
	}
	if max <= 0 {
		max = DefaultDeletedMax
	}
	return &PodTable{
		live: map[netip.Addr]PodInfo{}, byPod: map[[2]string][]netip.Addr{},
		recent: map[netip.Addr]*list.Element{}, order: list.New(),
		ttl: ttl, max: max, now: time.Now,
	}
}

// Set records a pod and its addresses; addresses it no longer has are
// kept as recently deleted.
func (t *PodTable) Set(p PodInfo, ips []netip.Addr) {
	p.Deleted = false
	key := [2]string{p.Namespace, p.Name}
	norm := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		norm = append(norm, ip.Unmap())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, old := range t.byPod[key] {
		if !slices.Contains(norm, old) {
			t.forget(old, key)
		}
	}
	for _, ip := range norm {
		if e, ok := t.recent[ip]; ok {
			t.order.Remove(e)
			delete(t.recent, ip)
		}
		t.live[ip] = p
	}
	if len(norm) == 0 {
		delete(t.byPod, key)
	} else {
		t.byPod[key] = norm
	}
}

// Delete removes a pod; its addresses stay resolvable for the TTL.
func (t *PodTable) Delete(namespace, name string) {
	key := [2]string{namespace, name}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ip := range t.byPod[key] {
		t.forget(ip, key)
	}
	delete(t.byPod, key)
}

// forget moves ip from live to recent if key still owns it.
func (t *PodTable) forget(ip netip.Addr, key [2]string) {
	p, ok := t.live[ip]
	if !ok || p.Namespace != key[0] || p.Name != key[1] {
		return // another pod took the address over
	}
	delete(t.live, ip)
	if e, ok := t.recent[ip]; ok {
		t.order.Remove(e)
	}
	p.Deleted = true
	t.recent[ip] = t.order.PushBack(&recentPod{ip: ip, info: p, expires: t.now().Add(t.ttl)})
	t.prune()
}

// prune drops expired entries and keeps at most max.
func (t *PodTable) prune() {
	now := t.now()
	for e := t.order.Front(); e != nil; e = t.order.Front() {
		r := e.Value.(*recentPod)
		if t.order.Len() <= t.max && now.Before(r.expires) {
			return
		}
		t.order.Remove(e)
		delete(t.recent, r.ip)
	}
}

// Lookup implements Resolver.PodByIP.
func (t *PodTable) Lookup(ip netip.Addr) (PodInfo, bool) {
	ip = ip.Unmap()
	t.mu.RLock()
	defer t.mu.RUnlock()
	if p, ok := t.live[ip]; ok {
		return p, true
	}
	if e, ok := t.recent[ip]; ok {
		r := e.Value.(*recentPod)
		if t.now().Before(r.expires) {
			return r.info, true
		}
	}
	return PodInfo{}, false
}

// Len returns the number of live and recently deleted addresses.
func (t *PodTable) Len() (live, recent int) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.live), len(t.recent)
}

// Tables is the endpoint side of a resolver: an immutable snapshot the
// agent builds after each sync and publishes whole.
type Tables struct {
	// Endpoints by host ifindex.
	Endpoints map[uint32]EndpointInfo
	// Rules by rule id.
	Rules map[uint32]string
	// Identities names non-pod identities (CIDRs).
	Identities map[uint32]string
}

// TableResolver is a Resolver from a PodTable and published Tables.
type TableResolver struct {
	Pods   *PodTable
	tables atomic.Pointer[Tables]
}

// NewTableResolver returns a resolver over pods with empty tables.
func NewTableResolver(pods *PodTable) *TableResolver {
	r := &TableResolver{Pods: pods}
	r.tables.Store(&Tables{})
	return r
}

// Publish replaces the tables. t must not be modified afterwards.
func (r *TableResolver) Publish(t *Tables) { r.tables.Store(t) }

// PodByIP implements Resolver.
func (r *TableResolver) PodByIP(ip netip.Addr) (PodInfo, bool) { return r.Pods.Lookup(ip) }

// Endpoint implements Resolver.
func (r *TableResolver) Endpoint(ifindex, _ uint32) (EndpointInfo, bool) {
	e, ok := r.tables.Load().Endpoints[ifindex]
	return e, ok
}

// Rule implements Resolver.
func (r *TableResolver) Rule(id uint32) (string, bool) {
	s, ok := r.tables.Load().Rules[id]
	return s, ok
}

// Identity implements Resolver.
func (r *TableResolver) Identity(id uint32) (string, bool) {
	s, ok := r.tables.Load().Identities[id]
	return s, ok
}
