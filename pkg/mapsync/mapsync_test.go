package mapsync

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
)

// fakeMaps is an in-memory Maps. After every write it calls check, so a
// test can assert invariants on every intermediate state.
type fakeMaps struct {
	// mu makes each write, and the check after it, one step: Syncer
	// writes two maps at once when nothing is isolated.
	mu     sync.Mutex
	st     State
	capa   datapath.MapSizes
	writes int
	check  func(State)
	failAt int // fail the n-th write (1-based) when > 0
	// enforcedWrites counts policy and ipcache writes made while an
	// endpoint in the maps isolated a direction.
	enforcedWrites int
	// batch: maps() also offers BatchMaps, whose calls are recorded.
	batch   bool
	batches []string
}

// fakeBatch makes newFake's fakes batching (see bothWays).
var fakeBatch bool

func newFake() *fakeMaps { return &fakeMaps{st: newState(), batch: fakeBatch} }

// maps is what a Syncer under test writes to: f itself, or with batch f
// behind BatchMaps.
func (f *fakeMaps) maps() Maps {
	if f.batch {
		return batchFake{f}
	}
	return f
}

// bothWays runs a test with fakes that write one entry per call and
// again with batching fakes.
func bothWays(t *testing.T, test func(t *testing.T)) {
	for _, batch := range []bool{false, true} {
		t.Run(map[bool]string{false: "single", true: "batch"}[batch], func(t *testing.T) {
			fakeBatch = batch
			defer func() { fakeBatch = false }()
			test(t)
		})
	}
}

// batchFake is fakeMaps with BatchMaps: a batch writes its entries in
// slice order, each one a write the checks see, as the kernel's
// BPF_MAP_UPDATE_BATCH does; a failure stops it and reports how many
// entries were written.
type batchFake struct{ *fakeMaps }

