package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/google/btree"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ztnet/zt/pkg/identity"
)

// Options change what the compiler produces. The zero value gives upstream
// Kubernetes semantics for every pod.
type Options struct {
	// NodeName, when set, limits compiled endpoints to pods on that node
	// (the agent's view). Identities still cover every pod.
	NodeName string
	// DenyFromHost drops traffic from the node to its pods on isolated
	// endpoints unless a rule allows it. By default it is allowed, so
	// kubelet probes work (as with every common CNI).
	DenyFromHost bool
	// ClusterDefaultDeny, when set, isolates every pod in both directions
	// (zt's zero-trust option beyond the standard); see DefaultDeny.
	ClusterDefaultDeny *DefaultDeny
	// FirstIdentity, when above identity.FirstAllocated, is the lowest
	// number identities get. An agent adopting pinned maps sets it above
	// every identity they hold, so no number keeps an old meaning while
	// the maps are reconciled (see pkg/mapsync).
	FirstIdentity identity.ID
	// IdentityHints are the adopted ipcache's entries (prefix -> identity
	// numbers, those below FirstIdentity). A new label set whose first
	// address (or referenced prefix) is hinted takes that number, once, if
	// no other label set holds it: the same objects compiled again by a
	// restarted agent give the maps it adopted, so reconciling writes
	// nothing. An address's prefix identity (Entry.CIDR) hints the
	// identity of an ipBlock of exactly that address, which has no entry
	// of its own. A label set that changed while no agent ran may take a
	// number of another meaning; pkg/mapsync moves between any two states
	// without a window, so that is a change like any other.
	IdentityHints map[netip.Prefix]identity.Entry
}

// NamespaceNameLabel is the label the API server puts on every namespace.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

type nsState struct {
	labels map[string]string
	pods   set[PodKey]
}

type podState struct {
	pod Pod
	ids []identity.ID // per IP; empty for pods without identities
	// selectedBy: the policies selecting the pod, kept for local pods only
	// (those that compile to endpoints): a node's agent holds every pod of
	// the cluster, and only its own need to know their policies.
	selectedBy set[PolicyKey]
	local      bool
}

type policyState struct {
	cp *compiledPolicy
	// local: the pods it selects that compile to endpoints (on this node):
	// they are marked when a peer set changes. Pods elsewhere are not
	// recorded (see podState.selectedBy).
	local set[PodKey]
	// visited is the forCandidates call that last visited it.
	visited uint64
	// marked is the Sync generation in which its selected pods were last
	// all marked dirty (a pod selected later is marked on its own).
	marked uint64
	// peers[dir][rule] holds the identities the rule's peers match: a
	// selection shared with every rule of the same peers.
	peers [2][]*peerSelection
}

// peerList returns the sorted peer identities of rule i of direction d.
func (ps *policyState) peerList(d, i int) []identity.ID { return ps.peers[d][i].list() }

// peerSet is a set of identities with a sorted list of them kept up to
// date lazily: every endpoint a policy selects reads the list on rebuild,
// so it is sorted once, and after that each change is merged in (one pass
// per Sync that reads it) instead of sorting the whole list again.
type peerSet struct {
	ids set[identity.ID]
	// sorted is ids in order as of the last list(), when ok; add and del
	// are the insertions and removals since.
	sorted   []identity.ID
	ok       bool
	add, del []identity.ID
}

func newPeerSet() peerSet { return peerSet{ids: set[identity.ID]{}} }

func (s *peerSet) has(id identity.ID) bool { return s.ids.has(id) }
func (s *peerSet) len() int                { return len(s.ids) }

// insert adds id and reports whether it was new.
func (s *peerSet) insert(id identity.ID) bool {
	n := len(s.ids)
	s.ids.add(id) // one lookup: the length says whether it was new
	if len(s.ids) == n {
		return false
	}
	if s.ok {
		s.add = append(s.add, id)
		s.spill()
	}
	return true
}

// remove deletes id and reports whether it was there.
func (s *peerSet) remove(id identity.ID) bool {
	n := len(s.ids)
	s.ids.del(id)
	if len(s.ids) == n {
		return false
	}
	if s.ok {
		s.del = append(s.del, id)
		s.spill()
	}
	return true
}

// spill forgets the sorted list when more has changed than merging pays
// for (a relabel of every identity): the next list() sorts afresh.
func (s *peerSet) spill() {
	if n := len(s.add) + len(s.del); n > 64 && n > len(s.sorted)/4 {
		s.ok, s.sorted, s.add, s.del = false, nil, nil, nil
	}
}

// list returns the identities, sorted. The slice is never modified
// afterwards (a change makes a new one), so callers may keep it.
func (s *peerSet) list() []identity.ID {
	if !s.ok {
		s.sorted = sortedKeys(s.ids, compareID)
		if s.sorted == nil {
			s.sorted = []identity.ID{}
		}
		s.ok, s.add, s.del = true, nil, nil
		return s.sorted
	}
	if len(s.add) == 0 && len(s.del) == 0 {
		return s.sorted
	}
	add := s.add
	slices.SortFunc(add, compareID)
	slices.SortFunc(s.del, compareID)
	out := make([]identity.ID, 0, len(s.ids))
	// Merge the old list and the insertions; keep what is in the set
	// (an identity removed and added again, or added and removed, is
	// decided by membership, which is the truth).
	i, j := 0, 0
	push := func(id identity.ID) {
		if n := len(out); n > 0 && out[n-1] == id {
			return
		}
		if _, gone := slices.BinarySearchFunc(s.del, id, compareID); gone && !s.ids.has(id) {
			return
		}
		out = append(out, id)
	}
	for i < len(s.sorted) || j < len(add) {
		if j == len(add) || (i < len(s.sorted) && s.sorted[i] <= add[j]) {
			push(s.sorted[i])
			i++
		} else {
			push(add[j])
			j++
		}
	}
	s.sorted, s.add, s.del = out, nil, nil
	return out
}

func compareID(a, b identity.ID) int { return cmpU(uint64(a), uint64(b)) }

// Compiler turns namespaces, pods and NetworkPolicies into per-endpoint
// rule sets keyed by identity. Updates are incremental: each Set/Delete
// marks what it touched, and Sync rebuilds only those endpoints. It is
// pure (no I/O) and not safe for concurrent use.
type Compiler struct {
	opts Options

	ids *identity.Allocator
	ipc identity.IPCache

	namespaces map[string]*nsState
	pods       map[PodKey]*podState
	policies   map[PolicyKey]*policyState
	problems   map[PolicyKey]Problem
	// user holds the user's policies as given, so synthetic ones can be
	// told apart and policies can be re-derived when options change.
	user map[PolicyKey]*networkingv1.NetworkPolicy
	// synthetic holds the cluster-default-deny policies last compiled.
	synthetic map[PolicyKey]*networkingv1.NetworkPolicy

	// indexes
	nsIdents    map[string]set[identity.ID]       // pod identities per namespace
	namedIdents map[namedRef]*peerSet             // identities resolving a referenced name
	cidrIdents  map[netip.Prefix]set[identity.ID] // identities by CIDR label carried
	ipOwners    map[netip.Addr][]PodKey           // pods claiming an address, sorted
	hostIPs     set[netip.Addr]
	// The pods a reference that comes or goes may relabel (touched): by
	// volatile label key carried, by named port declared, and ipOwners'
	// addresses in order, for the pods with an address in a prefix.
	volatilePods map[string]set[PodKey]
	namedPods    map[namedRef]set[PodKey]
	addrs        *btree.BTreeG[netip.Addr]

	// referenced CIDRs, egress named ports and volatile pod label keys
	// (tested by peer pod selectors), counted per policy
	cidrRefs map[netip.Prefix]int
	// podCIDRRefs are those of them referenced by rules that resolve pods
	// (compiledRule.resolvesPods): the prefixes pod identities carry.
	podCIDRRefs map[netip.Prefix]int
	// cidrLens are the lengths of the referenced prefixes, IPv4's then
	// IPv6's, sorted (containing); recomputed when cidrLensOK is false.
	cidrLens     [2][]int
	cidrLensOK   bool
	namedRefs    map[namedRef]int
	volatileRefs map[string]int
	cidrIDs      map[netip.Prefix]identity.ID

	ruleIDs  map[RuleRef]RuleID
	ruleRefs map[RuleID]RuleRef
	nextRule RuleID

	endpoints map[PodKey]*Endpoint
	// dirty endpoints are rebuilt by Sync; peerDirty ones (of which only
	// the peer sets of the policies selecting them changed) are patched:
	// only their rules naming an identity in changedIDs (created or
	// released since the last Sync) are recomputed.
	dirty      set[PodKey]
	peerDirty  set[PodKey]
	changedIDs set[identity.ID]
	changes    Changes

	nsPolicies map[string]set[PolicyKey] // policies per namespace
	peerIndex  map[ixKey]set[*policyState]
	peerScan   set[*policyState]
	visitGen   uint64
	// selections are the rules' peer sets, by selectionKey; selGen
	// numbers identity events (see peerSelection.seen).
	selections map[string]*peerSelection
	selGen     uint64

	// generation counts Syncs (starting at 1, so a new policy's zero
	// marked generation is never current).
	generation uint64

	// batch defers relabelling while Build loads a snapshot.
	batch, needRelabel bool
	// What the next relabel must redo: every identity (all), or only the
	// CIDR identities and those of the pods that carry a reference that
	// came or went.
	pending relabelWork
	// deferMatch: Build matches identities to policies once all are set.
	deferMatch bool
	// deferIDs: with IdentityHints, no identity is acquired before the
	// first Sync, when every reference is known: a pod would otherwise
	// take its adopted number for a label set that the policies arriving
	// after it change (CIDR and named-port folding), and lose it.
	deferIDs bool
}

