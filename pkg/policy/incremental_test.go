package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ztnet/zt/pkg/identity"
)

// mutate applies one random change to w and c alike and describes it.
func (g *gen) mutate(w *refWorld, c *Compiler, step int) string {
	switch g.r.IntN(11) {
	case 0: // namespace labels change, or a namespace appears
		name := g.pick(g.nsNames)
		ns := Namespace{Name: name, Labels: g.labels(genNSKeys, genNSVals)}
		i := slices.IndexFunc(w.Namespaces, func(n Namespace) bool { return n.Name == name })
		if i >= 0 {
			w.Namespaces[i] = ns
		} else {
			w.Namespaces = append(w.Namespaces, ns)
		}
		c.SetNamespace(ns)
		return fmt.Sprintf("SetNamespace %s %v", name, ns.Labels)
	case 1: // namespace deleted (its pods and policies may linger)
		if len(w.Namespaces) == 0 {
			return "noop"
		}
		i := g.r.IntN(len(w.Namespaces))
		name := w.Namespaces[i].Name
		w.Namespaces = slices.Delete(w.Namespaces, i, i+1)
		c.DeleteNamespace(name)
		return "DeleteNamespace " + name
	case 2, 3: // pod relabelled, moved to new addresses or new ports
		if len(w.Pods) == 0 {
			return "noop"
		}
		i := g.r.IntN(len(w.Pods))
		p := w.Pods[i]
		p.Labels = maps.Clone(p.Labels)
		p.IPs = slices.Clone(p.IPs)
		p.Ports = slices.Clone(p.Ports)
		what := ""
		switch g.r.IntN(4) {
		case 0, 1:
			p.Labels = g.labels(genPodKeys, genPodVals)
			what = fmt.Sprintf("labels %v", p.Labels)
		case 2:
			if !p.HostNetwork {
				p.IPs = g.someIPs(w)
			}
			what = fmt.Sprintf("ips %v", p.IPs)
		case 3:
			p.Ports = g.somePorts()
			what = fmt.Sprintf("ports %v", p.Ports)
		}
		w.Pods[i] = p
		c.SetPod(p)
		return fmt.Sprintf("SetPod %s %s", p.Key(), what)
	case 4: // new pod
		p := Pod{Namespace: g.pick(g.nsNames), Name: fmt.Sprintf("q%d", step), Labels: g.labels(genPodKeys, genPodVals), Ports: g.somePorts()}
		p.IPs = g.someIPs(w)
		w.Pods = append(w.Pods, p)
		c.SetPod(p)
		return fmt.Sprintf("SetPod %s (new) labels=%v ips=%v ports=%v", p.Key(), p.Labels, p.IPs, p.Ports)
	case 5: // pod deleted
		if len(w.Pods) == 0 {
			return "noop"
		}
		i := g.r.IntN(len(w.Pods))
		k := w.Pods[i].Key()
		w.Pods = slices.Delete(w.Pods, i, i+1)
		c.DeletePod(k)
		return "DeletePod " + k.String()
	case 6, 7: // policy created or replaced
		var np *networkingv1.NetworkPolicy
		if len(w.Policies) > 0 && g.chance(0.5) {
			i := g.r.IntN(len(w.Policies))
			old := w.Policies[i]
			np = g.policy(old.Name, []string{old.Namespace}, w)
			w.Policies[i] = np
		} else {
			np = g.policy(fmt.Sprintf("np-s%d", step), g.nsNames, w)
			w.Policies = append(w.Policies, np)
		}
		if err := c.SetPolicy(np); err != nil {
			panic(err)
		}
		return fmt.Sprintf("SetPolicy %s/%s", np.Namespace, np.Name)
	case 8: // policy deleted
		if len(w.Policies) == 0 {
			return "noop"
		}
		i := g.r.IntN(len(w.Policies))
		np := w.Policies[i]
		w.Policies = slices.Delete(w.Policies, i, i+1)
		c.DeletePolicy(PolicyKey{Namespace: np.Namespace, Name: np.Name})
		return fmt.Sprintf("DeletePolicy %s/%s", np.Namespace, np.Name)
	case 9: // node addresses change
		w.HostIPs = nil
		if g.chance(0.7) {
			w.HostIPs = []netip.Addr{g.hostIP[g.r.IntN(2)]}
		}
		c.SetHostIPs(w.HostIPs)
		return fmt.Sprintf("SetHostIPs %v", w.HostIPs)
	default: // a pod becomes another pod's address twin, or loses its IPs
		if len(w.Pods) < 2 {
			return "noop"
		}
		i, j := g.r.IntN(len(w.Pods)), g.r.IntN(len(w.Pods))
		p := w.Pods[i]
		if p.HostNetwork || w.Pods[j].HostNetwork {
			return "noop"
		}
		if g.chance(0.5) {
			p.IPs = slices.Clone(w.Pods[j].IPs)
		} else {
			p.IPs = nil
		}
		w.Pods[i] = p
		c.SetPod(p)
		return fmt.Sprintf("SetPod %s ips %v", p.Key(), p.IPs)
	}
}