func many[K any](f *fakeMaps, name string, keys []K, write func(int) error) (int, error) {
	if len(keys) == 0 {
		return 0, errors.New(name + ": empty batch")
	}
	f.mu.Lock()
	f.batches = append(f.batches, fmt.Sprintf("%s %d", name, len(keys)))
	f.mu.Unlock()
	for i := range keys {
		if err := write(i); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

func (b batchFake) IPCachePutMany(ks []datapath.IPCacheKey, vs []datapath.IPCacheVal) (int, error) {
	return many(b.fakeMaps, "ipcache put", ks, func(i int) error { return b.IPCachePut(ks[i].Prefix(), vs[i]) })
}
func (b batchFake) IPCacheDeleteMany(ks []datapath.IPCacheKey) (int, error) {
	return many(b.fakeMaps, "ipcache delete", ks, func(i int) error { return b.IPCacheDelete(ks[i].Prefix()) })
}
func (b batchFake) EndpointPutMany(ids []uint32, eps []datapath.Endpoint) (int, error) {
	return many(b.fakeMaps, "endpoint put", ids, func(i int) error { return b.EndpointPut(ids[i], eps[i]) })
}
func (b batchFake) EndpointDeleteMany(ids []uint32) (int, error) {
	return many(b.fakeMaps, "endpoint delete", ids, func(i int) error { return b.EndpointDelete(ids[i]) })
}
func (b batchFake) PolicyPutMany(ks []datapath.PolicyKey, vs []datapath.PolicyVal) (int, error) {
	return many(b.fakeMaps, "policy put", ks, func(i int) error { return b.PolicyPut(ks[i], vs[i]) })
}
func (b batchFake) PolicyDeleteMany(ks []datapath.PolicyKey) (int, error) {
	return many(b.fakeMaps, "policy delete", ks, func(i int) error { return b.PolicyDelete(ks[i]) })
}

func (f *fakeMaps) write() error {
	f.writes++
	if f.failAt > 0 && f.writes == f.failAt {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeMaps) after() {
	if f.check != nil {
		f.check(f.st)
	}
}

func (f *fakeMaps) IPCacheList() (map[netip.Prefix]datapath.IPCacheVal, error) {
	return clone(f.st.IPCache), nil
}
func (f *fakeMaps) IPCachePut(p netip.Prefix, v datapath.IPCacheVal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if isolatesAny(f.st.Endpoints) {
		f.enforcedWrites++
	}
	if err := f.write(); err != nil {
		return err
	}
	f.st.IPCache[p] = v
	f.after()
	return nil
}
func (f *fakeMaps) IPCacheDelete(p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if isolatesAny(f.st.Endpoints) {
		f.enforcedWrites++
	}
	if err := f.write(); err != nil {
		return err
	}
	delete(f.st.IPCache, p)
	f.after()
	return nil
}
func (f *fakeMaps) EndpointList() (map[uint32]datapath.Endpoint, error) {
	return clone(f.st.Endpoints), nil
}
func (f *fakeMaps) EndpointPut(i uint32, e datapath.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.write(); err != nil {
		return err
	}
	f.st.Endpoints[i] = e
	f.after()
	return nil
}
func (f *fakeMaps) EndpointDelete(i uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.write(); err != nil {
		return err
	}
	delete(f.st.Endpoints, i)
	f.after()
	return nil
}
func (f *fakeMaps) PolicyList() (map[datapath.PolicyKey]datapath.PolicyVal, error) {
	return clone(f.st.Policy), nil
}
func (f *fakeMaps) PolicyPut(k datapath.PolicyKey, v datapath.PolicyVal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if isolatesAny(f.st.Endpoints) {
		f.enforcedWrites++
	}
	if err := f.write(); err != nil {
		return err
	}
	f.st.Policy[k] = v
	f.after()
	return nil
}
func (f *fakeMaps) PolicyDelete(k datapath.PolicyKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if isolatesAny(f.st.Endpoints) {
		f.enforcedWrites++
	}
	if err := f.write(); err != nil {
		return err
	}
	delete(f.st.Policy, k)
	f.after()
	return nil
}
func (f *fakeMaps) Capacity() datapath.MapSizes { return f.capa }

func clone[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// allowed models the kernel's forward-packet decision on State: the
// endpoint's isolation flag, the ipcache longest-prefix match, then the
// longest-prefix policy entry for (peer identity), then (any), then (the
// prefix identity the matched entry names, if any).
func allowed(s State, ifindex uint32, dir policy.Direction, peer netip.Addr, proto uint8, port uint16) bool {
	ep, ok := s.Endpoints[ifindex]
	if !ok {
		return true
	}
	flag := datapath.EndpointIngressIsolated
	if dir == policy.Egress {
		flag = datapath.EndpointEgressIsolated
	}
	if ep.Flags&flag == 0 {
		return true
	}
	id, cidr := datapath.IdentityWorld, datapath.IdentityAny
	best := -1
	for p, v := range s.IPCache {
		if p.Contains(peer) && p.Bits() > best {
			best, id, cidr = p.Bits(), v.Identity, v.CidrIdentity
		}
	}
	if dir == policy.Ingress && id == datapath.IdentityHost && ep.Flags&datapath.EndpointAllowHost != 0 {
		return true
	}
	for k := range s.Policy {
		if k.EpId != ep.EpId || k.Dir != datapath.Dir(dir) ||
			(k.PeerId != id && k.PeerId != datapath.IdentityAny && (cidr == datapath.IdentityAny || k.PeerId != cidr)) {
			continue
		}
		if k.Prefixlen == 72 {
			return true
		}
		if k.Proto != proto {
			continue
		}
		lo, hi, ranged := k.PortRange()
		if !ranged || (port >= lo && port <= hi) {
			return true
		}
	}
	return false
}

// world is a small random cluster on one node.
type world struct {
	rng      *rand.Rand
	nsLabels map[string]map[string]string
	pods     map[policy.PodKey]policy.Pod
	pols     map[policy.PolicyKey]*networkingv1.NetworkPolicy
	ifindex  map[policy.PodKey]uint32
	// c is updated incrementally, as the agent's compiler is: identity
	// numbers are never reused for another label set.
	c       *policy.Compiler
	applied map[policy.PolicyKey]bool
	// what c was last given, so that only changes are set again (as the
	// agent does: an unchanged pod set again would be rebuilt, not patched)
	setPods map[policy.PodKey]policy.Pod
	setNS   map[string]map[string]string
	setFor  *policy.Compiler // the compiler they were given to
}

var apps = []string{"web", "api", "db"}

func newWorld(seed uint64) *world {
	w := &world{
		rng:      rand.New(rand.NewPCG(seed, 1)),
		nsLabels: map[string]map[string]string{"a": {"team": "x"}, "b": {"team": "y"}},
		pods:     map[policy.PodKey]policy.Pod{},
		pols:     map[policy.PolicyKey]*networkingv1.NetworkPolicy{},
		ifindex:  map[policy.PodKey]uint32{},
		c:        policy.New(policy.Options{}),
		applied:  map[policy.PolicyKey]bool{},
	}
	for i := range 6 {
		ns := []string{"a", "b"}[i%2]
		p := policy.Pod{
			Namespace: ns, Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"app": apps[w.rng.IntN(3)]},
			IPs:    []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)}), netip.MustParseAddr(fmt.Sprintf("fd00::%x", 10+i))},
			Ports:  []policy.ContainerPort{{Name: "http", Port: uint16(80 + w.rng.IntN(2)), Protocol: policy.ProtoTCP}},
		}
		w.pods[p.Key()] = p
		w.ifindex[p.Key()] = uint32(100 + i)
	}
	for range 3 {
		w.mutatePolicy()
	}
	return w
}