// Changes says what Sync changed since the previous Sync.
type Changes struct {
	// Endpoints whose compiled policy changed or that appeared.
	Endpoints []PodKey
	// Removed endpoints.
	Removed []PodKey
	// IPCache is true when any address-to-identity mapping changed.
	IPCache bool
}

// New returns an empty compiler.
func New(opts Options) *Compiler {
	c := &Compiler{
		opts:         opts,
		ids:          identity.NewAllocator(),
		namespaces:   map[string]*nsState{},
		pods:         map[PodKey]*podState{},
		policies:     map[PolicyKey]*policyState{},
		problems:     map[PolicyKey]Problem{},
		user:         map[PolicyKey]*networkingv1.NetworkPolicy{},
		synthetic:    map[PolicyKey]*networkingv1.NetworkPolicy{},
		nsIdents:     map[string]set[identity.ID]{},
		namedIdents:  map[namedRef]*peerSet{},
		cidrIdents:   map[netip.Prefix]set[identity.ID]{},
		ipOwners:     map[netip.Addr][]PodKey{},
		volatilePods: map[string]set[PodKey]{},
		namedPods:    map[namedRef]set[PodKey]{},
		addrs:        btree.NewG(32, netip.Addr.Less),
		hostIPs:      set[netip.Addr]{},
		cidrRefs:     map[netip.Prefix]int{},
		podCIDRRefs:  map[netip.Prefix]int{},
		namedRefs:    map[namedRef]int{},
		volatileRefs: map[string]int{},
		cidrIDs:      map[netip.Prefix]identity.ID{},
		ruleIDs:      map[RuleRef]RuleID{},
		ruleRefs:     map[RuleID]RuleRef{},
		nextRule:     1,
		endpoints:    map[PodKey]*Endpoint{},
		dirty:        set[PodKey]{},
		peerDirty:    set[PodKey]{},
		changedIDs:   set[identity.ID]{},
		nsPolicies:   map[string]set[PolicyKey]{},
		peerIndex:    map[ixKey]set[*policyState]{},
		peerScan:     set[*policyState]{},
		selections:   map[string]*peerSelection{},
	}
	c.ids.Reserve(opts.FirstIdentity)
	c.deferIDs = len(opts.IdentityHints) > 0
	c.generation = 1
	c.pending.all = true
	return c
}

// Snapshot is a whole cluster state, for Build.
type Snapshot struct {
	Namespaces []Namespace
	Pods       []Pod
	Policies   []*networkingv1.NetworkPolicy
	// HostIPs are the node's own addresses (host identity).
	HostIPs []netip.Addr
}

// Build compiles a whole snapshot at once. Policy problems are returned by
// Problems; they never stop the rest from compiling.
func Build(s Snapshot, opts Options) *Compiler {
	c := New(opts)
	pols := slices.Clone(s.Policies)
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	// Count what the policies reference before any pod arrives, so pods get
	// their final identities on the first pass instead of being relabelled,
	// and policies arrive last, each matching only its candidate identities.
	c.batch = true
	for _, np := range pols {
		if cp, err := compile(np, func(RuleRef) RuleID { return 0 }); err == nil {
			c.addRefs(cp, +1)
		}
	}
	// Namespaces make their cluster-default-deny policies, counted too.
	for _, ns := range s.Namespaces {
		c.SetNamespace(ns)
	}
	c.relabel()
	// The references identities were made with: if setting the policies
	// below ends with others, they are made again.
	labelled := [4][]string{refKeys(c.cidrRefs), refKeys(c.namedRefs), refKeys(c.volatileRefs), refKeys(c.podCIDRRefs)}
	c.SetHostIPs(s.HostIPs)
	pods := slices.Clone(s.Pods)
	slices.SortFunc(pods, func(a, b Pod) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	for _, p := range pods {
		c.SetPod(p)
	}
	clear(c.cidrRefs)
	clear(c.podCIDRRefs)
	c.cidrLensOK = false
	clear(c.namedRefs)
	clear(c.volatileRefs)
	// Counted again as policies are set; the cluster-default-deny ones
	// SetNamespace made are kept as they are below, so count them here.
	for _, ps := range c.policies {
		c.addRefs(ps.cp, +1)
	}
	for name := range c.namespaces {
		c.syncDefaultDeny(name)
	}
	// Each identity is tested against the policies the peer index finds
	// for it, once all are there, rather than each policy against every
	// identity of the namespaces it may select: the same peer sets, for
	// the cost of the matches.
	c.deferMatch = true
	for _, np := range pols {
		_ = c.SetPolicy(np) // recorded in Problems
	}
	c.deferMatch = false
	for _, ident := range c.ids.All() {
		gen := c.nextSelGen()
		if ident.ID == identity.Host {
			for _, ps := range c.policies {
				c.matchIdentity(ps, ident, gen) // an ipBlock holding a node address
			}
			continue
		}
		c.forCandidates(ident, func(ps *policyState) { c.matchIdentity(ps, ident, gen) })
	}
	c.batch = false
	if !slices.Equal(labelled[0], refKeys(c.cidrRefs)) || !slices.Equal(labelled[1], refKeys(c.namedRefs)) ||
		!slices.Equal(labelled[2], refKeys(c.volatileRefs)) || !slices.Equal(labelled[3], refKeys(c.podCIDRRefs)) {
		c.relabel()
	}
	c.needRelabel, c.pending = false, relabelWork{}
	c.Sync()
	return c
}

func refKeys[K comparable](m map[K]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, fmt.Sprint(k))
	}
	slices.Sort(out)
	return out
}

// SetNamespace adds or updates a namespace.
func (c *Compiler) SetNamespace(ns Namespace) {
	// The API server gives every namespace this label; input that did not
	// come through one gets it here, so selectors on it work everywhere.
	lbls := maps.Clone(ns.Labels)
	if lbls == nil {
		lbls = map[string]string{}
	}
	lbls[NamespaceNameLabel] = ns.Name
	st := c.namespaces[ns.Name]
	if st == nil {
		st = &nsState{pods: set[PodKey]{}}
		c.namespaces[ns.Name] = st
	} else if st.labels != nil && maps.Equal(st.labels, lbls) {
		return
	}
	st.labels = lbls
	// Namespace labels are part of every member's identity.
	for _, pk := range sortedKeys(st.pods, comparePodKey) {
		c.updateIdentities(c.pods[pk])
	}
	c.syncDefaultDeny(ns.Name)
}

// DeleteNamespace removes a namespace. Its pods and policies stay until
// they are deleted themselves (as the API server's events will do).
func (c *Compiler) DeleteNamespace(name string) {
	st := c.namespaces[name]
	if st == nil {
		return
	}
	st.labels = nil
	pods := sortedKeys(st.pods, comparePodKey)
	if len(pods) == 0 {
		delete(c.namespaces, name)
	}
	for _, pk := range pods {
		c.updateIdentities(c.pods[pk])
	}
	c.syncDefaultDeny(name)
}

