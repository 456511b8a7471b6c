package policy

// The upstream e2e netpol suite (k8s.io/kubernetes
// test/e2e/network/netpol/network_policy.go) as data: each file under
// testdata/conformance is one scenario, run against the upstream model
// (testdata/worlds: namespaces x, y, z, pods a, b, c, ports 80 and 81 on
// TCP, UDP and SCTP) in IPv4 and in IPv6. Expected reachability is written
// as upstream writes it: a default for every pair, then Expect/ExpectPeer
// overrides in order. The full 9x9 matrix (a pod to itself excluded) is
// compared for each probed port and protocol, through the incremental
// compiler (each step applied with Set*/Delete*), a fresh Build of the same
// state, and the reference evaluator.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ztnet/zt/pkg/identity"
)

type scenario struct {
	Name     string `json:"name"`
	Upstream string `json:"upstream"`
	// World names a file of testdata/worlds, without family and extension.
	World string `json:"world"`
	// Objects are added to the world before the first step.
	Objects []json.RawMessage `json:"objects"`
	Steps   []scenarioStep    `json:"steps"`
}

type scenarioStep struct {
	Name   string            `json:"name"`
	Apply  []json.RawMessage `json:"apply"`
	Delete []objectRef       `json:"delete"`
	// Labels adds labels to a namespace or pod (AddNamespaceLabel,
	// AddPodLabels upstream).
	Labels []labelPatch   `json:"labels"`
	Expect []expectations `json:"expect"`
}

type objectRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

type labelPatch struct {
	objectRef `json:",inline"`
	Set       map[string]string `json:"set"`
}

type expectations struct {
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	// Default is the expectation of every pair before Rules apply.
	Default bool         `json:"default"`
	Rules   []expectRule `json:"rules"`
}

// expectRule sets every pair matching From and To. A pattern is "*" (every
// pod), "x/*" (every pod of x), "*/a" or "x/a".
type expectRule struct {
	From      string `json:"from"`
	To        string `json:"to"`
	Connected bool   `json:"connected"`
}

func patternMatches(pat string, k PodKey) bool {
	if pat == "*" {
		return true
	}
	ns, name, ok := strings.Cut(pat, "/")
	if !ok {
		panic("bad pattern " + pat)
	}
	return (ns == "*" || ns == k.Namespace) && (name == "*" || name == k.Name)
}

// family is one address family a scenario runs in.
type family struct {
	name string
	ips  map[string]netip.Addr // "x/a" -> address
}

func (f family) funcs() template.FuncMap {
	ip := func(pod string) string {
		a, ok := f.ips[pod]
		if !ok {
			panic("no pod " + pod)
		}
		return a.String()
	}
	return template.FuncMap{
		"ip":       ip,
		"hostbits": func() int { return f.ips["x/a"].BitLen() },
		// large is upstream's makeLargeCIDRForIP: the /4 that holds the pod.
		"large": func(pod string) string {
			p, _ := f.ips[pod].Prefix(4)
			return p.String()
		},
	}
}

// splitDocs splits a multi-document YAML stream.
func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l...)
			out = append(out, '\n')
		}
	}
	return out
}

// decodeObject turns one Kubernetes object (YAML or JSON) into what the
// compiler reads.
func decodeObject(raw []byte) (any, error) {
	j, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, err
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return nil, err
	}
	switch tm.Kind {
	case "Namespace":
		var ns corev1.Namespace
		if err := json.Unmarshal(j, &ns); err != nil {
			return nil, err
		}
		return Namespace{Name: ns.Name, Labels: ns.Labels}, nil
	case "Pod":
		var p corev1.Pod
		if err := json.Unmarshal(j, &p); err != nil {
			return nil, err
		}
		return podFromK8s(&p)
	case "NetworkPolicy":
		var np networkingv1.NetworkPolicy
		if err := json.Unmarshal(j, &np); err != nil {
			return nil, err
		}
		return &np, nil
	}
	return nil, fmt.Errorf("unsupported kind %q", tm.Kind)
}

func podFromK8s(p *corev1.Pod) (Pod, error) {
	out := Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			pr, err := parseTestProtocol(string(proto))
			if err != nil {
				return out, err
			}
			out.Ports = append(out.Ports, ContainerPort{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: pr})
		}
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			return out, err
		}
		out.IPs = append(out.IPs, a)
	}
	return out, nil
}