func (w *world) mutatePolicy() {
	name := fmt.Sprintf("np%d", w.rng.IntN(4))
	ns := []string{"a", "b"}[w.rng.IntN(2)]
	key := policy.PolicyKey{Namespace: ns, Name: name}
	if _, ok := w.pols[key]; ok && w.rng.IntN(3) == 0 {
		delete(w.pols, key)
		return
	}
	sel := func() *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": apps[w.rng.IntN(3)]}}
	}
	var peer networkingv1.NetworkPolicyPeer
	switch w.rng.IntN(5) {
	case 4: // no peers: every peer (the wildcard identity)
		peer.PodSelector = nil
	case 0:
		peer.PodSelector = sel()
	case 1:
		peer.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": []string{"x", "y"}[w.rng.IntN(2)]}}
		peer.PodSelector = sel()
	case 2:
		peer.IPBlock = &networkingv1.IPBlock{CIDR: "10.0.0.0/28", Except: []string{fmt.Sprintf("10.0.0.%d/32", 10+w.rng.IntN(6))}}
	default:
		peer.IPBlock = &networkingv1.IPBlock{CIDR: "fd00::/120"}
	}
	var ports []networkingv1.NetworkPolicyPort
	switch w.rng.IntN(3) {
	case 0:
		p := intstr.FromInt32(80)
		end := int32(80 + w.rng.IntN(3))
		ports = []networkingv1.NetworkPolicyPort{{Port: &p, EndPort: &end}}
	case 1:
		p := intstr.FromString("http")
		ports = []networkingv1.NetworkPolicyPort{{Port: &p}}
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *sel(),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: peers(peer), Ports: ports}},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: peers(peer), Ports: ports}},
		},
	}
	w.pols[key] = np
}

func peers(p networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer {
	if p.PodSelector == nil && p.NamespaceSelector == nil && p.IPBlock == nil {
		return nil
	}
	return []networkingv1.NetworkPolicyPeer{p}
}

func (w *world) mutate() {
	switch w.rng.IntN(4) {
	case 3: // a pod's address changes (a restarted pod keeps its name here)
		k := policy.PodKey{Namespace: []string{"a", "b"}[w.rng.IntN(2)], Name: fmt.Sprintf("p%d", w.rng.IntN(6))}
		if p, ok := w.pods[k]; ok {
			p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(2 + w.rng.IntN(20))})}
			w.pods[k] = p
		}
	case 0:
		w.mutatePolicy()
	case 1: // a pod changes labels: moves to another identity
		k := policy.PodKey{Namespace: []string{"a", "b"}[w.rng.IntN(2)], Name: fmt.Sprintf("p%d", w.rng.IntN(6))}
		if p, ok := w.pods[k]; ok {
			p.Labels = map[string]string{"app": apps[w.rng.IntN(3)]}
			w.pods[k] = p
		}
	default: // a namespace changes labels
		ns := []string{"a", "b"}[w.rng.IntN(2)]
		w.nsLabels[ns] = map[string]string{"team": []string{"x", "y", "z"}[w.rng.IntN(3)]}
	}
}