// SetHostIPs sets the node's own addresses, which get the host identity.
func (c *Compiler) SetHostIPs(ips []netip.Addr) {
	next := set[netip.Addr]{}
	for _, ip := range ips {
		next.add(ip.Unmap())
	}
	old := c.hostIPs
	c.hostIPs = next
	for ip := range old {
		if !next.has(ip) {
			c.refreshAddr(ip)
		}
	}
	for ip := range next {
		c.refreshAddr(ip)
	}
	if !maps.Equal(old, next) {
		c.rematchHost()
	}
}

// rematchHost recomputes which ipBlock peers the host identity matches
// after the node's addresses changed. The host keeps its reserved identity
// (the kernel allows from-host traffic by that number), so an ipBlock peer
// matches it when it contains one of the node's addresses: a pod may reach
// its own node through an ipBlock as it may reach any other node.
func (c *Compiler) rematchHost() {
	host, _ := c.ids.Get(identity.Host)
	// Every policy holding the host (in a selection it may share) is
	// marked, then every one its ipBlocks now match.
	pks := sortedKeys(c.policies, comparePolicyKey)
	gen := c.nextSelGen()
	for _, pk := range pks {
		ps := c.policies[pk]
		for d := range 2 {
			for _, s := range ps.peers[d] {
				if s.seen != gen {
					s.seen, s.hit = gen, s.remove(identity.Host)
				}
				if s.hit {
					c.markSelected(ps)
				}
			}
		}
	}
	gen = c.nextSelGen()
	for _, pk := range pks {
		c.matchIdentity(c.policies[pk], host, gen)
	}
	c.changedIDs.add(identity.Host)
}

// SetPod adds or updates a pod.
func (c *Compiler) SetPod(p Pod) {
	p.Labels = maps.Clone(p.Labels)
	p.IPs = slices.Clone(p.IPs)
	for i := range p.IPs {
		p.IPs[i] = p.IPs[i].Unmap()
	}
	p.Ports = slices.Clone(p.Ports)
	key := p.Key()
	st := c.pods[key]
	if st == nil {
		st = &podState{selectedBy: set[PolicyKey]{}}
		c.pods[key] = st
		ns := c.namespaces[p.Namespace]
		if ns == nil {
			ns = &nsState{pods: set[PodKey]{}}
			c.namespaces[p.Namespace] = ns
		}
		ns.pods.add(key)
	}
	old := st.pod
	st.pod = p
	relocated := false
	if local := !p.HostNetwork && (c.opts.NodeName == "" || p.NodeName == c.opts.NodeName); local != st.local {
		// A pod leaving this node forgets its policies; one arriving
		// finds them below.
		st.local, relocated = local, true
		for pk := range st.selectedBy {
			c.policies[pk].local.del(key)
		}
		clear(st.selectedBy)
	}
	if !slices.Equal(old.IPs, p.IPs) {
		for _, ip := range old.IPs {
			c.delOwner(ip, key)
		}
		if !p.HostNetwork {
			for _, ip := range p.IPs {
				owners := append(c.ipOwners[ip], key)
				slices.SortFunc(owners, comparePodKey)
				c.ipOwners[ip] = slices.Compact(owners)
				c.addrs.ReplaceOrInsert(ip)
			}
		}
	}
	c.indexPod(key, &old, &p)
	c.updateIdentities(st)
	for _, ip := range old.IPs {
		c.refreshAddr(ip)
	}
	// Which policies select the pod depends on its labels only.
	if !maps.Equal(old.Labels, p.Labels) || old.Name == "" || relocated {
		c.reselect(st)
	}
	c.markPod(key)
}

// DeletePod removes a pod.
func (c *Compiler) DeletePod(key PodKey) {
	st := c.pods[key]
	if st == nil {
		return
	}
	for pk := range st.selectedBy {
		c.policies[pk].local.del(key)
	}
	for _, id := range st.ids {
		c.releaseIdentity(id)
	}
	st.ids = nil
	delete(c.pods, key)
	c.indexPod(key, &st.pod, &Pod{})
	for _, ip := range st.pod.IPs {
		c.delOwner(ip, key)
		c.refreshAddr(ip)
	}
	if ns := c.namespaces[key.Namespace]; ns != nil {
		ns.pods.del(key)
		if ns.labels == nil && len(ns.pods) == 0 {
			delete(c.namespaces, key.Namespace)
		}
	}
	c.markPod(key)
}

// delOwner removes pod key from the owners of ip.
func (c *Compiler) delOwner(ip netip.Addr, key PodKey) {
	owners, ok := c.ipOwners[ip]
	if !ok {
		return
	}
	if owners = slices.DeleteFunc(owners, func(k PodKey) bool { return k == key }); len(owners) > 0 {
		c.ipOwners[ip] = owners
		return
	}
	delete(c.ipOwners, ip)
	c.addrs.Delete(ip)
}

// indexPod moves pod key in volatilePods and namedPods from what old
// carries and declares to what p does (the zero Pod: nothing).
func (c *Compiler) indexPod(key PodKey, old, p *Pod) {
	for k := range old.Labels {
		if _, still := p.Labels[k]; volatileLabels[k] && !still {
			delFrom(c.volatilePods, k, key)
		}
	}
	for k := range p.Labels {
		if volatileLabels[k] {
			addTo(c.volatilePods, k, key)
		}
	}
	if slices.Equal(old.Ports, p.Ports) {
		return
	}
	for _, cp := range old.Ports {
		if cp.Name != "" {
			delFrom(c.namedPods, namedRef{cp.Name, cp.Protocol}, key)
		}
	}
	for _, cp := range p.Ports {
		if cp.Name != "" {
			addTo(c.namedPods, namedRef{cp.Name, cp.Protocol}, key)
		}
	}
}

// SetPolicy adds or updates a NetworkPolicy. An invalid policy is reported
// (and kept in Problems) and its previous version, if any, is removed: an
// invalid policy enforces nothing, as it would fail API validation.
func (c *Compiler) SetPolicy(np *networkingv1.NetworkPolicy) error {
	key := PolicyKey{Namespace: np.Namespace, Name: np.Name}
	if prev, ok := c.user[key]; ok && equality.Semantic.DeepEqual(prev.Spec, np.Spec) {
		if p, bad := c.problems[key]; bad {
			return p
		}
		return nil // unchanged (informer resyncs deliver these)
	}
	np = np.DeepCopy()
	c.user[key] = np
	return c.setPolicy(key, np, false)
}

// DeletePolicy removes a NetworkPolicy.
func (c *Compiler) DeletePolicy(key PolicyKey) {
	delete(c.user, key)
	delete(c.problems, key)
	if old := c.removePolicy(key); old != nil {
		c.freeRuleIDs(old, nil)
	}
}

func (c *Compiler) setPolicy(key PolicyKey, np *networkingv1.NetworkPolicy, synthetic bool) error {
	// Numbers handed out for rules that had none; freed again if the
	// policy turns out invalid, so a rejected policy leaves none behind.
	var fresh []RuleID
	cp, err := compile(np, func(ref RuleRef) RuleID {
		_, had := c.ruleIDs[ref]
		id := c.ruleID(ref)
		if !had {
			fresh = append(fresh, id)
		}
		return id
	})
	// The new version's rules take their selections before the old one's
	// are released: those both use keep their identities.
	var peers [2][]*peerSelection
	type newSel struct {
		s *peerSelection
		r *compiledRule
	}
	var newSels []newSel
	if err == nil {
		// Count the new version's references before dropping the old
		// one's: references both share never fall to zero, so an update
		// does not relabel pods (and renumber their identities) twice.
		c.addRefs(cp, +1)
		for d := range 2 {
			peers[d] = make([]*peerSelection, len(cp.rules[d]))
			for i := range cp.rules[d] {
				s, created := c.acquireSelection(cp, &cp.rules[d][i])
				peers[d][i] = s
				if created && !cp.rules[d][i].allPeers {
					newSels = append(newSels, newSel{s, &cp.rules[d][i]})
				}
			}
		}
	}
	old := c.removePolicy(key)
	// Rule numbers stay stable across updates of a policy (the kernel
	// stores them); only those of rules that are gone are freed.
	if old != nil {
		keep := set[RuleID]{}
		if cp != nil {
			for d := range 2 {
				for _, r := range cp.rules[d] {
					keep.add(r.id)
				}
			}
		}
		c.freeRuleIDs(old, keep)
	}
	if err != nil {
		for _, id := range fresh {
			delete(c.ruleIDs, c.ruleRefs[id])
			delete(c.ruleRefs, id)
		}
		p := Problem{Policy: key, Err: err}
		c.problems[key] = p
		return p
	}
	delete(c.problems, key)
	cp.synthetic = synthetic
	ps := &policyState{cp: cp, local: set[PodKey]{}, peers: peers}
	c.policies[key] = ps
	addTo(c.nsPolicies, key.Namespace, key)
	c.indexPolicy(ps, true)
	// Selections new to the compiler: every live identity their rules may
	// match, tested once (Build tests each identity against the policies
	// its labels find, at the end). Those other rules use already hold
	// them. The policy is not marked: it selects no pod yet, and those it
	// selects below are rebuilt.
	if !c.deferMatch && len(newSels) > 0 {
		rules := make([]*compiledRule, len(newSels))
		for i, f := range newSels {
			rules[i] = f.r
		}
		for _, id := range c.candidateIdentities(key.Namespace, rules) {
			ident, _ := c.ids.Get(id)
			for _, f := range newSels {
				if c.ruleMatches(cp, f.r, ident) {
					f.s.insert(id)
				}
			}
		}
	}
	if ns := c.namespaces[key.Namespace]; ns != nil {
		for pk := range ns.pods {
			st := c.pods[pk]
			if st.local && cp.podSel.Matches(labels.Set(st.pod.Labels)) {
				c.selectPod(ps, key, st)
				c.markPod(pk)
			}
		}
	}
	return nil
}