func loadWorld(t *testing.T, path string) *refWorld {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	w := &refWorld{}
	for _, d := range splitDocs(b) {
		obj, err := decodeObject(d)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		w.add(obj)
	}
	return w
}

// add puts (or replaces) an object in the world.
func (w *refWorld) add(obj any) {
	switch o := obj.(type) {
	case Namespace:
		w.Namespaces = slices.DeleteFunc(w.Namespaces, func(n Namespace) bool { return n.Name == o.Name })
		w.Namespaces = append(w.Namespaces, o)
	case Pod:
		w.Pods = slices.DeleteFunc(w.Pods, func(p Pod) bool { return p.Key() == o.Key() })
		w.Pods = append(w.Pods, o)
	case *networkingv1.NetworkPolicy:
		w.Policies = slices.DeleteFunc(w.Policies, func(p *networkingv1.NetworkPolicy) bool {
			return p.Namespace == o.Namespace && p.Name == o.Name
		})
		w.Policies = append(w.Policies, o)
	default:
		panic(fmt.Sprintf("add %T", obj))
	}
	w.changed()
}

func applyObject(c *Compiler, obj any) error {
	switch o := obj.(type) {
	case Namespace:
		c.SetNamespace(o)
	case Pod:
		c.SetPod(o)
	case *networkingv1.NetworkPolicy:
		return c.SetPolicy(o)
	}
	return nil
}

// truthTable renders a reachability matrix as upstream's TruthTable does.
func truthTable(pods []PodKey, f func(from, to PodKey) string) string {
	var b strings.Builder
	b.WriteString("-\t")
	for _, p := range pods {
		b.WriteString(p.String() + "\t")
	}
	b.WriteByte('\n')
	for _, from := range pods {
		b.WriteString(from.String() + "\t")
		for _, to := range pods {
			b.WriteString(f(from, to) + "\t")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func TestConformance(t *testing.T) {
	files, err := filepath.Glob("testdata/conformance/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			for _, fam := range []string{"v4", "v6"} {
				t.Run(fam, func(t *testing.T) { runScenario(t, file, fam) })
			}
		})
	}
}