func (g *gen) someIPs(w *refWorld) []netip.Addr {
	v4 := g.v4[g.r.IntN(len(g.v4))]
	v6 := g.v6[g.r.IntN(len(g.v6))]
	switch g.r.IntN(5) {
	case 0:
		return nil
	case 1:
		return []netip.Addr{v6}
	case 2:
		return []netip.Addr{v4, v6}
	}
	return []netip.Addr{v4}
}

func (g *gen) somePorts() []ContainerPort {
	var out []ContainerPort
	names := slices.Clone(genPortNames)
	g.r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	for j := range g.r.IntN(4) {
		out = append(out, ContainerPort{Name: names[j], Port: genPortNums[g.r.IntN(len(genPortNums))], Protocol: genProtos[g.r.IntN(3)]})
	}
	return out
}

// compareCompilers checks that a and b decide alike everywhere.
func compareCompilers(a, b *Compiler, w *refWorld, g *gen, max int) []string {
	var bad []string
	addrs := w.addrs(g)
	for _, src := range addrs {
		for _, dst := range addrs {
			if src.Is4() != dst.Is4() {
				continue
			}
			for _, pr := range w.probes() {
				va := a.Evaluate(src, dst, pr.Proto, pr.Port)
				vb := b.Evaluate(src, dst, pr.Proto, pr.Port)
				if va.Allowed != vb.Allowed || va.Reason != vb.Reason || !sameDir(va.Egress, vb.Egress) || !sameDir(va.Ingress, vb.Ingress) {
					bad = append(bad, fmt.Sprintf("%s -> %s %s: incremental %v %s, full %v %s", src, dst, pr, va.Allowed, fmtVerdict(va), vb.Allowed, fmtVerdict(vb)))
					if len(bad) >= max {
						return bad
					}
				}
			}
		}
	}
	return bad
}

func sameDir(a, b *DirVerdict) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	if a == nil {
		return true
	}
	return a.Endpoint == b.Endpoint && a.Isolated == b.Isolated && slices.Equal(a.IsolatedBy, b.IsolatedBy) &&
		a.Allowed == b.Allowed && a.FromHost == b.FromHost && (len(a.AllowedBy) == 0) == (len(b.AllowedBy) == 0)
}

// canonicalEndpoints renders endpoints with identities replaced by their
// label keys, so two compilers can be compared modulo numbering.
func canonicalEndpoints(c *Compiler) string {
	c.Sync()
	name := func(id uint32) string {
		if id == 0 {
			return "any"
		}
		ident, ok := c.ids.Get(identity.ID(id))
		if !ok {
			return fmt.Sprintf("RELEASED(%d)", id)
		}
		return ident.Labels.Key()
	}
	var b strings.Builder
	for _, ep := range c.Endpoints() {
		fmt.Fprintf(&b, "%s ips=%v ids=", ep.Pod, ep.IPs)
		for _, id := range ep.Identities {
			b.WriteString(name(uint32(id)) + ";")
		}
		b.WriteByte('\n')
		for d := range 2 {
			dp := ep.Dir(Direction(d))
			fmt.Fprintf(&b, "  %s isolated=%v by=%v\n", Direction(d), dp.Isolated, dp.IsolatedBy)
			var rules []string
			for r := range dp.Rules.All() {
				// Of several rules allowing the same, the endpoint keeps
				// the lowest rule number, which depends on numbering, so
				// the rule behind an allow is not compared.
				rules = append(rules, fmt.Sprintf("    %s %s %d-%d", name(uint32(r.Peer)), r.Protocol, r.Port, r.EndPort))
			}
			slices.Sort(rules)
			b.WriteString(strings.Join(rules, "\n"))
			if len(rules) > 0 {
				b.WriteByte('\n')
			}
		}
	}
	return b.String()
}

