package policy

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/ztnet/zt/internal/randpolicy"
	"github.com/ztnet/zt/pkg/identity"
)

var (
	flagSeed   = flag.Uint64("policy.seed", 0, "seed of the randomized tests (0: time-based)")
	flagWorlds = flag.Int("policy.worlds", 0, "number of random worlds (0: default)")
)

// testSeed returns the seed to use and logs how to reproduce a failure.
func testSeed(t testing.TB) uint64 {
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reproduce with: go test ./pkg/policy -run '^%s$' -policy.seed=%d", t.Name(), seed)
		}
	})
	return seed
}

func worldCount(def int) int {
	if *flagWorlds > 0 {
		return *flagWorlds
	}
	if testing.Short() || raceEnabled {
		return max(def/5, 1)
	}
	return def
}

// gen draws random worlds, and policies from the whole field space with
// randpolicy.
type gen struct {
	r  *rand.Rand
	rp *randpolicy.Gen
	// pools the world draws from
	nsNames  []string
	v4, v6   []netip.Addr
	hostIP   []netip.Addr
	external []netip.Addr
}

// genWorld is what worlds are made of: namespaces ns0..ns3, the label
// spaces, ports and CIDRs of randpolicy.DefaultWorld.
var genWorld = randpolicy.DefaultWorld(4)

var (
	genPodKeys   = genWorld.PodLabels.Keys
	genPodVals   = genWorld.PodLabels.Values
	genNSKeys    = genWorld.NamespaceLabels.Keys
	genNSVals    = genWorld.NamespaceLabels.Values
	genPortNames = genWorld.PortNames
	genPortNums  = func() (out []uint16) {
		for _, n := range genWorld.PortNumbers {
			out = append(out, uint16(n))
		}
		return out
	}()
	genProtos = []Protocol{ProtoTCP, ProtoUDP, ProtoSCTP}
	// genProbePorts are probed in every world, besides the declared ports:
	// ports a policy may name that no pod declares among them.
	genProbePorts = []probe{
		{ProtoTCP, 80}, {ProtoTCP, 81}, {ProtoTCP, 53}, {ProtoUDP, 53}, {ProtoUDP, 80},
		{ProtoSCTP, 80}, {ProtoTCP, 443}, {ProtoTCP, 8080}, {ProtoTCP, 9000}, {ProtoUDP, 9000},
		{ProtoTCP, randpolicy.UnknownPortNumber}, {ProtoSCTP, 81}, {ProtoTCP, 10000}, {ProtoUDP, 65535},
		{identityICMP, 0},
	}
)

const identityICMP Protocol = 1

func newGen(seed uint64) *gen {
	g := &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	g.rp = randpolicy.New(g.r, genWorld)
	g.nsNames = genWorld.Namespaces
	g.v4, g.v6 = randpolicy.PodAddrs(12)
	g.hostIP = []netip.Addr{netip.MustParseAddr("10.0.9.1"), netip.MustParseAddr("fd00::9:1")}
	g.external = []netip.Addr{
		netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("10.0.1.77"), netip.MustParseAddr("8.8.8.8"),
		netip.MustParseAddr("fd00::ff"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.168.7.7"),
	}
	return g
}

func (g *gen) pick(xs []string) string { return randpolicy.Pick(g.r, xs) }
func (g *gen) chance(p float64) bool   { return g.rp.Chance(p) }

func (g *gen) labels(keys []string, vals map[string][]string) map[string]string {
	return g.rp.Labels(randpolicy.LabelSpace{Keys: keys, Values: vals})
}

func (g *gen) world() *refWorld {
	w := &refWorld{}
	nns := 1 + g.r.IntN(len(g.nsNames))
	used := g.nsNames[:nns]
	for _, n := range used {
		if g.chance(0.1) {
			continue // pods whose Namespace object is unknown
		}
		w.Namespaces = append(w.Namespaces, Namespace{Name: n, Labels: g.labels(genNSKeys, genNSVals)})
	}
	v4 := slices.Clone(g.v4)
	v6 := slices.Clone(g.v6)
	g.r.Shuffle(len(v4), func(i, j int) { v4[i], v4[j] = v4[j], v4[i] })
	g.r.Shuffle(len(v6), func(i, j int) { v6[i], v6[j] = v6[j], v6[i] })
	npods := 1 + g.r.IntN(8)
	for i := range npods {
		p := Pod{Namespace: g.pick(used), Name: fmt.Sprintf("p%d", i), Labels: g.labels(genPodKeys, genPodVals)}
		switch x := g.r.Float64(); {
		case x < 0.55:
			p.IPs = []netip.Addr{v4[i]}
		case x < 0.75:
			p.IPs = []netip.Addr{v6[i]}
		case x < 0.93:
			p.IPs = []netip.Addr{v4[i], v6[i]}
			if g.chance(0.3) {
				p.IPs = []netip.Addr{v6[i], v4[i]}
			}
		default:
			// no IP yet
		}
		if i > 0 && g.chance(0.03) && len(w.Pods[i-1].IPs) > 0 {
			p.IPs = slices.Clone(w.Pods[i-1].IPs) // duplicate address
		}
		if g.chance(0.04) {
			p.HostNetwork = true
			p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 0, byte(i + 1)})}
		}
		names := slices.Clone(genPortNames)
		g.r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		for j := range g.r.IntN(4) {
			cp := ContainerPort{Port: genPortNums[g.r.IntN(len(genPortNums))], Protocol: genProtos[g.r.IntN(3)]}
			if g.chance(0.8) {
				cp.Name = names[j]
			}
			p.Ports = append(p.Ports, cp)
		}
		w.Pods = append(w.Pods, p)
	}
	if g.chance(0.7) {
		w.HostIPs = []netip.Addr{g.hostIP[g.r.IntN(2)]}
	}
	for i := range g.r.IntN(6) {
		w.Policies = append(w.Policies, g.policy(fmt.Sprintf("np%d", i), used, w))
	}
	return w
}

