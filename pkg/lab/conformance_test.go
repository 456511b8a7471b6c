package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/lab"
	"github.com/ztnet/zt/pkg/policy"
	"github.com/ztnet/zt/pkg/reach"
)

// confStep is one step of a pkg/policy conformance scenario, as the lab
// drives it: objects applied, deleted, labels added (its expectations
// are pkg/policy's business; the lab compares with reach.Compute).
type confStep struct {
	Name   string            `json:"name"`
	Apply  []json.RawMessage `json:"apply"`
	Delete []confRef         `json:"delete"`
	Labels []struct {
		confRef `json:",inline"`
		Set     map[string]string `json:"set"`
	} `json:"labels"`
}

type confRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// confScenario is a scenario rendered for one family: the cumulative
// cluster after each step.
type confScenario struct {
	name   string
	steps  []string         // step names
	worlds []*bundle.Bundle // the whole cluster after each step
}

func confDir() string { return filepath.Join(repoRoot, "pkg", "policy", "testdata") }

func loadWorld(t *testing.T, fam string) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Load(filepath.Join(confDir(), "worlds", "xyz-"+fam+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadScenario renders a scenario over the xyz world of fam (the
// template funcs of pkg/policy's conformance test) and replays its steps
// into cumulative bundles.
func loadScenario(t *testing.T, file, fam string) confScenario {
	t.Helper()
	name := strings.TrimSuffix(filepath.Base(file), ".yaml")
	world := loadWorld(t, fam)
	ips := map[string]netip.Addr{}
	for _, p := range world.Pods {
		ips[p.Namespace+"/"+p.Name] = netip.MustParseAddr(p.Status.PodIPs[0].IP)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "world:"); ok && strings.Trim(strings.TrimSpace(v), `"`) != "xyz" {
			t.Fatalf("%s: world %s: the lab runs the xyz world only", name, v)
		}
	}
	funcs := template.FuncMap{
		"ip":       func(pod string) string { return ips[pod].String() },
		"hostbits": func() int { return ips["x/a"].BitLen() },
		"large": func(pod string) string {
			p, _ := ips[pod].Prefix(4)
			return p.String()
		},
	}
	tmpl, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, nil); err != nil {
		t.Fatal(err)
	}
	var sc struct {
		Objects []json.RawMessage `json:"objects"`
		Steps   []confStep        `json:"steps"`
	}
	if err := yaml.Unmarshal(buf.Bytes(), &sc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(sc.Steps) == 0 {
		t.Fatalf("%s: no steps", name)
	}
	out := confScenario{name: name}
	cur := world
	put(cur, decodeObjects(t, name, sc.Objects))
	for i, st := range sc.Steps {
		where := fmt.Sprintf("%s step %d (%s)", name, i, st.Name)
		cur = cloneBundle(cur)
		put(cur, decodeObjects(t, where, st.Apply))
		for _, d := range st.Delete {
			if !remove(cur, d) {
				t.Fatalf("%s: delete %+v: no such object", where, d)
			}
		}
		for _, lp := range st.Labels {
			if !addLabels(cur, lp.confRef, lp.Set) {
				t.Fatalf("%s: labels on %+v: no such object", where, lp.confRef)
			}
		}
		out.steps = append(out.steps, st.Name)
		out.worlds = append(out.worlds, cur)
	}
	return out
}

// decodeObjects reads raw objects through the bundle decoder (defaults
// and checks as for a bundle file).
func decodeObjects(t *testing.T, where string, raws []json.RawMessage) *bundle.Bundle {
	t.Helper()
	var docs bytes.Buffer
	for _, o := range raws {
		y, err := yaml.JSONToYAML(o)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		docs.WriteString("---\n")
		docs.Write(y)
	}
	b, err := bundle.Decode(&docs)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	return b
}

func cloneBundle(b *bundle.Bundle) *bundle.Bundle {
	out := &bundle.Bundle{}
	for _, ns := range b.Namespaces {
		out.Namespaces = append(out.Namespaces, ns.DeepCopy())
	}
	for _, p := range b.Pods {
		out.Pods = append(out.Pods, p.DeepCopy())
	}
	for _, np := range b.Policies {
		out.Policies = append(out.Policies, np.DeepCopy())
	}
	return out
}

// put adds src's objects to dst, replacing those of the same name.
func put(dst, src *bundle.Bundle) {
	for _, ns := range src.Namespaces {
		dst.Namespaces = slices.DeleteFunc(dst.Namespaces, func(o *corev1.Namespace) bool { return o.Name == ns.Name })
		dst.Namespaces = append(dst.Namespaces, ns)
	}
	for _, p := range src.Pods {
		dst.Pods = slices.DeleteFunc(dst.Pods, func(o *corev1.Pod) bool { return o.Namespace == p.Namespace && o.Name == p.Name })
		dst.Pods = append(dst.Pods, p)
	}
	for _, np := range src.Policies {
		dst.Policies = slices.DeleteFunc(dst.Policies, func(o *networkingv1.NetworkPolicy) bool {
			return o.Namespace == np.Namespace && o.Name == np.Name
		})
		dst.Policies = append(dst.Policies, np)
	}
}

// remove deletes an object as the API server (and its namespace
// controller) would: a namespace takes its pods and policies along.
func remove(b *bundle.Bundle, r confRef) bool {
	n := len(b.Namespaces) + len(b.Pods) + len(b.Policies)
	switch r.Kind {
	case "Namespace":
		b.Namespaces = slices.DeleteFunc(b.Namespaces, func(o *corev1.Namespace) bool { return o.Name == r.Name })
		if len(b.Namespaces)+len(b.Pods)+len(b.Policies) == n {
			return false
		}
		b.Pods = slices.DeleteFunc(b.Pods, func(o *corev1.Pod) bool { return o.Namespace == r.Name })
		b.Policies = slices.DeleteFunc(b.Policies, func(o *networkingv1.NetworkPolicy) bool { return o.Namespace == r.Name })
	case "Pod":
		b.Pods = slices.DeleteFunc(b.Pods, func(o *corev1.Pod) bool { return o.Namespace == r.Namespace && o.Name == r.Name })
	case "NetworkPolicy":
		b.Policies = slices.DeleteFunc(b.Policies, func(o *networkingv1.NetworkPolicy) bool {
			return o.Namespace == r.Namespace && o.Name == r.Name
		})
	}
	return len(b.Namespaces)+len(b.Pods)+len(b.Policies) < n
}

func addLabels(b *bundle.Bundle, r confRef, set map[string]string) bool {
	switch r.Kind {
	case "Namespace":
		for _, ns := range b.Namespaces {
			if ns.Name == r.Name {
				ns.Labels = maps.Clone(ns.Labels)
				if ns.Labels == nil {
					ns.Labels = map[string]string{}
				}
				maps.Copy(ns.Labels, set)
				return true
			}
		}
	case "Pod":
		for _, p := range b.Pods {
			if p.Namespace == r.Namespace && p.Name == r.Name {
				p.Labels = maps.Clone(p.Labels)
				if p.Labels == nil {
					p.Labels = map[string]string{}
				}
				maps.Copy(p.Labels, set)
				return true
			}
		}
	}
	return false
}

// deletions is the lab's own scenario for what the conformance data does
// not do: a pod deleted, a namespace deleted (its pods and policies go
// along), both brought back with other labels.
func deletions(t *testing.T, fam string) confScenario {
	world := loadWorld(t, fam)
	fromY := decodeObjects(t, "deletions", []json.RawMessage{json.RawMessage(`{"apiVersion": "networking.k8s.io/v1",
		"kind": "NetworkPolicy", "metadata": {"namespace": "z", "name": "from-y"},
		"spec": {"podSelector": {}, "policyTypes": ["Ingress"],
		"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"extra": "yes"}}}, {"podSelector": {"matchLabels": {"pod": "a"}}}]}]}}`),
		json.RawMessage(`{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": {"namespace": "y", "name": "deny-egress"}, "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"]}}`)})
	sc := confScenario{name: "lab-deletions"}
	step := func(name string, b *bundle.Bundle) {
		sc.steps = append(sc.steps, name)
		sc.worlds = append(sc.worlds, b)
	}
	b := cloneBundle(world)
	put(b, fromY)
	if !addLabels(b, confRef{Kind: "Namespace", Name: "y"}, map[string]string{"extra": "yes"}) ||
		!remove(b, confRef{Kind: "Pod", Namespace: "x", Name: "a"}) {
		t.Fatal("deletions: bad world")
	}
	step("pod x/a deleted; z admits namespaces extra=yes (y) and pods pod=a", b)
	b = cloneBundle(b)
	if !remove(b, confRef{Kind: "Namespace", Name: "y"}) {
		t.Fatal("deletions: no namespace y")
	}
	step("namespace y deleted with its pods and a policy", b)
	b = cloneBundle(world)
	put(b, fromY)
	if !addLabels(b, confRef{Kind: "Pod", Namespace: "x", Name: "c"}, map[string]string{"pod": "a"}) {
		t.Fatal("deletions: no pod x/c")
	}
	step("y and x/a back without the label; x/c relabeled pod=a", b)
	return sc
}

// compute is ztctl reach's answer for a bundle.
func compute(t *testing.T, b *bundle.Bundle) reach.Report {
	t.Helper()
	s, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	c := policy.Build(s, policy.Options{})
	for _, p := range c.Problems() {
		t.Logf("compiler: %v", p)
	}
	r, err := reach.Compute(c, reach.Targets(s.Pods))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// upMu serializes lab.Up: labs brought up at once could pick the same
// free fabric prefix.
var upMu sync.Mutex

// TestConformance runs every scenario of pkg/policy's conformance data,
// every step, with real packets, on one lab per (family, node count)
// over the upstream xyz world (9 pods, 80 and 81 on TCP, UDP and SCTP: 432
// probes per step). Each step is synced into the lab's API server as the
// whole cluster (policies the step lacks deleted, labels restored, pods
// recreated), so each scenario starts from the bare world plus its own
// objects; the probes must equal reach.Compute on that cluster, row for
// row and as JSON text. The labs run in parallel: the time goes into
// denied probes' timeouts. ZT_CONFORMANCE_ONLY=substring runs only the
// scenarios whose file name holds it.
func TestConformance(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(confDir(), "conformance", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	if only := os.Getenv("ZT_CONFORMANCE_ONLY"); only != "" {
		files = slices.DeleteFunc(files, func(f string) bool { return !strings.Contains(filepath.Base(f), only) })
	}
	// t.Run from goroutines: all labs at once, whatever -parallel is (the
	// time goes into timeouts, not CPU).
	var wg sync.WaitGroup
	for _, c := range []struct {
		fam   string
		nodes int
	}{{"v4", 1}, {"v4", 2}, {"v6", 1}, {"v6", 2}} {
		wg.Go(func() {
			t.Run(fmt.Sprintf("%s/nodes=%d", c.fam, c.nodes), func(t *testing.T) { runConformance(t, files, c.fam, c.nodes) })
		})
	}
	wg.Wait()
}

func runConformance(t *testing.T, files []string, fam string, nodes int) {
	var scenarios []confScenario
	for _, f := range files {
		scenarios = append(scenarios, loadScenario(t, f, fam))
	}
	scenarios = append(scenarios, deletions(t, fam))
	e := newEnv(t)
	e.ownOnly = true
	ctx := context.Background()
	world := loadWorld(t, fam)
	start := time.Now()
	upMu.Lock()
	l, err := lab.Up(ctx, lab.Config{Dir: e.dir, Name: e.name, Nodes: nodes, BinDir: k8sBin, AgentBin: agentBin,
		Self: ztlabBin, Log: tlog{t}}, world)
	upMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range l.State().Procs {
			e.pids = append(e.pids, p.Pid)
		}
		e.links = append(e.links, l.State().RootLink)
		if err := l.Down(); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	t.Logf("lab up (%s, %d node(s)) in %s", fam, nodes, time.Since(start).Round(time.Millisecond))
	var steps, probes int
	var syncTime, probeTime time.Duration
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			for i, w := range sc.worlds {
				where := fmt.Sprintf("step %d (%s)", i, sc.steps[i])
				t0 := time.Now()
				if err := l.Sync(ctx, w); err != nil {
					t.Fatalf("%s: sync: %v", where, err)
				}
				t1 := time.Now()
				got, err := l.Probe(ctx, lab.ProbeOptions{Workers: 512, Warn: func(f string, a ...any) { t.Logf("%s: warning: "+f, append([]any{where}, a...)...) }})
				if err != nil {
					t.Fatalf("%s: probe: %v", where, err)
				}
				syncTime += t1.Sub(t0)
				probeTime += time.Since(t1)
				steps++
				probes += len(got.Results)
				want := compute(t, w)
				if d := lab.Diff(want, got); len(d) > 0 {
					t.Errorf("%s: probes disagree with reach.Compute on %d of %d rows:\n  %s", where, len(d), len(want.Results), strings.Join(d, "\n  "))
					continue
				}
				var wb, gb bytes.Buffer
				if err := want.WriteJSON(&wb); err != nil {
					t.Fatal(err)
				}
				if err := got.WriteJSON(&gb); err != nil {
					t.Fatal(err)
				}
				if wb.String() != gb.String() {
					t.Errorf("%s: same verdicts but not the same JSON text as ztctl reach -o json", where)
				}
				if n := len(w.Pods); len(got.Results) != n*(n-1)*6 {
					t.Errorf("%s: %d rows, want %d sources x %d destinations x 6 ports = %d", where, len(got.Results), n, n-1, n*(n-1)*6)
				}
			}
		})
	}
	t.Logf("%s, %d node(s): %d scenarios, %d steps, %d probes compared; syncs (apply + agents realized) %s, probes %s, total %s",
		fam, nodes, len(scenarios), steps, probes, syncTime.Round(time.Millisecond), probeTime.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
}

// tlog writes the lab's progress lines to the test log.
type tlog struct{ t *testing.T }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