func (w *world) desired(t *testing.T) State {
	t.Helper()
	d, err := Desired(w.c, w.compile(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// compile feeds the world to its compiler, syncs it and returns the
// bindings of its pods, in random order.
func (w *world) compile(t *testing.T) []Binding {
	t.Helper()
	if w.setFor != w.c { // a new compiler (a restart) is given everything
		w.setFor, w.setPods, w.setNS = w.c, map[policy.PodKey]policy.Pod{}, map[string]map[string]string{}
	}
	for ns, l := range w.nsLabels {
		if old, ok := w.setNS[ns]; !ok || !maps.Equal(old, l) {
			w.c.SetNamespace(policy.Namespace{Name: ns, Labels: l})
			w.setNS[ns] = l
		}
	}
	var binds []Binding
	for k, p := range w.pods {
		if old, ok := w.setPods[k]; !ok || !reflect.DeepEqual(old, p) {
			w.c.SetPod(p)
			w.setPods[k] = p
		}
		binds = append(binds, Binding{Pod: k, Ifindex: w.ifindex[k]})
	}
	for k := range w.applied {
		if _, ok := w.pols[k]; !ok {
			w.c.DeletePolicy(k)
			delete(w.applied, k)
		}
	}
	for k, np := range w.pols {
		w.applied[k] = true
		if err := w.c.SetPolicy(np); err != nil {
			t.Fatal(err)
		}
	}
	w.c.Sync()
	return binds
}

type probe struct {
	ifindex uint32
	dir     policy.Direction
	peer    netip.Addr
	port    uint16
}

func (w *world) probes() []probe {
	var out []probe
	var addrs []netip.Addr
	for _, q := range w.pods {
		addrs = append(addrs, q.IPs...)
	}
	// Addresses no pod has: inside and outside the ipBlocks.
	addrs = append(addrs, netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("fd00::3"), netip.MustParseAddr("fd01::1"))
	for k, p := range w.pods {
		for _, peer := range addrs {
			{
				for _, port := range []uint16{80, 81, 82, 83, 84} {
					for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
						out = append(out, probe{w.ifindex[k], d, peer, port})
					}
				}
			}
		}
		_ = p
	}
	return out
}

// TestApplyOpensNoWindow: across every intermediate state of an update,
// a packet allowed before and after stays allowed, and one denied before
// and after stays denied.
func TestApplyOpensNoWindow(t *testing.T) { bothWays(t, testApplyOpensNoWindow) }

func testApplyOpensNoWindow(t *testing.T) {
	frozen := 0
	defer func() {
		if !t.Failed() && frozen == 0 {
			t.Error("no update parked a prefix on a temporary identity: the test misses that path")
		}
	}()
	for seed := range uint64(60) {
		w := newWorld(seed)
		f := newFake()
		s := New(f.maps())
		before := w.desired(t)
		if _, err := s.Reconcile(before); err != nil {
			t.Fatal(err)
		}
		for step := range 8 {
			w.mutate()
			after := w.desired(t)
			probes := w.probes()
			f.check = func(mid State) {
				for _, p := range probes {
					a, b, m := allowed(before, p.ifindex, p.dir, p.peer, 6, p.port),
						allowed(after, p.ifindex, p.dir, p.peer, 6, p.port),
						allowed(mid, p.ifindex, p.dir, p.peer, 6, p.port)
					if a == b && m != a {
						t.Fatalf("seed %d step %d: probe %+v was %v before and after, %v in between\nbefore:%s\nafter:%s\nmid:%s", seed, step, p, a, m, dumpFor(before, p.ifindex, uint8(p.dir), p.peer), dumpFor(after, p.ifindex, uint8(p.dir), p.peer), dumpFor(mid, p.ifindex, uint8(p.dir), p.peer))
					}
				}
			}
			st, err := s.Apply(after)
			if err != nil {
				t.Fatal(err)
			}
			frozen += st.Frozen
			f.check = nil
			if !equalState(f.st, after) {
				t.Fatalf("seed %d step %d: maps differ from desired after Apply (%+v)", seed, step, st)
			}
			before = after
		}
	}
}

func equalState(a, b State) bool {
	eq := func(x, y int) bool { return x == y }
	if !eq(len(a.IPCache), len(b.IPCache)) || !eq(len(a.Endpoints), len(b.Endpoints)) || !eq(len(a.Policy), len(b.Policy)) {
		return false
	}
	for k, v := range a.IPCache {
		if b.IPCache[k] != v {
			return false
		}
	}
	for k, v := range a.Endpoints {
		if b.Endpoints[k] != v {
			return false
		}
	}
	for k, v := range a.Policy {
		if w, ok := b.Policy[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestApplyIsMinimal(t *testing.T) { bothWays(t, testApplyIsMinimal) }

func testApplyIsMinimal(t *testing.T) {
	w := newWorld(7)
	f := newFake()
	s := New(f.maps())
	d := w.desired(t)
	st, err := s.Reconcile(d)
	if err != nil {
		t.Fatal(err)
	}
	if st.Writes() != len(d.IPCache)+len(d.Endpoints)+len(d.Policy) {
		t.Errorf("first sync wrote %d, want one write per entry (%d)", st.Writes(), len(d.IPCache)+len(d.Endpoints)+len(d.Policy))
	}
	st, err = s.Apply(w.desired(t))
	if err != nil || st.Writes() != 0 {
		t.Errorf("an unchanged state wrote %d (%v)", st.Writes(), err)
	}
	// A restarted agent (new Syncer) adopts the maps without writing.
	st, err = New(f.maps()).Reconcile(w.desired(t))
	if err != nil || st.Writes() != 0 {
		t.Errorf("adopting an up-to-date map wrote %d (%v)", st.Writes(), err)
	}
}

func TestReconcileRepairsDrift(t *testing.T) { bothWays(t, testReconcileRepairsDrift) }

func testReconcileRepairsDrift(t *testing.T) {
	w := newWorld(3)
	f := newFake()
	s := New(f.maps())
	d := w.desired(t)
	if _, err := s.Reconcile(d); err != nil {
		t.Fatal(err)
	}
	// Someone deletes an entry and adds a bogus allow behind our back.
	for k := range f.st.Policy {
		delete(f.st.Policy, k)
		break
	}
	bogus := datapath.PolicyKey{Prefixlen: 72, EpId: 100, PeerId: datapath.IdentityAny, Dir: datapath.DirIngress}
	f.st.Policy[bogus] = datapath.PolicyVal{RuleId: 999, Action: datapath.ActionAllow}
	// Apply trusts its cache and does not see it...
	if st, _ := s.Apply(d); st.Writes() != 0 {
		t.Fatalf("Apply wrote %d", st.Writes())
	}
	// ...Reconcile dumps the kernel and repairs both.
	st, err := s.Reconcile(d)
	if err != nil {
		t.Fatal(err)
	}
	if st.PolicyPut != 1 || st.PolicyDeleted != 1 || !equalState(f.st, d) {
		t.Errorf("reconcile: %+v, state equal: %v", st, equalState(f.st, d))
	}
}

func TestMapFullRefusedWhole(t *testing.T) { bothWays(t, testMapFullRefusedWhole) }

func testMapFullRefusedWhole(t *testing.T) {
	w := newWorld(5)
	f := newFake()
	s := New(f.maps())
	d := w.desired(t)
	f.capa = datapath.MapSizes{Policy: uint32(len(d.Policy) - 1)}
	_, err := s.Reconcile(d)
	if !errors.Is(err, ErrMapFull) {
		t.Fatalf("err = %v, want ErrMapFull", err)
	}
	if f.writes != 0 {
		t.Errorf("%d writes before refusing: the previous state must stay untouched", f.writes)
	}
	f.capa.Policy = uint32(len(d.Policy))
	if _, err := s.Reconcile(d); err != nil {
		t.Fatalf("fits exactly: %v", err)
	}
}

func TestFailedWriteReconcilesNext(t *testing.T) { bothWays(t, testFailedWriteReconcilesNext) }

func testFailedWriteReconcilesNext(t *testing.T) {
	w := newWorld(9)
	f := newFake()
	s := New(f.maps())
	d := w.desired(t)
	f.failAt = 3
	if _, err := s.Reconcile(d); err == nil {
		t.Fatal("no error from the injected failure")
	}
	if _, ok := s.Realized(); ok {
		t.Fatal("after a failed write the cache must be dropped")
	}
	f.failAt = 0
	if _, err := s.Apply(d); err != nil {
		t.Fatal(err)
	}
	if !equalState(f.st, d) {
		t.Error("state differs after recovery")
	}
}

func TestDesiredUnknownPod(t *testing.T) {
	c := policy.Build(policy.Snapshot{}, policy.Options{})
	_, err := Desired(c, []Binding{{Pod: policy.PodKey{Namespace: "a", Name: "x"}, Ifindex: 5}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "endpoint a/x (ifindex 5)") {
		t.Fatalf("err = %v, want one naming the pod", err)
	}
}

// MaxIdentity returns the highest identity the state uses.
func maxIdentity(s State) datapath.Identity {
	var m datapath.Identity
	for _, v := range s.IPCache {
		m = max(m, v.Identity)
	}
	for k := range s.Policy {
		m = max(m, k.PeerId)
	}
	return m
}

// adoptedWorld is a random world reconciled into fake maps, as a killed
// agent leaves them: the world, the maps and a copy of their state.
func adoptedWorld(t *testing.T, seed uint64) (*world, *fakeMaps, State) {
	t.Helper()
	w := newWorld(seed)
	for range 5 {
		w.mutate()
	}
	f := newFake()
	if _, err := New(f.maps()).Reconcile(w.desired(t)); err != nil {
		t.Fatal(err)
	}
	return w, f, f.st.clone()
}

// TestRestartRenumbering: a restarted agent numbers identities afresh,
// above every number in the adopted maps. Reconciling rewrites entries but
// every packet keeps its verdict at every step.
func TestRestartRenumbering(t *testing.T) { bothWays(t, testRestartRenumbering) }

func testRestartRenumbering(t *testing.T) {
	for seed := range uint64(30) {
		w, f, before := adoptedWorld(t, seed)
		w.c = policy.New(policy.Options{FirstIdentity: identity.ID(maxIdentity(before)) + 1})
		w.applied = map[policy.PolicyKey]bool{}
		after := w.desired(t)
		probes := w.probes()
		f.check = func(mid State) {
			for _, p := range probes {
				a, m := allowed(before, p.ifindex, p.dir, p.peer, 6, p.port), allowed(mid, p.ifindex, p.dir, p.peer, 6, p.port)
				if b := allowed(after, p.ifindex, p.dir, p.peer, 6, p.port); a != b {
					t.Fatalf("seed %d: the same objects compiled twice disagree on %+v", seed, p)
				}
				if m != a {
					t.Fatalf("seed %d: probe %+v changed verdict during the restart reconcile", seed, p)
				}
			}
		}
		st, err := New(f.maps()).Reconcile(after)
		if err != nil {
			t.Fatal(err)
		}
		if st.Writes() == 0 && len(after.IPCache) > 0 {
			t.Fatalf("seed %d: renumbered identities but nothing was written", seed)
		}
		if !equalState(f.st, after) {
			t.Fatalf("seed %d: maps differ from desired", seed)
		}
	}
}

// hintsOf is what a restarted agent reads from the adopted ipcache.
func hintsOf(s State) map[netip.Prefix]identity.Entry {
	h := map[netip.Prefix]identity.Entry{}
	for p, v := range s.IPCache {
		var e identity.Entry
		if v.Identity >= datapath.IdentityUserMin {
			e.ID = identity.ID(v.Identity)
		}
		if v.CidrIdentity >= datapath.IdentityUserMin {
			e.CIDR = identity.ID(v.CidrIdentity)
		}
		if e != (identity.Entry{}) {
			h[p] = e
		}
	}
	return h
}

// TestRestartKeepsNumbers: a restarted agent that numbers identities as
// the adopted ipcache does (policy.Options.IdentityHints) reconciles the
// same objects with no identity-bearing write, and objects that changed
// while no agent ran (relabels, moved addresses, policies) without a
// window: a packet allowed before and after stays allowed at every step,
// one denied before and after stays denied.
func TestRestartKeepsNumbers(t *testing.T) { bothWays(t, testRestartKeepsNumbers) }

func testRestartKeepsNumbers(t *testing.T) {
	rewritten, total := 0, 0
	defer func() { t.Logf("policy keys rewritten after a restart with no change: %d of %d", rewritten, total) }()
	for seed := range uint64(60) {
		w, f, before := adoptedWorld(t, seed)
		restart := func() {
			w.c = policy.New(policy.Options{FirstIdentity: identity.ID(maxIdentity(before)) + 1, IdentityHints: hintsOf(before)})
			w.applied = map[policy.PolicyKey]bool{}
		}

		// Nothing changed while no agent ran.
		restart()
		same := w.desired(t)
		st, err := New(f.maps()).Reconcile(same)
		if err != nil {
			t.Fatal(err)
		}
		if st.IPCachePut+st.IPCacheDeleted+st.EndpointPut+st.EndpointDeleted != 0 {
			t.Fatalf("seed %d: the same objects after a restart: %+v, want no ipcache or endpoint write", seed, st)
		}
		// A policy key may only change for an identity the ipcache did
		// not show (a CIDR identity shadowed by a pod's exact address):
		// there was no number to keep.
		shown := map[datapath.Identity]bool{}
		for _, v := range before.IPCache {
			shown[v.Identity] = true
		}
		for k := range before.Policy {
			if _, kept := same.Policy[k]; !kept && shown[k.PeerId] {
				t.Fatalf("seed %d: policy key %+v of identity %d (in the adopted ipcache) rewritten after a restart", seed, k, k.PeerId)
			}
		}
		rewritten += st.PolicyDeleted
		total += len(before.Policy)
		if !equalState(f.st, same) {
			t.Fatalf("seed %d: maps differ from desired", seed)
		}

		// Changes while no agent ran.
		before = f.st.clone()
		for range 1 + int(seed%4) {
			w.mutate()
		}
		restart()
		after := w.desired(t)
		probes := w.probes()
		f.check = func(mid State) {
			for _, p := range probes {
				a, b := allowed(before, p.ifindex, p.dir, p.peer, 6, p.port), allowed(after, p.ifindex, p.dir, p.peer, 6, p.port)
				if m := allowed(mid, p.ifindex, p.dir, p.peer, 6, p.port); a == b && m != a {
					t.Fatalf("seed %d: probe %+v is %v before and after the restart but %v in between", seed, p, a, m)
				}
			}
		}
		if _, err := New(f.maps()).Reconcile(after); err != nil {
			t.Fatal(err)
		}
		f.check = nil
		if !equalState(f.st, after) {
			t.Fatalf("seed %d: maps differ from desired", seed)
		}
	}
}

// TestBatchesKeepTheOrder: with BatchMaps, every batch is one step of the
// package doc's order and the steps come in that order (a step may be
// absent, never merged with another or moved), and batches are used. An
// update during which nothing is isolated writes policy and ipcache
// entries at once (in either order), and parks nothing.
func TestBatchesKeepTheOrder(t *testing.T) {
	steps := []string{"endpoint delete", "endpoint put", "policy put", "ipcache put", "policy put", "policy delete",
		"ipcache put", "ipcache delete", "endpoint put", "policy delete"}
	concurrentSteps := []string{"endpoint delete", "endpoint put", "policy put", "ipcache put", "policy delete",
		"ipcache delete", "endpoint put"}
	frozen, calls, concurrent := 0, 0, 0
	for seed := range uint64(40) {
		w := newWorld(seed)
		f := newFake()
		f.batch = true
		s := New(f.maps())
		for step := range 6 {
			if step > 0 {
				w.mutate()
			}
			f.batches = nil
			f.enforcedWrites = 0
			st, err := s.Apply(w.desired(t))
			if err != nil {
				t.Fatal(err)
			}
			frozen += st.Frozen
			calls += len(f.batches)
			want := steps
			if st.Concurrent {
				concurrent++
				if f.enforcedWrites > 0 || st.Frozen > 0 {
					t.Fatalf("seed %d step %d: concurrent writes, but %d policy or ipcache writes met an isolated endpoint (%d parked)",
						seed, step, f.enforcedWrites, st.Frozen)
				}
				want = concurrentSteps
				// The two concurrent batches may start in either order.
				for i := 0; i+1 < len(f.batches); i++ {
					a, b := f.batches[i], f.batches[i+1]
					if strings.HasPrefix(a, "ipcache put") && strings.HasPrefix(b, "policy put") {
						f.batches[i], f.batches[i+1] = b, a
						break
					}
				}
			}
			next := 0
			for _, b := range f.batches {
				kind := strings.TrimRight(b, " 0123456789")
				for next < len(want) && want[next] != kind {
					next++
				}
				if next == len(want) {
					t.Fatalf("seed %d step %d: batches %q are not in the order of the steps", seed, step, f.batches)
				}
				next++
			}
		}
	}
	if frozen == 0 || calls == 0 || concurrent == 0 {
		t.Errorf("%d batch calls, %d frozen prefixes, %d concurrent updates: the test misses a path", calls, frozen, concurrent)
	}
}

func isolatesAny(eps map[uint32]datapath.Endpoint) bool {
	for _, ep := range eps {
		if ep.Flags&isolation != 0 {
			return true
		}
	}
	return false
}

// TestFreezeSkipsLeftTemporaries: temporary identities an interrupted
// update left in the maps are found by the dump, and the next update parks
// its prefixes on other numbers.
func TestFreezeSkipsLeftTemporaries(t *testing.T) {
	left := netip.MustParsePrefix("203.0.113.7/32")
	frozen := 0
	for seed := range uint64(40) {
		w := newWorld(seed)
		f := newFake()
		s := New(f.maps())
		if _, err := s.Apply(w.desired(t)); err != nil {
			t.Fatal(err)
		}
		w.mutate()
		want := w.desired(t)
		// What an update interrupted between steps 1 and 6 leaves behind.
		f.st.IPCache[left] = datapath.IPCacheVal{Identity: TempIdentityBase}
		f.st.Policy[datapath.PolicyKey{Prefixlen: 72, EpId: 1, PeerId: TempIdentityBase}] = datapath.PolicyVal{RuleId: 1, Action: datapath.ActionAllow}
		f.check = func(st State) {
			for p, v := range st.IPCache {
				if p != left && v.Identity == TempIdentityBase {
					t.Fatalf("seed %d: %s parked on %#x, the number a left-over entry holds", seed, p, v.Identity)
				}
			}
		}
		st, err := s.Reconcile(want)
		if err != nil {
			t.Fatal(err)
		}
		frozen += st.Frozen
		if !equalState(f.st, want) {
			t.Fatalf("seed %d: maps differ from the desired state after the reconcile", seed)
		}
	}
	if frozen == 0 {
		t.Error("no reconcile parked a prefix: the test misses the path")
	}
}

// TestFreezeCopiesOnlyRealizedAllows: the index of realized allows by peer
// that freeze reads (built by the first freeze, kept since) still lists
// an allow deleted after it was built; a later freeze must not park a
// prefix on a copy of it. Update 1 moves p1 off X while X loses port 81
// and gains 83 (a freeze: the index is built); update 2 moves p2 off X
// while X gains port 82: port 81 from p2 is denied before, after, and at
// every write between, and 83, which X gained after the index was built,
// allowed. The same for the wildcard: its port 84, gone in update 1, is
// not copied in update 2.
func TestFreezeCopiesOnlyRealizedAllows(t *testing.T) {
	bothWays(t, testFreezeCopiesOnlyRealizedAllows)
}

func testFreezeCopiesOnlyRealizedAllows(t *testing.T) {
	const ifindex = 100
	const x, y, z, w datapath.Identity = 1000, 1001, 1002, 1003
	p1, p2 := netip.MustParsePrefix("10.1.0.1/32"), netip.MustParsePrefix("10.1.0.2/32")
	key := func(peer datapath.Identity, port uint16) datapath.PolicyKey {
		keys, err := ruleKeys(ifindex, policy.Ingress, policy.Rule{Peer: identity.ID(peer), Protocol: policy.ProtoTCP, Port: port, EndPort: port, ID: 1})
		if err != nil || len(keys) != 1 {
			t.Fatalf("ruleKeys: %v %v", keys, err)
		}
		return keys[0]
	}
	state := func(ipc map[netip.Prefix]datapath.Identity, pol ...datapath.PolicyKey) State {
		st := newState()
		st.Endpoints[ifindex] = datapath.Endpoint{EpId: ifindex, Flags: datapath.EndpointIngressIsolated}
		for p, id := range ipc {
			st.IPCache[p] = datapath.IPCacheVal{Identity: id}
		}
		// Allows of another identity: the updates are small beside the
		// state, so the Syncer keeps its realized state (and the index)
		// rather than copying the desired one.
		for port := range uint16(40) {
			pol = append(pol, key(w, 1000+port))
		}
		for _, k := range pol {
			st.Policy[k] = datapath.PolicyVal{RuleId: 1, Action: datapath.ActionAllow}
		}
		return st
	}
	steps := []struct {
		st   State
		peer netip.Addr // the address that moves
	}{
		{state(map[netip.Prefix]datapath.Identity{p1: x, p2: x}, key(x, 80), key(x, 81), key(datapath.IdentityAny, 84)), netip.Addr{}},
		{state(map[netip.Prefix]datapath.Identity{p1: y, p2: x}, key(x, 80), key(x, 83), key(y, 80)), p1.Addr()},
		{state(map[netip.Prefix]datapath.Identity{p1: y, p2: z}, key(x, 80), key(x, 82), key(x, 83), key(y, 80), key(z, 80), key(z, 83)), p2.Addr()},
	}
	f := newFake()
	s := New(f.maps())
	if _, err := s.Reconcile(steps[0].st); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(steps); i++ {
		before, after, peer := steps[i-1].st, steps[i].st, steps[i].peer
		f.check = func(mid State) {
			for _, port := range []uint16{80, 81, 82, 83, 84} {
				a, b, m := allowed(before, ifindex, policy.Ingress, peer, 6, port), allowed(after, ifindex, policy.Ingress, peer, 6, port),
					allowed(mid, ifindex, policy.Ingress, peer, 6, port)
				if a == b && m != a {
					t.Fatalf("update %d: %s to port %d was %v before and after, %v in between\nmid:%s", i, peer, port, a, m,
						dumpFor(mid, ifindex, uint8(policy.Ingress), peer))
				}
			}
		}
		st, err := s.Apply(after)
		f.check = nil
		if err != nil {
			t.Fatal(err)
		}
		if st.Frozen == 0 {
			t.Fatalf("update %d parked no prefix: the test misses freeze", i)
		}
		if !equalState(f.st, after) {
			t.Fatalf("update %d: maps differ from desired", i)
		}
	}
}