func (c *Compiler) removePolicy(key PolicyKey) *compiledPolicy {
	ps := c.policies[key]
	if ps == nil {
		return nil
	}
	delete(c.policies, key)
	delFrom(c.nsPolicies, key.Namespace, key)
	c.indexPolicy(ps, false)
	for d := range 2 {
		for _, s := range ps.peers[d] {
			c.releaseSelection(s)
		}
	}
	for pk := range ps.local {
		c.pods[pk].selectedBy.del(key)
		c.markPod(pk)
	}
	c.addRefs(ps.cp, -1)
	return ps.cp
}

// freeRuleIDs forgets the rule numbers of cp that are not in keep.
func (c *Compiler) freeRuleIDs(cp *compiledPolicy, keep set[RuleID]) {
	for d := range 2 {
		for _, r := range cp.rules[d] {
			if keep.has(r.id) {
				continue
			}
			ref := c.ruleRefs[r.id]
			delete(c.ruleRefs, r.id)
			delete(c.ruleIDs, ref)
		}
	}
}

func (c *Compiler) ruleID(ref RuleRef) RuleID {
	if id, ok := c.ruleIDs[ref]; ok {
		return id
	}
	id := c.nextRule
	c.nextRule++
	c.ruleIDs[ref] = id
	c.ruleRefs[id] = ref
	return id
}

// Rule returns what a rule number stands for.
func (c *Compiler) Rule(id RuleID) (RuleRef, bool) {
	r, ok := c.ruleRefs[id]
	return r, ok
}

// addRefs counts the CIDRs, named ports and pod label keys cp references;
// when the set of referenced ones changes, identities are recomputed.
func (c *Compiler) addRefs(cp *compiledPolicy, delta int) {
	w := &c.pending
	changed := countRefs(c.cidrRefs, cp.cidrs, delta, &w.cidrs)
	if changed {
		c.cidrLensOK = false
	}
	changed = countRefs(c.podCIDRRefs, cp.podCIDRs, delta, &w.podCIDRs) || changed
	changed = countRefs(c.namedRefs, cp.named, delta, &w.named) || changed
	changed = countRefs(c.volatileRefs, cp.volatileKeys, delta, &w.keys) || changed
	if changed {
		// Relabelling scans every pod: defer it to Sync, so a burst of
		// policies (an agent's first sync, a kubectl apply of a folder)
		// relabels once, not once per policy. Until then new identities
		// carry stale references; the relabel's new identities are matched
		// against every policy, as in Build.
		c.needRelabel = true
	}
}

// relabelWork is what references came or went since the last relabel.
type relabelWork struct {
	all   bool // every identity: the first numbering, or after a restart
	cidrs set[netip.Prefix]
	// podCIDRs: the prefixes pod identities carry (podCIDRRefs) that came
	// or went; a subset of cidrs.
	podCIDRs set[netip.Prefix]
	named    set[namedRef]
	keys     set[string]
}

// touched returns the pods whose identities may differ for the references
// in w, sorted: those that carry a label key, have an address in a prefix
// pod identities carry, or declare a named port that came or went. Indexes
// find them, not a scan of every pod. Most ipBlocks relabel no pod: a pod's
// address is matched against them by its prefix identity (refreshCIDRs).
func (c *Compiler) touched(w *relabelWork) []PodKey {
	seen := set[PodKey]{}
	for k := range w.keys {
		for pk := range c.volatilePods[k] {
			seen.add(pk)
		}
	}
	for ref := range w.named {
		for pk := range c.namedPods[ref] {
			seen.add(pk)
		}
	}
	c.addrsIn(w.podCIDRs, func(a netip.Addr) {
		for _, pk := range c.ipOwners[a] {
			seen.add(pk)
		}
	})
	return sortedKeys(seen, comparePodKey)
}

// addrsIn calls f once with each owned address in one of pfxs, in order.
// A prefix inside another is not walked again: a burst of policies with
// nested ipBlocks (or one of 10.0.0.0/8 and its excepts) costs each
// address once.
func (c *Compiler) addrsIn(pfxs set[netip.Prefix], f func(netip.Addr)) {
	var last netip.Prefix
	for _, pfx := range sortedKeys(pfxs, identity.ComparePrefix) {
		pfx = pfx.Masked()
		// Sorted by address, then length: a prefix holding this one
		// came before it, and is the last one walked (those are
		// disjoint, in order).
		if last.IsValid() && last.Contains(pfx.Addr()) {
			continue
		}
		last = pfx
		c.addrs.AscendGreaterOrEqual(pfx.Addr(), func(a netip.Addr) bool {
			if !pfx.Contains(a) {
				return false // addresses in a prefix are consecutive in order
			}
			f(a)
			return true
		})
	}
}

// refreshCIDRs recomputes the ipcache entries of the owned addresses in the
// prefixes that came or went: their prefix identity (Entry.CIDR) is that
// of the longest referenced prefix holding them, which is one of those or
// lies inside one (whose identity then changed too).
func (c *Compiler) refreshCIDRs(w *relabelWork) { c.addrsIn(w.cidrs, c.refreshAddr) }

// countRefs adds delta to the count of each of keys (distinct) in refs,
// dropping those that reach 0, and reports whether a key appeared or went;
// those are added to *toggled.
func countRefs[K comparable](refs map[K]int, keys []K, delta int, toggled *set[K]) bool {
	changed := false
	for _, k := range keys {
		n := refs[k] + delta
		if n > 0 {
			refs[k] = n
		} else {
			delete(refs, k)
		}
		if n <= 0 || n == delta {
			changed = true
			if *toggled == nil {
				*toggled = set[K]{}
			}
			(*toggled).add(k)
		}
	}
	return changed
}

// relabel recomputes the identities that the referenced CIDRs, named
// ports or pod label keys that came or went since the last one may change
// (c.pending): the CIDR identities, and the pods those touch.
func (c *Compiler) relabel() {
	if c.deferIDs {
		c.needRelabel = true // numbered at the first Sync, all at once
		c.pending.all = true
		return
	}
	w := c.pending
	c.pending = relabelWork{}
	w.all = w.all || c.opts.IdentityHints != nil
	// CIDR identities: one per referenced prefix.
	if w.all || len(w.cidrs) > 0 {
		c.relabelCIDRs()
	}
	c.relabelPods(w)
	if !w.all {
		c.refreshCIDRs(&w) // all: every pod's entry was refreshed
	}
}

// relabelCIDRs recomputes the identities of the referenced prefixes, each
// labelled with every referenced prefix containing it.
func (c *Compiler) relabelCIDRs() {
	for p, id := range c.cidrIDs {
		if _, ok := c.cidrRefs[p]; !ok {
			delete(c.cidrIDs, p)
			c.releaseIdentity(id)
			c.refreshPrefix(p)
		}
	}
	for _, p := range sortedKeys(c.cidrRefs, identity.ComparePrefix) {
		l := identity.Labels{Kind: identity.KindCIDR, CIDRs: c.containing(p.Addr(), p.Bits())}
		old, had := c.cidrIDs[p]
		// The prefix's adopted number is its own unless a pod or the node
		// owns that exact address (their entry wins in the ipcache): then
		// a pod's entry names it as its prefix identity.
		hint := c.opts.IdentityHints[p].ID
		if p.IsSingleIP() && (len(c.ipOwners[p.Addr()]) > 0 || c.hostIPs.has(p.Addr())) {
			hint = c.opts.IdentityHints[p].CIDR
		}
		ident := c.acquireIdentityHinted(l, hint)
		c.cidrIDs[p] = ident.ID
		if had {
			c.releaseIdentity(old)
		}
		c.refreshPrefix(p)
	}
}