func runScenario(t *testing.T, file, fam string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// The world is named before templating (the template needs its
	// addresses), on a line of its own.
	world := "xyz"
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "world:"); ok {
			world = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	w := loadWorld(t, filepath.Join("testdata/worlds", world+"-"+fam+".yaml"))
	f := family{name: fam, ips: map[string]netip.Addr{}}
	for _, p := range w.Pods {
		f.ips[p.Key().String()] = p.IPs[0]
	}
	tmpl, err := template.New(file).Funcs(f.funcs()).Option("missingkey=error").Parse(string(raw))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, nil); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var sc scenario
	if err := yaml.UnmarshalStrict(buf.Bytes(), &sc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if sc.Upstream == "" || len(sc.Steps) == 0 {
		t.Fatalf("%s: a scenario names its upstream test and has steps", file)
	}
	for _, o := range sc.Objects {
		obj, err := decodeObject(o)
		if err != nil {
			t.Fatalf("%s: objects: %v", file, err)
		}
		w.add(obj)
	}
	c := Build(w.snapshot(), w.Opts)
	for si, st := range sc.Steps {
		where := fmt.Sprintf("%s step %d (%s)", filepath.Base(file), si, st.Name)
		for _, o := range st.Apply {
			obj, err := decodeObject(o)
			if err != nil {
				t.Fatalf("%s: apply: %v", where, err)
			}
			w.add(obj)
			if err := applyObject(c, obj); err != nil {
				t.Fatalf("%s: apply: %v", where, err)
			}
		}
		for _, d := range st.Delete {
			switch d.Kind {
			case "NetworkPolicy":
				w.Policies = slices.DeleteFunc(w.Policies, func(p *networkingv1.NetworkPolicy) bool { return p.Namespace == d.Namespace && p.Name == d.Name })
				c.DeletePolicy(PolicyKey{Namespace: d.Namespace, Name: d.Name})
			case "Pod":
				w.Pods = slices.DeleteFunc(w.Pods, func(p Pod) bool { return p.Namespace == d.Namespace && p.Name == d.Name })
				c.DeletePod(PodKey{Namespace: d.Namespace, Name: d.Name})
			case "Namespace":
				w.Namespaces = slices.DeleteFunc(w.Namespaces, func(n Namespace) bool { return n.Name == d.Name })
				c.DeleteNamespace(d.Name)
			default:
				t.Fatalf("%s: delete %s", where, d.Kind)
			}
			w.changed()
		}
		for _, lp := range st.Labels {
			switch lp.Kind {
			case "Namespace":
				i := slices.IndexFunc(w.Namespaces, func(n Namespace) bool { return n.Name == lp.Name })
				ns := w.Namespaces[i]
				ns.Labels = maps.Clone(ns.Labels)
				maps.Copy(ns.Labels, lp.Set)
				w.Namespaces[i] = ns
				c.SetNamespace(ns)
			case "Pod":
				i := slices.IndexFunc(w.Pods, func(p Pod) bool { return p.Namespace == lp.Namespace && p.Name == lp.Name })
				p := w.Pods[i]
				p.Labels = maps.Clone(p.Labels)
				maps.Copy(p.Labels, lp.Set)
				w.Pods[i] = p
				c.SetPod(p)
			default:
				t.Fatalf("%s: labels on %s", where, lp.Kind)
			}
			w.changed()
		}
		if p := c.Problems(); len(p) > 0 {
			t.Fatalf("%s: problems %v", where, p)
		}
		if len(st.Expect) == 0 {
			t.Fatalf("%s: a step checks something", where)
		}
		full := Build(w.snapshot(), w.Opts)
		var pods []PodKey
		for _, p := range w.Pods {
			pods = append(pods, p.Key())
		}
		slices.SortFunc(pods, comparePodKey)
		for _, ex := range st.Expect {
			proto, err := parseTestProtocol(ex.Protocol)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			want := map[[2]PodKey]bool{}
			for _, from := range pods {
				for _, to := range pods {
					want[[2]PodKey{from, to}] = ex.Default
					for _, r := range ex.Rules {
						if patternMatches(r.From, from) && patternMatches(r.To, to) {
							want[[2]PodKey{from, to}] = r.Connected
						}
					}
				}
			}
			for name, eval := range map[string]func(from, to PodKey) bool{
				"incremental": func(from, to PodKey) bool {
					v, err := c.EvaluatePods(from, to, proto, ex.Port)
					if err != nil {
						t.Fatal(err)
					}
					return v.Allowed
				},
				"build": func(from, to PodKey) bool {
					v, err := full.EvaluatePods(from, to, proto, ex.Port)
					if err != nil {
						t.Fatal(err)
					}
					return v.Allowed
				},
				"reference": func(from, to PodKey) bool {
					s, _ := full.Pod(from)
					d, _ := full.Pod(to)
					return w.refAllowed(s.IPs[0], d.IPs[0], proto, ex.Port)
				},
			} {
				wrong := 0
				for _, from := range pods {
					for _, to := range pods {
						if from != to && eval(from, to) != want[[2]PodKey{from, to}] {
							wrong++
						}
					}
				}
				if wrong > 0 {
					mark := func(ok bool) string {
						if ok {
							return "."
						}
						return "X"
					}
					t.Errorf("%s [%s] %s/%d: %d of %d pairs wrong (upstream: %q)\nexpected:\n%s\nobserved:\n%s", where, name, ex.Protocol, ex.Port, wrong, len(pods)*(len(pods)-1), sc.Upstream,
						truthTable(pods, func(from, to PodKey) string {
							if from == to {
								return "-"
							}
							return mark(want[[2]PodKey{from, to}])
						}),
						truthTable(pods, func(from, to PodKey) string {
							if from == to {
								return "-"
							}
							return mark(eval(from, to))
						}))
				}
			}
		}
	}
}

// parseTestProtocol parses TCP, UDP, SCTP or ICMP.
func parseTestProtocol(s string) (Protocol, error) {
	if s == "ICMP" {
		return identity.ProtoICMP, nil
	}
	return identity.ParseProtocol(s)
}