// policy draws a policy in one of nss whose ipBlocks are drawn around the
// addresses of w (its pods'), the node's and the external ones.
func (g *gen) policy(name string, nss []string, w *refWorld) *networkingv1.NetworkPolicy {
	g.rp.World.Addrs = randpolicy.Addrs(w.podIPs(), g.external, g.hostIP)
	return g.rp.Policy(g.pick(nss), name)
}

// addrs returns every address worth probing in w: pod addresses, the
// host's, and a few external ones.
func (w *refWorld) addrs(g *gen) []netip.Addr {
	return randpolicy.Addrs(w.podIPs(), w.HostIPs, g.external)
}

// podIPs returns the addresses of w's pods.
func (w *refWorld) podIPs() []netip.Addr {
	var out []netip.Addr
	for _, p := range w.Pods {
		out = append(out, p.IPs...)
	}
	return out
}

// probes returns the probes for w: the fixed set plus every declared port.
func (w *refWorld) probes() []probe {
	out := slices.Clone(genProbePorts)
	for _, p := range w.Pods {
		for _, cp := range p.Ports {
			out = append(out, probe{cp.Protocol, cp.Port})
		}
	}
	slices.SortFunc(out, func(a, b probe) int {
		if a.Proto != b.Proto {
			return int(a.Proto) - int(b.Proto)
		}
		return int(a.Port) - int(b.Port)
	})
	return slices.Compact(out)
}

// dump renders w for a failure message.
func (w *refWorld) dump() string {
	var b strings.Builder
	for _, ns := range w.Namespaces {
		fmt.Fprintf(&b, "namespace %s %v\n", ns.Name, ns.Labels)
	}
	for _, p := range w.Pods {
		fmt.Fprintf(&b, "pod %s/%s labels=%v ips=%v ports=%v hostNetwork=%v\n", p.Namespace, p.Name, p.Labels, p.IPs, p.Ports, p.HostNetwork)
	}
	fmt.Fprintf(&b, "hostIPs %v\n", w.HostIPs)
	for _, np := range w.Policies {
		y, _ := yaml.Marshal(np)
		fmt.Fprintf(&b, "--- policy %s/%s\n%s", np.Namespace, np.Name, y)
	}
	return b.String()
}

// compareWithRef checks c against the reference on every address pair and
// probe and returns the first few disagreements.
func compareWithRef(c *Compiler, w *refWorld, g *gen, max int) []string {
	var bad []string
	addrs := w.addrs(g)
	probes := w.probes()
	for _, src := range addrs {
		for _, dst := range addrs {
			if src.Is4() != dst.Is4() {
				continue
			}
			for _, pr := range probes {
				want := w.refAllowed(src, dst, pr.Proto, pr.Port)
				v := c.Evaluate(src, dst, pr.Proto, pr.Port)
				if v.Allowed != want {
					bad = append(bad, fmt.Sprintf("%s -> %s %s: compiler %v (%s), reference %v; verdict %s",
						src, dst, pr, v.Allowed, v.Reason, want, fmtVerdict(v)))
					if len(bad) >= max {
						return bad
					}
				}
			}
		}
	}
	return bad
}