func TestIncrementalEqualsFull(t *testing.T) {
	seed := testSeed(t)
	g := newGen(seed)
	runs := worldCount(60)
	patched := 0
	defer func() {
		if !t.Failed() && patched == 0 {
			t.Errorf("no endpoint was patched: the test misses Endpoint.PatchedFrom")
		}
	}()
	chunks := rand.New(rand.NewPCG(seed, 99))
	for run := range runs {
		// Half the runs cut rule lists into chunks of a few rules, so
		// that patches rebuild some chunks and share others (Rules).
		setRuleChunk(t, []int{256, 1 + chunks.IntN(4)}[run%2])
		w := g.world()
		if g.chance(0.15) {
			w.Opts.DenyFromHost = true
		}
		if g.chance(0.15) {
			w.Opts.ClusterDefaultDeny = DefaultExemptions()
			w.Opts.ClusterDefaultDeny.ExemptNamespaces = []string{"ns3"}
		}
		var c *Compiler
		if g.chance(0.5) {
			c = Build(w.snapshot(), w.Opts)
		} else {
			c = buildIncrementally(w, g.r)
		}
		var history []string
		for step := range 25 {
			before := snapshotEndpoints(c)
			ipcBefore := c.IPCache().Entries()
			ruleIDsBefore := maps.Clone(c.ruleIDs)
			history = append(history, g.mutate(w, c, step))
			w.changed()
			ch := c.Sync()
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("run %d step %d: %s\nhistory:\n  %s\nworld now:\n%s", run, step, fmt.Sprintf(format, args...), strings.Join(history, "\n  "), w.dump())
			}
			// Changes reports every endpoint that changed.
			after := snapshotEndpoints(c)
			for pk, ep := range after {
				if old, ok := before[pk]; (!ok || !endpointEqual(old, ep)) && !slices.Contains(ch.Endpoints, pk) {
					fail("endpoint %s changed but Changes.Endpoints=%v", pk, ch.Endpoints)
				}
			}
			// A patched endpoint kept every rule of the peers it does not
			// name (mapsync rewrites those peers' keys alone).
			for pk, ep := range after {
				old := before[pk]
				peers, ok := ep.PatchedFrom(old)
				if !ok {
					continue
				}
				patched++
				for d := range 2 {
					keep := func(rs []Rule) []Rule {
						return slices.DeleteFunc(slices.Clone(rs), func(r Rule) bool { return slices.Contains(peers, r.Peer) })
					}
					if o, n := keep(old.Dir(Direction(d)).Rules.Slice()), keep(ep.Dir(Direction(d)).Rules.Slice()); !slices.Equal(o, n) {
						fail("endpoint %s, patched from its last for peers %v, changed %s rules of other peers:\n%v\n%v", pk, peers, Direction(d), o, n)
					}
				}
			}
			for pk := range before {
				if _, ok := after[pk]; !ok && !slices.Contains(ch.Removed, pk) {
					fail("endpoint %s removed but Changes.Removed=%v", pk, ch.Removed)
				}
			}
			if !maps.Equal(ipcBefore, c.IPCache().Entries()) && !ch.IPCache {
				fail("ipcache changed but Changes.IPCache=false")
			}
			// Rule numbers of rules that still exist do not move.
			for ref, id := range ruleIDsBefore {
				if nid, ok := c.ruleIDs[ref]; ok && nid != id {
					fail("rule %s renumbered %d -> %d", ref, id, nid)
				}
			}
			checkInvariants(t, c)
			if t.Failed() {
				fail("invariants broken")
			}
			full := Build(w.snapshot(), w.Opts)
			if got, want := canonicalEndpoints(c), canonicalEndpoints(full); got != want {
				fail("endpoints differ from a full build:\n%s", lineDiff(got, want))
			}
			if bad := compareCompilers(c, full, w, g, 5); len(bad) > 0 {
				fail("incremental and full builds disagree:\n  %s", strings.Join(bad, "\n  "))
			}
			if bad := compareWithRef(c, w, g, 5); len(bad) > 0 {
				fail("compiler and reference disagree:\n  %s", strings.Join(bad, "\n  "))
			}
		}
	}
}

func snapshotEndpoints(c *Compiler) map[PodKey]*Endpoint {
	c.Sync()
	out := map[PodKey]*Endpoint{}
	for _, ep := range c.Endpoints() {
		out[ep.Pod] = ep
	}
	return out
}

func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			fmt.Fprintf(&b, "line %d:\n  incremental: %s\n  full:        %s\n", i, gl, wl)
		}
	}
	return b.String()
}