// relabelPods recomputes the identities of the pods w touches (every pod
// with w.all).
func (c *Compiler) relabelPods(w relabelWork) {
	// With hints (the first sync after a restart), every label set an
	// owned address showed in the adopted ipcache is created first, with
	// that number, so no other address of the same label set (one shared
	// with another pod) creates it with a fresh one.
	var held []identity.ID
	if c.opts.IdentityHints != nil {
		for _, pk := range sortedKeys(c.pods, comparePodKey) {
			st := c.pods[pk]
			for _, ip := range st.pod.IPs {
				if at := c.ownPrefix(st, ip); at.IsValid() && !st.pod.HostNetwork {
					held = append(held, c.acquireIdentity(c.podLabels(&st.pod, ip), at).ID)
				}
			}
		}
	}
	// Only the pods a reference that came or went touches may change
	// label set (a policy testing a new label key, or a new ipBlock,
	// relabels the pods carrying it, not the cluster).
	var todo []PodKey
	if w.all {
		todo = sortedKeys(c.pods, comparePodKey)
	} else {
		todo = c.touched(&w)
	}
	for _, pk := range todo {
		c.updateIdentities(c.pods[pk])
	}
	for _, id := range held {
		c.releaseIdentity(id)
	}
}

// ownPrefix is the ipcache prefix of ip when the pod owns the address (an
// address shared by two pods, for a moment in a real cluster, is its first
// owner's), else the zero prefix: where the pod's adopted number is.
func (c *Compiler) ownPrefix(st *podState, ip netip.Addr) netip.Prefix {
	if owners := c.ipOwners[ip]; len(owners) > 0 && owners[0] == st.pod.Key() {
		return netip.PrefixFrom(ip, ip.BitLen())
	}
	return netip.Prefix{}
}