func fmtVerdict(v Verdict) string {
	s := fmt.Sprintf("src-id=%s dst-id=%s", v.SrcIdentity, v.DstIdentity)
	for _, dv := range []*DirVerdict{v.Egress, v.Ingress} {
		if dv != nil {
			s += fmt.Sprintf(" [%s isolated=%v by=%v allowed=%v rules=%v host=%v]", dv.Endpoint, dv.Isolated, dv.IsolatedBy, dv.Allowed, dv.AllowedBy, dv.FromHost)
		}
	}
	return s
}

// checkInvariants checks what must hold of any compiler state.
func checkInvariants(t *testing.T, c *Compiler) {
	t.Helper()
	c.Sync()
	for _, ep := range c.Endpoints() {
		for d := range 2 {
			dp := ep.Dir(Direction(d))
			if dp.Isolated != (len(dp.IsolatedBy) > 0) {
				t.Errorf("%s %s: isolated=%v but isolatedBy=%v", ep.Pod, Direction(d), dp.Isolated, dp.IsolatedBy)
			}
			for r := range dp.Rules.All() {
				ref, ok := c.Rule(r.ID)
				if !ok {
					t.Errorf("%s %s: rule %s has no RuleRef", ep.Pod, Direction(d), r)
					continue
				}
				if ref.Direction != Direction(d) {
					t.Errorf("%s %s: rule %s refers to %s", ep.Pod, Direction(d), r, ref)
				}
				if _, ok := c.policies[ref.Policy]; !ok {
					t.Errorf("%s %s: rule %s refers to missing policy %s", ep.Pod, Direction(d), r, ref)
				}
				if r.Peer != 0 {
					if _, ok := c.Identity(r.Peer); !ok {
						t.Errorf("%s %s: rule %s names a released identity", ep.Pod, Direction(d), r)
					}
				}
			}
		}
	}
	// Every rule number maps back to a live policy's rule.
	for id, ref := range c.ruleRefs {
		ps, ok := c.policies[ref.Policy]
		if !ok {
			t.Errorf("rule %d refers to %s, which is not compiled", id, ref)
			continue
		}
		if c.ruleIDs[ref] != id {
			t.Errorf("rule %d -> %s -> %d", id, ref, c.ruleIDs[ref])
		}
		if ref.Index >= len(ps.cp.rules[ref.Direction]) {
			t.Errorf("rule %d refers to %s, past the policy's rules", id, ref)
		}
	}
	if len(c.ruleIDs) != len(c.ruleRefs) {
		t.Errorf("%d rule refs but %d rule numbers", len(c.ruleIDs), len(c.ruleRefs))
	}
	// Peer sets hold live identities only.
	for pk, ps := range c.policies {
		for d := range 2 {
			for i := range ps.peers[d] {
				for id := range ps.peers[d][i].ids {
					if _, ok := c.Identity(id); !ok {
						t.Errorf("policy %s %s[%d]: peer set holds released identity %d", pk, Direction(d), i, id)
					}
				}
			}
		}
	}
	checkIncrementalState(t, c)
	// The ipcache points at live identities.
	for p, e := range c.IPCache().Entries() {
		if _, ok := c.Identity(e.ID); !ok {
			t.Errorf("ipcache %s -> %d: identity not live", p, e.ID)
		}
		if e.CIDR == 0 {
			continue
		}
		if ident, ok := c.Identity(e.CIDR); !ok || ident.Labels.Kind != identity.KindCIDR {
			t.Errorf("ipcache %s -> prefix identity %d: not a live CIDR identity", p, e.CIDR)
		}
	}
}

// buildIncrementally loads w into a fresh compiler one object at a time,
// in an order drawn from r.
func buildIncrementally(w *refWorld, r *rand.Rand) *Compiler {
	return buildShuffled(w, r, 3)
}

// buildIncrementallyOneSync applies every object in random order and
// syncs once, as an agent's first sync after its caches are synced.
func buildIncrementallyOneSync(w *refWorld, r *rand.Rand) *Compiler {
	return buildShuffled(w, r, 0)
}

// buildShuffled applies w's objects in random order, syncing after each
// with probability 1/syncEvery (never for 0), and once at the end.
func buildShuffled(w *refWorld, r *rand.Rand, syncEvery int) *Compiler {
	c := New(w.Opts)
	type op func()
	var ops []op
	for _, ns := range w.Namespaces {
		ops = append(ops, func() { c.SetNamespace(ns) })
	}
	for _, p := range w.Pods {
		ops = append(ops, func() { c.SetPod(p) })
	}
	for _, np := range w.Policies {
		ops = append(ops, func() { _ = c.SetPolicy(np) })
	}
	ops = append(ops, func() { c.SetHostIPs(w.HostIPs) })
	r.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	for _, o := range ops {
		o()
		if syncEvery > 0 && r.IntN(syncEvery) == 0 {
			c.Sync()
		}
	}
	c.Sync()
	return c
}

func TestRandomWorldsAgainstReference(t *testing.T) {
	seed := testSeed(t)
	g := newGen(seed)
	n := worldCount(400)
	chunks := rand.New(rand.NewPCG(seed, 99))
	for i := range n {
		// Half the worlds cut rule lists into chunks of a few rules, so
		// that endpoints hold many (Rules).
		setRuleChunk(t, []int{256, 1 + chunks.IntN(4)}[i%2])
		w := g.world()
		switch g.r.IntN(8) {
		case 0:
			w.Opts.DenyFromHost = true
		case 1:
			w.Opts.ClusterDefaultDeny = &DefaultDeny{
				ExemptNamespaces: []string{"ns3"},
				Allow: []DefaultDenyAllow{{
					Name:  "dns",
					To:    networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromInt32(53)), Protocol: ptr(corev1.ProtocolUDP)}},
				}},
			}
		}
		for _, mode := range []string{"build", "incremental"} {
			var c *Compiler
			if mode == "build" {
				c = Build(w.snapshot(), w.Opts)
			} else {
				c = buildIncrementally(w, g.r)
			}
			if p := c.Problems(); len(p) > 0 {
				t.Fatalf("world %d (%s): unexpected problems %v\n%s", i, mode, p, w.dump())
			}
			checkInvariants(t, c)
			if bad := compareWithRef(c, w, g, 5); len(bad) > 0 {
				t.Fatalf("world %d (%s, opts %+v): compiler and reference disagree:\n  %s\nworld:\n%s", i, mode, w.Opts, strings.Join(bad, "\n  "), w.dump())
			}
		}
		checkRestartHints(t, i, w, g)
	}
}

// checkRestartHints compiles w again as a restarted agent does, numbering
// identities above the first compile's and hinted by its ipcache: every
// address keeps its number, and the verdicts stay the reference's.
func checkRestartHints(t *testing.T, i int, w *refWorld, g *gen) {
	t.Helper()
	first := Build(w.snapshot(), w.Opts)
	adopted := first.IPCache().Entries()
	opts := w.Opts
	opts.IdentityHints = map[netip.Prefix]identity.Entry{}
	for p, e := range adopted {
		opts.FirstIdentity = max(opts.FirstIdentity, e.ID+1, e.CIDR+1)
		var h identity.Entry
		if e.ID >= identity.FirstAllocated {
			h.ID = e.ID
		}
		if e.CIDR >= identity.FirstAllocated {
			h.CIDR = e.CIDR
		}
		opts.IdentityHints[p] = h
	}
	saved := w.Opts
	defer func() { w.Opts = saved }()
	w.Opts = opts
	// The agent's first sync sees every object (its caches are synced);
	// later syncs number what changed afresh, so with intermediate syncs
	// only the verdicts are checked.
	for _, mode := range []string{"build", "incremental, one sync", "incremental"} {
		var c *Compiler
		switch mode {
		case "build":
			c = Build(w.snapshot(), opts)
		case "incremental, one sync":
			c = buildIncrementallyOneSync(w, g.r)
		default:
			c = buildIncrementally(w, g.r)
		}
		checkInvariants(t, c)
		if bad := compareWithRef(c, w, g, 5); len(bad) > 0 {
			t.Fatalf("world %d (restart, %s): compiler and reference disagree:\n  %s\nworld:\n%s", i, mode, strings.Join(bad, "\n  "), w.dump())
		}
		if mode == "incremental" {
			continue
		}
		got := c.IPCache().Entries()
		for p, e := range adopted {
			if g := got[p]; g != e {
				t.Fatalf("world %d (restart, %s): %s was %+v, is %+v after the restart\nworld:\n%s", i, mode, p, e, g, w.dump())
			}
		}
		if len(got) != len(adopted) {
			t.Fatalf("world %d (restart, %s): %d ipcache entries, were %d", i, mode, len(got), len(adopted))
		}
	}
}

func ptr[T any](v T) *T { return &v }