// containing returns the referenced prefixes that contain the prefix
// addr/bits, sorted.
func (c *Compiler) containing(addr netip.Addr, bits int) []netip.Prefix {
	c.ensureCIDRLens()
	var out []netip.Prefix
	for _, l := range c.cidrLens[addrFamily(addr)] {
		if l > bits {
			break
		}
		if p := netip.PrefixFrom(addr, l).Masked(); c.cidrRefs[p] > 0 {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, identity.ComparePrefix)
	return out
}

// podContaining returns the prefixes pod identities carry (podCIDRRefs)
// that contain addr, sorted.
func (c *Compiler) podContaining(addr netip.Addr) []netip.Prefix {
	if len(c.podCIDRRefs) == 0 {
		return nil
	}
	out := c.containing(addr, addr.BitLen())
	return slices.DeleteFunc(out, func(p netip.Prefix) bool { return c.podCIDRRefs[p] == 0 })
}

// cidrOf returns the prefix identity of addr: that of the longest
// referenced prefix holding it, which carries every one holding it; 0 for
// none.
func (c *Compiler) cidrOf(addr netip.Addr) identity.ID {
	c.ensureCIDRLens()
	lens := c.cidrLens[addrFamily(addr)]
	for i := len(lens) - 1; i >= 0; i-- {
		if p := netip.PrefixFrom(addr, lens[i]).Masked(); c.cidrRefs[p] > 0 {
			return c.cidrIDs[p] // 0 until relabelCIDRs numbers it
		}
	}
	return 0
}

// ensureCIDRLens recomputes cidrLens when the referenced prefixes changed.
func (c *Compiler) ensureCIDRLens() {
	if !c.cidrLensOK {
		// The few lengths referenced, so that finding the prefixes
		// holding an address is a lookup per length, not a pass over
		// every referenced prefix (thousands, for every pod relabelled).
		c.cidrLens = [2][]int{}
		seen := [2]set[int]{{}, {}}
		for p := range c.cidrRefs {
			f := addrFamily(p.Addr())
			if !seen[f].has(p.Bits()) {
				seen[f].add(p.Bits())
				c.cidrLens[f] = append(c.cidrLens[f], p.Bits())
			}
		}
		slices.Sort(c.cidrLens[0])
		slices.Sort(c.cidrLens[1])
		c.cidrLensOK = true
	}
}

// addrFamily indexes IPv4 (0) and IPv6 (1).
func addrFamily(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// podLabels is the identity label set of pod address ip.
func (c *Compiler) podLabels(p *Pod, ip netip.Addr) identity.Labels {
	l := identity.Labels{
		Kind:      identity.KindPod,
		Namespace: p.Namespace,
		PodLabels: c.identityLabels(p.Labels),
		CIDRs:     c.podContaining(ip),
	}
	if ns := c.namespaces[p.Namespace]; ns != nil {
		l.NamespaceLabels = ns.labels
	}
	for _, cport := range p.Ports {
		if cport.Name == "" {
			continue
		}
		if _, ok := c.namedRefs[namedRef{cport.Name, cport.Protocol}]; ok {
			l.NamedPorts = append(l.NamedPorts, identity.NamedPort{Name: cport.Name, Protocol: cport.Protocol, Port: cport.Port})
		}
	}
	// A name declared twice for one protocol (invalid, but possible in
	// input that bypassed the API server) resolves to the first declared
	// port, as resolvePort does for ingress: sort stably on name and
	// protocol only, and keep the first of each.
	slices.SortStableFunc(l.NamedPorts, func(a, b identity.NamedPort) int {
		return identity.CompareNamedPort(identity.NamedPort{Name: a.Name, Protocol: a.Protocol}, identity.NamedPort{Name: b.Name, Protocol: b.Protocol})
	})
	l.NamedPorts = slices.CompactFunc(l.NamedPorts, func(a, b identity.NamedPort) bool {
		return a.Name == b.Name && a.Protocol == b.Protocol
	})
	return l
}

// identityLabels returns the labels of pl that are part of its pod
// identity (pl itself when that is all of them): all but the volatile ones
// (volatileLabels) no peer pod selector tests. Pods differing only in
// those are told apart by no policy, so they share an identity: a
// Deployment's rollout (a new pod-template-hash) or a StatefulSet's pods
// (each with its own statefulset.kubernetes.io/pod-name) make no new
// identities, and no policy entries on any node, until a policy tests
// those labels. A policy that starts or stops testing one relabels the
// pods carrying it (addRefs, relabelPods).
func (c *Compiler) identityLabels(pl map[string]string) map[string]string {
	n := 0
	for k := range pl {
		if c.inIdentity(k) {
			n++
		}
	}
	if n == len(pl) {
		return pl
	}
	out := make(map[string]string, n)
	for k, v := range pl {
		if c.inIdentity(k) {
			out[k] = v
		}
	}
	return out
}

func (c *Compiler) inIdentity(key string) bool {
	if !volatileLabels[key] {
		return true
	}
	_, ok := c.volatileRefs[key]
	return ok
}

// updateIdentities recomputes a pod's identities and the address entries
// that point at them.
func (c *Compiler) updateIdentities(st *podState) {
	if c.deferIDs {
		c.needRelabel = true // the first Sync numbers every pod
		c.pending.all = true
		return
	}
	var next []identity.ID
	if !st.pod.HostNetwork {
		for _, ip := range st.pod.IPs {
			next = append(next, c.acquireIdentity(c.podLabels(&st.pod, ip), c.ownPrefix(st, ip)).ID)
		}
	}
	old := st.ids
	st.ids = next
	for _, id := range old {
		c.releaseIdentity(id)
	}
	if !slices.Equal(old, next) {
		c.markPod(st.pod.Key())
	}
	for _, ip := range st.pod.IPs {
		c.refreshAddr(ip)
	}
}

// refreshAddr recomputes the ipcache entry of one address: a pod that owns
// it (with its prefix identity), else the host, else a referenced prefix of
// exactly that length.
func (c *Compiler) refreshAddr(ip netip.Addr) {
	c.refreshPrefix(netip.PrefixFrom(ip, ip.BitLen()))
}

func (c *Compiler) refreshPrefix(p netip.Prefix) {
	var want identity.Entry
	ok := false
	if p.IsSingleIP() {
		if owners := c.ipOwners[p.Addr()]; len(owners) > 0 {
			st := c.pods[owners[0]]
			if i := slices.Index(st.pod.IPs, p.Addr()); i >= 0 && i < len(st.ids) {
				want, ok = identity.Entry{ID: st.ids[i], CIDR: c.cidrOf(p.Addr())}, true
			}
		}
		if !ok && c.hostIPs.has(p.Addr()) {
			want, ok = identity.Entry{ID: identity.Host}, true
		}
	}
	if !ok {
		want.ID, ok = c.cidrIDs[p]
	}
	have, had := c.ipc.Get(p)
	switch {
	case ok && (!had || have != want):
		c.ipc.Set(p, want)
		c.changes.IPCache = true
	case !ok && had:
		c.ipc.Delete(p)
		c.changes.IPCache = true
	}
}

// acquireIdentity returns l's identity, numbered as the adopted ipcache
// numbered the prefix at, when it can be (Options.IdentityHints).
func (c *Compiler) acquireIdentity(l identity.Labels, at netip.Prefix) *identity.Identity {
	return c.acquireIdentityHinted(l, c.opts.IdentityHints[at].ID)
}

// acquireIdentityHinted returns l's identity, numbered hint if it is new
// and can be (identity.Allocator.AcquireHinted).
func (c *Compiler) acquireIdentityHinted(l identity.Labels, hint identity.ID) *identity.Identity {
	ident, created := c.ids.AcquireHinted(l, hint)
	if !created {
		return ident
	}
	for _, p := range l.CIDRs {
		addTo(c.cidrIdents, p, ident.ID)
	}
	if l.Kind == identity.KindPod {
		addTo(c.nsIdents, l.Namespace, ident.ID)
		for _, np := range l.NamedPorts {
			ref := namedRef{np.Name, np.Protocol}
			ns := c.namedIdents[ref]
			if ns == nil {
				s := newPeerSet()
				ns = &s
				c.namedIdents[ref] = ns
			}
			ns.insert(ident.ID)
		}
	}
	c.changedIDs.add(ident.ID)
	// Order does not matter: matching only adds to sets and marks work.
	gen := c.nextSelGen()
	c.forCandidates(ident, func(ps *policyState) { c.matchIdentity(ps, ident, gen) })
	return ident
}

func (c *Compiler) releaseIdentity(id identity.ID) {
	ident, ok := c.ids.Get(id)
	if !ok || !c.ids.Release(id) {
		return
	}
	l := ident.Labels
	for _, p := range l.CIDRs {
		delFrom(c.cidrIdents, p, id)
	}
	if l.Kind == identity.KindPod {
		delFrom(c.nsIdents, l.Namespace, id)
		for _, np := range l.NamedPorts {
			if ns := c.namedIdents[namedRef{np.Name, np.Protocol}]; ns != nil {
				ns.remove(id)
			}
		}
	}
	c.changedIDs.add(id)
	// The policies holding it are among those its labels find: each
	// selection is emptied of it once, and every policy using one that
	// held it is marked.
	gen := c.nextSelGen()
	c.forCandidates(ident, func(ps *policyState) {
		touched := false
		for d := range 2 {
			for i, r := range ps.cp.rules[d] {
				s := ps.peers[d][i]
				if s.seen != gen {
					s.seen, s.hit = gen, s.remove(id)
				}
				if s.hit {
					touched = true
				} else if r.allPeers && len(l.NamedPorts) > 0 {
					touched = true
				}
			}
		}
		if touched {
			c.markSelected(ps)
		}
	})
}

// matchIdentity adds ident to the peer sets of ps it matches and marks the
// endpoints whose rules it changes. gen is the identity event: a selection
// another policy already matched in it is not matched again.
func (c *Compiler) matchIdentity(ps *policyState, ident *identity.Identity, gen uint64) {
	touched := false
	for d := range 2 {
		for i := range ps.cp.rules[d] {
			r := &ps.cp.rules[d][i]
			if r.allPeers {
				// Any peer: only egress named ports expand per identity.
				if Direction(d) == Egress && len(ident.Labels.NamedPorts) > 0 {
					for _, port := range r.ports {
						if _, ok := ident.Labels.NamedPort(port.name, port.proto); ok && port.name != "" {
							touched = true
						}
					}
				}
				continue
			}
			s := ps.peers[d][i]
			if s.seen != gen {
				s.seen, s.hit = gen, c.ruleMatches(ps.cp, r, ident)
				if s.hit {
					s.insert(ident.ID)
				}
			}
			if s.hit {
				touched = true
			}
		}
	}
	if touched {
		c.markSelected(ps)
	}
}

// ruleMatches reports whether any peer of r matches identity ident.
func (c *Compiler) ruleMatches(cp *compiledPolicy, r *compiledRule, ident *identity.Identity) bool {
	l := &ident.Labels
	for i := range r.peers {
		p := &r.peers[i]
		if p.ipBlock {
			if l.Kind == identity.KindHost {
				if c.hostInBlock(p) {
					return true
				}
				continue
			}
			if l.Kind == identity.KindPod && !r.resolvesPods {
				// A pod's address is admitted by its prefix identity
				// (cidrOf), a CIDR identity this peer matches.
				continue
			}
			if l.HasCIDR(p.cidr) && !slices.ContainsFunc(p.except, l.HasCIDR) {
				return true
			}
			continue
		}
		if l.Kind != identity.KindPod {
			continue
		}
		if p.nsSel == nil {
			if l.Namespace != cp.key.Namespace {
				continue
			}
		} else if l.NamespaceLabels == nil && !p.nsSel.Empty() {
			continue // namespace not known yet: matches only "all namespaces"
		} else if !p.nsSel.Matches(labels.Set(l.NamespaceLabels)) {
			continue
		}
		if p.podSel == nil || p.podSel.Matches(labels.Set(l.PodLabels)) {
			return true
		}
	}
	return false
}

// hostInBlock reports whether an ipBlock peer contains one of the node's
// addresses (and no except of it does).
func (c *Compiler) hostInBlock(p *compiledPeer) bool {
	for ip := range c.hostIPs {
		if !p.cidr.Contains(ip) {
			continue
		}
		if !slices.ContainsFunc(p.except, func(e netip.Prefix) bool { return e.Contains(ip) }) {
			return true
		}
	}
	return false
}

// candidateIdentities returns the live identities some peer of rules (of a
// policy of namespace polNS) could match, in no order: pod identities of the
// namespaces its peers can select, and for ipBlock peers the identities
// carrying their CIDR (a CIDR identity carries each referenced prefix holding
// its prefix, a pod identity those of rules resolving pods holding its
// address).
func (c *Compiler) candidateIdentities(polNS string, rules []*compiledRule) []identity.ID {
	out := set[identity.ID]{}
	allNS, ownNS, ipb := false, false, false
	var nsSels []labels.Selector
	var blocks []netip.Prefix
	for _, r := range rules {
		for _, p := range r.peers {
			switch {
			case p.ipBlock:
				ipb = true
				blocks = append(blocks, p.cidr)
			case p.nsSel == nil:
				ownNS = true
			case p.nsSel.Empty():
				allNS = true
			default:
				nsSels = append(nsSels, p.nsSel)
			}
		}
	}
	if ipb {
		for _, p := range blocks {
			for id := range c.cidrIdents[p] {
				out.add(id)
			}
		}
		out.add(identity.Host)
	}
	for name, ids := range c.nsIdents {
		take := allNS || (ownNS && name == polNS)
		if !take && len(nsSels) > 0 {
			if ns := c.namespaces[name]; ns != nil && ns.labels != nil {
				for _, s := range nsSels {
					if s.Matches(labels.Set(ns.labels)) {
						take = true
						break
					}
				}
			}
		}
		if take {
			for id := range ids {
				out.add(id)
			}
		}
	}
	// Unordered: matching an identity only adds it to sets.
	return slices.Collect(maps.Keys(out))
}

// reselect recomputes which policies of the pod's namespace select it.
func (c *Compiler) reselect(st *podState) {
	if !st.local {
		return
	}
	key := st.pod.Key()
	for pk := range c.nsPolicies[key.Namespace] {
		ps := c.policies[pk]
		sel := ps.cp.podSel.Matches(labels.Set(st.pod.Labels))
		if sel == ps.local.has(key) {
			continue
		}
		if sel {
			c.selectPod(ps, pk, st)
		} else {
			c.unselectPod(ps, pk, st)
		}
	}
}

// selectPod records that policy pk (ps) selects local pod st.
func (c *Compiler) selectPod(ps *policyState, pk PolicyKey, st *podState) {
	ps.local.add(st.pod.Key())
	st.selectedBy.add(pk)
}

// unselectPod records that policy pk (ps) no longer selects pod st.
func (c *Compiler) unselectPod(ps *policyState, pk PolicyKey, st *podState) {
	ps.local.del(st.pod.Key())
	st.selectedBy.del(pk)
}

func (c *Compiler) markPod(k PodKey) { c.dirty.add(k) }

func (c *Compiler) markSelected(ps *policyState) {
	// Once per Sync is enough: a relabel touches a policy once per new
	// identity, thousands of times.
	if ps.marked == c.generation {
		return
	}
	ps.marked = c.generation
	// Only their peers changed: the endpoints are patched (see Sync).
	// Pods off this node have no endpoint to patch.
	for pk := range ps.local {
		c.peerDirty.add(pk)
	}
}

// Sync rebuilds the endpoints that changed and says which did.
func (c *Compiler) Sync() Changes {
	if c.deferIDs && !c.batch {
		c.deferIDs, c.needRelabel, c.pending.all = false, true, true
	}
	if c.needRelabel && !c.batch {
		c.needRelabel = false
		c.relabel()
		// Hints name the adopted maps, which the first sync replaces.
		c.opts.IdentityHints = nil
	}
	// Endpoints selected by the same policies (and declaring the same
	// ports, for ingress named ports) have the same rules: compute them
	// once per Sync and share them (endpoints are immutable).
	memo := map[string]*memoEntry{}
	// Endpoints whose policies' peer sets alone changed are patched: their
	// rules of the identities created or released since the last Sync are
	// recomputed, the others kept. A change of many identities (a relabel
	// of every pod) rebuilds them instead.
	var changed []identity.ID
	patch := len(c.changedIDs) <= patchMaxChanged
	if patch {
		changed = sortedKeys(c.changedIDs, compareID)
	}
	todo := slices.AppendSeq(make([]PodKey, 0, len(c.dirty)+len(c.peerDirty)), maps.Keys(c.dirty))
	for pk := range c.peerDirty {
		if !c.dirty.has(pk) {
			todo = append(todo, pk)
		}
	}
	slices.SortFunc(todo, comparePodKey)
	for _, pk := range todo {
		st := c.pods[pk]
		if st == nil || !st.local {
			if _, ok := c.endpoints[pk]; ok {
				delete(c.endpoints, pk)
				c.changes.Removed = append(c.changes.Removed, pk)
			}
			continue
		}
		old := c.endpoints[pk]
		var base *Endpoint
		if patch && old != nil && !c.dirty.has(pk) {
			base = old
		}
		ep := c.buildEndpoint(st, memo, base, changed)
		if old != nil && endpointEqual(old, ep) {
			continue
		}
		c.endpoints[pk] = ep
		c.changes.Endpoints = append(c.changes.Endpoints, pk)
	}
	// A cleared map keeps its size, and ranging over it costs that: the
	// sets that a Build or a relabel filled are made anew.
	c.dirty = clearSet(c.dirty)
	c.peerDirty = clearSet(c.peerDirty)
	c.changedIDs = clearSet(c.changedIDs)
	c.generation++
	ch := c.changes
	c.changes = Changes{}
	return ch
}

// patchMaxChanged is the most identities created or released in one Sync
// for which endpoints are patched rather than rebuilt.
var patchMaxChanged = 256

// buildEndpoint compiles the endpoint of pod st. With base (its endpoint
// as of the last Sync, when nothing but the peer sets of its policies has
// changed since), only base's rules of the identities in changed (sorted)
// are recomputed.
func (c *Compiler) buildEndpoint(st *podState, memo map[string]*memoEntry, base *Endpoint, changed []identity.ID) *Endpoint {
	ep := &Endpoint{Pod: st.pod.Key(), IPs: slices.Clone(st.pod.IPs), Identities: slices.Clone(st.ids), seq: endpointSeq.Add(1)}
	selectedBy := sortedKeys(st.selectedBy, comparePolicyKey)
	var key strings.Builder
	for _, pk := range selectedBy {
		key.WriteString(pk.Namespace)
		key.WriteByte('/')
		key.WriteString(pk.Name)
		key.WriteByte(0)
	}
	key.WriteByte(1)
	for _, cp := range st.pod.Ports {
		key.WriteString(cp.Name)
		key.WriteByte('/')
		key.WriteString(strconv.Itoa(int(cp.Protocol)))
		key.WriteByte('/')
		key.WriteString(strconv.Itoa(int(cp.Port)))
		key.WriteByte(',')
	}
	if m := memo[key.String()]; m != nil {
		ep.Ingress, ep.Egress = m.dirs[Ingress], m.dirs[Egress]
		// Patched from rules the same as this endpoint's: the same
		// peers' rules were recomputed.
		if m.patched && base != nil && base.Ingress.Rules.same(m.base[Ingress]) && base.Egress.Rules.same(m.base[Egress]) {
			ep.from, ep.changed = base.seq, changed
		}
		return ep
	}
	if base != nil {
		ep.from, ep.changed = base.seq, changed
	}
	defer func() {
		m := &memoEntry{dirs: [2]DirectionPolicy{ep.Ingress, ep.Egress}, patched: base != nil}
		if base != nil {
			m.base = [2]Rules{base.Ingress.Rules, base.Egress.Rules}
		}
		memo[key.String()] = m
	}()
	// The rules of each direction as computed, before sorting: all of
	// them, or with base those of the changed peers.
	var buf [2][]Rule
	if base == nil {
		buf = c.reserveRules(selectedBy)
	}
	for _, pk := range selectedBy {
		ps := c.policies[pk]
		for d := range 2 {
			if !ps.cp.types[d] {
				continue // rules of a type the policy does not list are ignored
			}
			dp := ep.Dir(Direction(d))
			dp.Isolated = true
			dp.IsolatedBy = append(dp.IsolatedBy, pk)
			if base != nil {
				if c.peersChanged(ps) {
					buf[d] = c.appendChangedRules(buf[d], &st.pod, ps, d, changed)
				}
				continue
			}
			for i := range ps.cp.rules[d] {
				var peers []identity.ID
				if !ps.cp.rules[d][i].allPeers {
					peers = ps.peerList(d, i)
				}
				buf[d] = c.appendRules(buf[d], &st.pod, Direction(d), &ps.cp.rules[d][i], peers)
			}
		}
	}
	for d := range 2 {
		rules := buf[d]
		slices.SortFunc(rules, compareRule)
		rules = slices.CompactFunc(rules, func(a, b Rule) bool {
			return a.Peer == b.Peer && a.Protocol == b.Protocol && a.Port == b.Port && a.EndPort == b.EndPort
		})
		if base != nil {
			ep.Dir(Direction(d)).Rules = base.Dir(Direction(d)).Rules.patch(rules, changed)
		} else {
			ep.Dir(Direction(d)).Rules = MakeRules(rules)
		}
	}
	return ep
}

// endpointSeq numbers the endpoints built, by every compiler of the process
// (Endpoint.PatchedFrom).
var endpointSeq atomic.Uint64

// memoEntry is the policy of the endpoints of one Sync selected by the same
// policies; patched: computed from base's rules by recomputing the rules of
// the identities that changed.
type memoEntry struct {
	dirs    [2]DirectionPolicy
	patched bool
	base    [2]Rules
}

// reserveRules returns rule lists with room for every allow the policies
// selectedBy expand to before compaction (egress named ports counted as if
// every peer resolved them), per direction: growing them by appending
// copies each list about twice and leaves up to half of it unused.
func (c *Compiler) reserveRules(selectedBy []PolicyKey) (buf [2][]Rule) {
	var n [2]int
	for _, pk := range selectedBy {
		ps := c.policies[pk]
		for d := range 2 {
			if !ps.cp.types[d] {
				continue
			}
			for i := range ps.cp.rules[d] {
				r := &ps.cp.rules[d][i]
				if r.allPeers {
					n[d] += max(1, len(r.ports))
					continue
				}
				n[d] += ps.peers[d][i].len() * max(1, len(r.ports))
			}
		}
	}
	for d := range 2 {
		if n[d] > 0 {
			buf[d] = make([]Rule, 0, n[d])
		}
	}
	return buf
}

// peersChanged reports whether any peer set of ps may have changed since
// the last Sync. Every identity event that adds an identity to, or removes
// one from, a selection marks each policy using it (markSelected), and so
// does one changing what an any-peer egress named port resolves to: an
// unmarked policy has no rule naming a changed identity, and patching an
// endpoint need not look at its rules (most of an endpoint's policies, in
// a relabel).
func (c *Compiler) peersChanged(ps *policyState) bool { return ps.marked == c.generation }

// appendChangedRules appends the allows of the rules of direction d of ps
// for endpoint pod whose peer is one of the identities in changed (sorted):
// what appendRules gives for those peers alone.
func (c *Compiler) appendChangedRules(out []Rule, pod *Pod, ps *policyState, d int, changed []identity.ID) []Rule {
	var peers []identity.ID
	for i := range ps.cp.rules[d] {
		r := &ps.cp.rules[d][i]
		if r.allPeers {
			// Any peer: one Any allow, which no identity changes, and
			// for egress named ports one allow per identity resolving it.
			if Direction(d) != Egress {
				continue
			}
			for _, port := range r.ports {
				if port.name == "" {
					continue
				}
				ns := c.namedIdents[namedRef{port.name, port.proto}]
				if ns == nil {
					continue
				}
				for _, p := range changed {
					if !ns.has(p) {
						continue
					}
					if ident, ok := c.ids.Get(p); ok {
						if n, ok := ident.Labels.NamedPort(port.name, port.proto); ok {
							out = append(out, Rule{Peer: p, Protocol: port.proto, Port: n, EndPort: n, ID: r.id})
						}
					}
				}
			}
			continue
		}
		peers = peers[:0]
		for _, p := range changed {
			if ps.peers[d][i].has(p) {
				peers = append(peers, p)
			}
		}
		if len(peers) > 0 {
			out = c.appendRules(out, pod, Direction(d), r, peers)
		}
	}
	return out
}

// patchRules returns old (sorted, compacted rules) with the rules of the
// peers in changed (sorted) replaced by fresh (sorted, compacted, and
// naming only peers in changed). It returns old itself when nothing
// differs.
func patchRules(old, fresh []Rule, changed []identity.ID) []Rule {
	// Rules are sorted by peer first: each changed peer's rules are one
	// run of old.
	type run struct{ lo, hi int }
	var cut []run
	removed := 0
	for _, p := range changed {
		if lo, hi := peerRange(old, p); hi > lo {
			cut = append(cut, run{lo, hi})
			removed += hi - lo
		}
	}
	if removed == 0 && len(fresh) == 0 {
		return old
	}
	out := make([]Rule, 0, len(old)-removed+len(fresh))
	// Kept rules, run by run, merged with fresh ones; fresh peers differ
	// from every kept rule's peer, so no two compare equal.
	next := 0
	emit := func(kept []Rule) {
		for len(kept) > 0 {
			// fresh rules before kept[0]
			j := next
			for j < len(fresh) && compareRule(fresh[j], kept[0]) < 0 {
				j++
			}
			out = append(out, fresh[next:j]...)
			next = j
			// kept rules before fresh[next]
			k := len(kept)
			if next < len(fresh) {
				k, _ = slices.BinarySearchFunc(kept, fresh[next], compareRule)
			}
			out = append(out, kept[:k]...)
			kept = kept[k:]
		}
	}
	at := 0
	for _, r := range cut {
		emit(old[at:r.lo])
		at = r.hi
	}
	emit(old[at:])
	out = append(out, fresh[next:]...)
	if len(out) == 0 {
		return nil
	}
	return out
}

// appendRules appends the allows of rule r for endpoint pod; peers are the
// rule's peer identities, sorted (unused when the rule allows all peers).
func (c *Compiler) appendRules(out []Rule, pod *Pod, dir Direction, r *compiledRule, peers []identity.ID) []Rule {
	peerList := peers
	if r.allPeers {
		peerList = []identity.ID{identity.Any}
	}
	if len(r.ports) == 0 {
		for _, p := range peerList {
			out = append(out, Rule{Peer: p, ID: r.id})
		}
		return out
	}
	for _, port := range r.ports {
		switch {
		case port.name == "":
			for _, p := range peerList {
				out = append(out, Rule{Peer: p, Protocol: port.proto, Port: port.port, EndPort: port.endPort, ID: r.id})
			}
		case dir == Ingress:
			// A named port resolves on the destination: this pod.
			n, ok := resolvePort(pod, port.name, port.proto)
			if !ok {
				continue
			}
			for _, p := range peerList {
				out = append(out, Rule{Peer: p, Protocol: port.proto, Port: n, EndPort: n, ID: r.id})
			}
		default:
			// Egress: the destination is the peer; its identity carries
			// its resolution of every referenced name.
			ref := namedRef{port.name, port.proto}
			list := peerList
			if r.allPeers {
				list = nil
				if ns := c.namedIdents[ref]; ns != nil {
					list = ns.list()
				}
			}
			for _, p := range list {
				ident, ok := c.ids.Get(p)
				if !ok {
					continue
				}
				if n, ok := ident.Labels.NamedPort(port.name, port.proto); ok {
					out = append(out, Rule{Peer: p, Protocol: port.proto, Port: n, EndPort: n, ID: r.id})
				}
			}
		}
	}
	return out
}

func resolvePort(p *Pod, name string, proto Protocol) (uint16, bool) {
	for _, cp := range p.Ports {
		if cp.Name == name && cp.Protocol == proto {
			return cp.Port, true
		}
	}
	return 0, false
}

func endpointEqual(a, b *Endpoint) bool {
	return a.Pod == b.Pod && slices.Equal(a.IPs, b.IPs) && slices.Equal(a.Identities, b.Identities) &&
		dirEqual(&a.Ingress, &b.Ingress) && dirEqual(&a.Egress, &b.Egress)
}

func dirEqual(a, b *DirectionPolicy) bool {
	return a.Isolated == b.Isolated && slices.Equal(a.IsolatedBy, b.IsolatedBy) && a.Rules.Equal(b.Rules)
}

// Endpoints returns the compiled endpoints, sorted by pod. Call Sync first.
func (c *Compiler) Endpoints() []*Endpoint {
	out := make([]*Endpoint, 0, len(c.endpoints))
	for _, pk := range sortedKeys(c.endpoints, comparePodKey) {
		out = append(out, c.endpoints[pk])
	}
	return out
}

// Endpoint returns one compiled endpoint. Call Sync first.
func (c *Compiler) Endpoint(k PodKey) (*Endpoint, bool) {
	ep, ok := c.endpoints[k]
	return ep, ok
}

// IPCache returns the address-to-identity table.
func (c *Compiler) IPCache() *identity.IPCache { return &c.ipc }

// Identity returns a live identity.
func (c *Compiler) Identity(id identity.ID) (*identity.Identity, bool) { return c.ids.Get(id) }

// Identities returns every live identity, sorted by number.
func (c *Compiler) Identities() []*identity.Identity { return c.ids.All() }

// Problems returns the policies that were rejected, sorted.
func (c *Compiler) Problems() []Problem {
	out := make([]Problem, 0, len(c.problems))
	for _, pk := range sortedKeys(c.problems, comparePolicyKey) {
		out = append(out, c.problems[pk])
	}
	return out
}

// PodByIP returns the pod that owns an address.
func (c *Compiler) PodByIP(ip netip.Addr) (PodKey, bool) {
	owners := c.ipOwners[ip.Unmap()]
	if len(owners) == 0 {
		return PodKey{}, false
	}
	return owners[0], true
}

// Pod returns a pod as the compiler holds it.
func (c *Compiler) Pod(k PodKey) (Pod, bool) {
	st, ok := c.pods[k]
	if !ok {
		return Pod{}, false
	}
	return st.pod, true
}

func comparePodKey(a, b PodKey) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

func comparePolicyKey(a, b PolicyKey) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

type set[K comparable] map[K]struct{}

func (s set[K]) add(k K)      { s[k] = struct{}{} }
func (s set[K]) del(k K)      { delete(s, k) }
func (s set[K]) has(k K) bool { _, ok := s[k]; return ok }

// clearSet empties s, making a new set when s grew large.
func clearSet[K comparable](s set[K]) set[K] {
	if len(s) > 256 {
		return set[K]{}
	}
	clear(s)
	return s
}

func addTo[K, V comparable](m map[K]set[V], k K, v V) {
	s := m[k]
	if s == nil {
		s = set[V]{}
		m[k] = s
	}
	s.add(v)
}

func delFrom[K, V comparable](m map[K]set[V], k K, v V) {
	if s := m[k]; s != nil {
		s.del(v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	return slices.SortedFunc(maps.Keys(m), cmp)
}

func labelsSet(m map[string]string) labels.Set { return labels.Set(m) }
