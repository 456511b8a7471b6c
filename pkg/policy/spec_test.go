package policy

// One table per bullet of the NetworkPolicy spec. Every expectation is
// written by hand from networking.k8s.io/v1 and checked against the
// compiler (built at once and incrementally) and the reference evaluator.

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

func mkNS(name string, kv ...string) Namespace {
	return Namespace{Name: name, Labels: kvs(kv...)}
}

func kvs(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// mkPod makes pod "ns/name" with addresses ips (comma separated), labels
// kv, and ports from portSpec ("name:80/TCP,:53/UDP").
func mkPod(key, ips, portSpec string, kv ...string) Pod {
	ns, name, _ := strings.Cut(key, "/")
	p := Pod{Namespace: ns, Name: name, Labels: kvs(kv...)}
	for _, s := range strings.Split(ips, ",") {
		if s != "" {
			p.IPs = append(p.IPs, netip.MustParseAddr(s))
		}
	}
	for _, s := range strings.Split(portSpec, ",") {
		if s == "" {
			continue
		}
		n, rest, _ := strings.Cut(s, ":")
		num, proto, _ := strings.Cut(rest, "/")
		pr, err := parseTestProtocol(proto)
		if err != nil {
			panic(err)
		}
		p.Ports = append(p.Ports, ContainerPort{Name: n, Port: uint16(atoi(num)), Protocol: pr})
	}
	return p
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// mkPolicies decodes a multi-document YAML of NetworkPolicies.
func mkPolicies(t testing.TB, docs string) []*networkingv1.NetworkPolicy {
	t.Helper()
	var out []*networkingv1.NetworkPolicy
	for _, d := range splitDocs([]byte(docs)) {
		obj, err := decodeObject(append([]byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"), d...))
		if err != nil {
			t.Fatalf("policy: %v\n%s", err, d)
		}
		out = append(out, obj.(*networkingv1.NetworkPolicy))
	}
	return out
}

// check is one expectation: from and to are "ns/pod" (first address),
// "ns/pod@1" (second address) or a literal address.
type check struct {
	from, to string
	proto    string
	port     uint16
	want     bool
}

type specCase struct {
	name     string
	ns       []Namespace
	pods     []Pod
	hostIPs  []string
	policies string
	opts     Options
	checks   []check
}

func (w *refWorld) addr(t testing.TB, s string) netip.Addr {
	if a, err := netip.ParseAddr(s); err == nil {
		return a
	}
	key, idx, _ := strings.Cut(s, "@")
	i := 0
	if idx != "" {
		i = atoi(idx)
	}
	for _, p := range w.Pods {
		if p.Key().String() == key {
			return p.IPs[i]
		}
	}
	t.Fatalf("no pod %s", s)
	return netip.Addr{}
}

func runSpecCase(t *testing.T, tc specCase) {
	t.Helper()
	w := &refWorld{Namespaces: tc.ns, Pods: tc.pods, Opts: tc.opts}
	for _, h := range tc.hostIPs {
		w.HostIPs = append(w.HostIPs, netip.MustParseAddr(h))
	}
	if tc.policies != "" {
		w.Policies = mkPolicies(t, tc.policies)
	}
	full := Build(w.snapshot(), w.Opts)
	inc := New(w.Opts)
	for _, np := range w.Policies {
		_ = inc.SetPolicy(np)
	}
	for _, p := range w.Pods {
		inc.SetPod(p)
	}
	for _, ns := range w.Namespaces {
		inc.SetNamespace(ns)
	}
	inc.SetHostIPs(w.HostIPs)
	for _, c := range []*Compiler{full, inc} {
		if p := c.Problems(); len(p) > 0 {
			t.Fatalf("problems: %v", p)
		}
		checkInvariants(t, c)
	}
	for _, ck := range tc.checks {
		src, dst := w.addr(t, ck.from), w.addr(t, ck.to)
		proto, err := parseTestProtocol(ck.proto)
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range map[string]*Compiler{"build": full, "incremental": inc} {
			if v := c.Evaluate(src, dst, proto, ck.port); v.Allowed != ck.want {
				t.Errorf("%s: %s -> %s %s/%d: allowed=%v, want %v (%s; %s)", name, ck.from, ck.to, ck.proto, ck.port, v.Allowed, ck.want, v.Reason, fmtVerdict(v))
			}
		}
		if got := w.refAllowed(src, dst, proto, ck.port); got != ck.want {
			t.Errorf("reference: %s -> %s %s/%d: allowed=%v, want %v", ck.from, ck.to, ck.proto, ck.port, got, ck.want)
		}
	}
}

// threeNS is a small world: namespaces x (team=a), y (team=b), z (no labels).
func threeNS() []Namespace {
	return []Namespace{mkNS("x", "team", "a"), mkNS("y", "team", "b"), mkNS("z")}
}

func TestSpecSelectors(t *testing.T) {
	pods := []Pod{
		mkPod("x/a", "10.0.0.1", "", "app", "web"),
		mkPod("x/b", "10.0.0.2", "", "app", "db", "tier", "be"),
		mkPod("x/c", "10.0.0.3", ""),
		mkPod("y/a", "10.0.1.1", "", "app", "web"),
		mkPod("y/b", "10.0.1.2", "", "app", "db"),
		mkPod("z/a", "10.0.2.1", "", "app", "web"),
	}
	tcp80 := func(from, to string, want bool) check { return check{from, to, "TCP", 80, want} }
	for _, tc := range []specCase{
		{
			name: "empty podSelector selects every pod of its namespace only",
			policies: `
metadata: {namespace: x, name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}`,
			checks: []check{tcp80("y/a", "x/a", false), tcp80("y/a", "x/b", false), tcp80("y/a", "x/c", false), tcp80("x/a", "y/b", true), tcp80("x/a", "z/a", true)},
		},
		{
			name: "peer podSelector alone means the policy's namespace",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]`,
			checks: []check{tcp80("x/a", "x/b", true), tcp80("y/a", "x/b", false), tcp80("z/a", "x/b", false), tcp80("x/c", "x/b", false)},
		},
		{
			name: "namespaceSelector alone means every pod of the selected namespaces",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]`,
			checks: []check{tcp80("y/a", "x/b", true), tcp80("y/b", "x/b", true), tcp80("x/a", "x/b", false), tcp80("z/a", "x/b", false)},
		},
		{
			name: "podSelector and namespaceSelector in one peer: both must match",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchLabels: {app: web}}}]}]`,
			checks: []check{tcp80("y/a", "x/b", true), tcp80("y/b", "x/b", false), tcp80("x/a", "x/b", false), tcp80("z/a", "x/b", false)},
		},
		{
			name: "the same selectors as two peers: either may match",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: web}}}]}]`,
			checks: []check{tcp80("y/a", "x/b", true), tcp80("y/b", "x/b", true), tcp80("x/a", "x/b", true), tcp80("z/a", "x/b", false), tcp80("x/c", "x/b", false)},
		},
		{
			name: "empty namespaceSelector and empty podSelector: every pod of every namespace",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {}}]}]`,
			checks: []check{tcp80("y/a", "x/b", true), tcp80("z/a", "x/b", true), tcp80("x/c", "x/b", true), tcp80("192.168.1.1", "x/b", false)},
		},
		{
			name: "matchExpressions In",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, db]}]}
  ingress: []`,
			checks: []check{tcp80("y/a", "x/a", false), tcp80("y/a", "x/b", false), tcp80("y/a", "x/c", true)},
		},
		{
			name: "matchExpressions NotIn matches pods without the key",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
  ingress: []`,
			checks: []check{tcp80("y/a", "x/a", true), tcp80("y/a", "x/b", false), tcp80("y/a", "x/c", false)},
		},
		{
			name: "matchExpressions Exists",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}
  ingress: []`,
			checks: []check{tcp80("y/a", "x/a", true), tcp80("y/a", "x/b", false), tcp80("y/a", "x/c", true)},
		},
		{
			name: "matchExpressions DoesNotExist",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  ingress: []`,
			checks: []check{tcp80("y/a", "x/a", true), tcp80("y/a", "x/b", true), tcp80("y/a", "x/c", false)},
		},
		{
			name: "matchLabels and matchExpressions are ANDed",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}, matchExpressions: [{key: tier, operator: In, values: [fe]}]}
  ingress: []`,
			checks: []check{tcp80("y/a", "x/b", true)},
		},
		{
			name: "namespaceSelector with NotIn and DoesNotExist",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}
    - namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [a, b]}]}`,
			checks: []check{tcp80("z/a", "x/b", true), tcp80("y/a", "x/b", false), tcp80("x/a", "x/b", false)},
		},
		{
			name: "namespaceSelector on kubernetes.io/metadata.name, set by the API server",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]`,
			checks: []check{tcp80("z/a", "x/b", true), tcp80("y/a", "x/b", false)},
		},
	} {
		tc.ns, tc.pods = threeNS(), pods
		t.Run(tc.name, func(t *testing.T) { runSpecCase(t, tc) })
	}
}

func TestSpecIPBlock(t *testing.T) {
	pods := []Pod{
		mkPod("x/a", "10.0.0.1,fd00::1", ""),
		mkPod("x/b", "10.0.0.2,fd00::2", ""),
		// dual-stack pod whose addresses fall in different ipBlocks
		mkPod("x/c", "10.1.0.3,fd01::3", ""),
		mkPod("y/a", "10.0.1.1,fd00::1:1", ""),
	}
	for _, tc := range []specCase{
		{
			name: "ingress ipBlock with except, IPv4 and IPv6, for external sources",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24, 192.168.2.2/32]}
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}`,
			checks: []check{
				{"192.168.0.5", "x/a", "TCP", 80, true},
				{"192.168.1.5", "x/a", "TCP", 80, false},
				{"192.168.2.2", "x/a", "TCP", 80, false},
				{"192.168.2.3", "x/a", "TCP", 80, true},
				{"192.169.0.1", "x/a", "TCP", 80, false},
				{"2001:db8::5", "x/a@1", "TCP", 80, true},
				{"2001:db8:1::5", "x/a@1", "TCP", 80, false},
				{"2001:db9::5", "x/a@1", "TCP", 80, false},
				{"y/a", "x/a", "TCP", 80, false},
			},
		},
		{
			name: "ipBlock matches pod addresses too, with except",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.2/32]}
    - ipBlock: {cidr: "fd00::/64", except: ["fd00::1:0/112"]}`,
			checks: []check{
				{"y/a", "x/a", "TCP", 80, true},      // 10.0.1.1 in 10.0/16
				{"y/a@1", "x/a@1", "TCP", 80, false}, // fd00::1:1 excepted
				{"x/b", "x/a", "TCP", 80, false},     // 10.0.0.2 excepted
				{"x/b@1", "x/a@1", "TCP", 80, true},
				{"x/c", "x/a", "TCP", 80, false}, // 10.1.0.3 outside
				{"x/c@1", "x/a@1", "TCP", 80, false},
			},
		},
		{
			name: "egress to a dual-stack pod whose addresses are in different blocks",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.1.0.0/16}`,
			checks: []check{
				{"x/a", "x/c", "TCP", 80, true},
				{"x/a@1", "x/c@1", "TCP", 80, false},
				{"x/a", "10.1.9.9", "UDP", 53, true},
				{"x/a", "8.8.8.8", "UDP", 53, false},
				{"y/a", "8.8.8.8", "UDP", 53, true}, // y is not isolated
			},
		},
		{
			name: "a 0.0.0.0/0 block does not cover IPv6",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]`,
			checks: []check{
				{"x/a", "8.8.8.8", "TCP", 443, true},
				{"x/a@1", "2001:4860::8888", "TCP", 443, false},
				{"x/a@1", "y/a@1", "TCP", 443, false},
				{"x/a", "y/a", "TCP", 443, true},
			},
		},
		{
			name: "a CIDR with host bits set means its network",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.1.77/24}}]}]`,
			checks: []check{{"x/a", "y/a", "TCP", 80, true}, {"x/a", "x/b", "TCP", 80, false}},
		},
	} {
		tc.ns, tc.pods = threeNS(), pods
		t.Run(tc.name, func(t *testing.T) { runSpecCase(t, tc) })
	}
}

func TestSpecPorts(t *testing.T) {
	pods := []Pod{
		mkPod("x/a", "10.0.0.1", "http:8080/TCP,dns:53/UDP,web:80/SCTP", "app", "web"),
		mkPod("x/b", "10.0.0.2", "http:9090/TCP", "app", "web"),
		mkPod("x/c", "10.0.0.3", ":8080/TCP", "app", "web"), // unnamed
		mkPod("y/a", "10.0.1.1", "http:7070/TCP", "app", "client"),
	}
	for _, tc := range []specCase{
		{
			name: "port by number, protocol defaults to TCP",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 8080}]}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 8080, true}, {"y/a", "x/a", "UDP", 8080, false},
				{"y/a", "x/a", "TCP", 8081, false}, {"y/a", "x/b", "TCP", 8080, true},
			},
		},
		{
			// Pods are matched against most ipBlocks by the prefix
			// identity of their address; a named port resolves on the
			// destination pod, so its rule matches pod identities that
			// carry the block: both rules must agree on except.
			name: "egress named port to an ipBlock resolves on the pods in it only, beside a numbered rule to the same block",
			policies: `
metadata: {namespace: "y", name: p}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.2/32]}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.2/32]}}]
    ports: [{port: 5432}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 8080, true},       // in the block, http is 8080
				{"y/a", "x/b", "TCP", 9090, false},      // 10.0.0.2 excepted
				{"y/a", "x/c", "TCP", 8080, false},      // declares no http
				{"y/a", "10.0.5.5", "TCP", 8080, false}, // not a pod: http resolves on nothing
				{"y/a", "x/c", "TCP", 5432, true},
				{"y/a", "x/b", "TCP", 5432, false},
				{"y/a", "10.0.5.5", "TCP", 5432, true},
				{"y/a", "10.2.0.1", "TCP", 5432, false},
			},
		},
		{
			name: "ingress named port resolves on each destination pod; a pod lacking the name gets nothing",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 8080, true}, {"y/a", "x/a", "TCP", 9090, false},
				{"y/a", "x/b", "TCP", 9090, true}, {"y/a", "x/b", "TCP", 8080, false},
				{"y/a", "x/c", "TCP", 8080, false}, {"y/a", "x/a", "TCP", 7070, false},
			},
		},
		{
			name: "named port with a protocol that does not match the container port",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: dns, protocol: TCP}, {port: web, protocol: SCTP}]}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 53, false}, {"y/a", "x/a", "UDP", 53, false},
				{"y/a", "x/a", "SCTP", 80, true}, {"y/a", "x/a", "TCP", 80, false},
			},
		},
		{
			name: "egress named port resolves on the destination pod",
			policies: `
metadata: {namespace: "y", name: p}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 8080, true}, {"y/a", "x/a", "TCP", 9090, false},
				{"y/a", "x/b", "TCP", 9090, true}, {"y/a", "x/b", "TCP", 8080, false},
				{"y/a", "x/c", "TCP", 8080, false},
				// the source's own http port (7070) means nothing
				{"y/a", "x/a", "TCP", 7070, false},
				// nor can a name resolve on an address that is no pod
				{"y/a", "10.9.9.9", "TCP", 8080, false},
			},
		},
		{
			name: "egress named port with peers",
			policies: `
metadata: {namespace: "y", name: p}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 10.0.0.2/32}}]
    ports: [{port: http}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 8080, true}, {"y/a", "x/b", "TCP", 9090, true},
			},
		},
		{
			name: "endPort range edges",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 1000, endPort: 2000}, {port: 65535, endPort: 65535, protocol: UDP}]}]`,
			checks: []check{
				{"y/a", "x/a", "TCP", 999, false}, {"y/a", "x/a", "TCP", 1000, true},
				{"y/a", "x/a", "TCP", 1500, true}, {"y/a", "x/a", "TCP", 2000, true},
				{"y/a", "x/a", "TCP", 2001, false}, {"y/a", "x/a", "UDP", 1500, false},
				{"y/a", "x/a", "UDP", 65535, true}, {"y/a", "x/a", "UDP", 65534, false},
			},
		},
		{
			name: "TCP, UDP and SCTP are distinct",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 5000, protocol: UDP}, {port: 5001, protocol: SCTP}, {protocol: TCP, port: 5002}]}]`,
			checks: []check{
				{"y/a", "x/a", "UDP", 5000, true}, {"y/a", "x/a", "TCP", 5000, false}, {"y/a", "x/a", "SCTP", 5000, false},
				{"y/a", "x/a", "SCTP", 5001, true}, {"y/a", "x/a", "UDP", 5001, false},
				{"y/a", "x/a", "TCP", 5002, true}, {"y/a", "x/a", "SCTP", 5002, false},
			},
		},
		{
			name: "protocol without port: every port of that protocol",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP}]}]`,
			checks: []check{{"y/a", "x/a", "UDP", 1, true}, {"y/a", "x/a", "UDP", 65535, true}, {"y/a", "x/a", "TCP", 80, false}, {"y/a", "x/a", "ICMP", 0, false}},
		},
		{
			name: "ICMP is allowed only by a rule without ports",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]`,
			checks: []check{{"x/b", "x/a", "ICMP", 0, false}, {"x/b", "x/a", "TCP", 80, true}, {"y/a", "x/a", "ICMP", 0, true}, {"y/a", "x/a", "SCTP", 9, true}},
		},
		{
			name: "a rule with no ports allows every port and protocol",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}], ports: []}]`,
			checks: []check{{"y/a", "x/a", "TCP", 1, true}, {"y/a", "x/a", "UDP", 65535, true}, {"y/a", "x/a", "SCTP", 7, true}, {"y/a", "x/a", "ICMP", 0, true}, {"10.9.9.9", "x/a", "TCP", 1, false}},
		},
	} {
		tc.ns, tc.pods = threeNS(), pods
		t.Run(tc.name, func(t *testing.T) { runSpecCase(t, tc) })
	}
}

func TestSpecPolicyTypesAndEmptyRules(t *testing.T) {
	pods := []Pod{
		mkPod("x/a", "10.0.0.1", "", "app", "web"),
		mkPod("x/b", "10.0.0.2", "", "app", "db"),
		mkPod("y/a", "10.0.1.1", ""),
	}
	ext := "192.0.2.1"
	for _, tc := range []specCase{
		{
			name: "no policyTypes and egress rules: both directions",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{to: [{podSelector: {}}]}]`,
			checks: []check{{"x/a", "x/b", "TCP", 80, true}, {"x/a", "y/a", "TCP", 80, false}, {"y/a", "x/a", "TCP", 80, false}, {"x/b", "x/a", "TCP", 80, false}},
		},
		{
			name: "no policyTypes and no egress rules: ingress only",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}]}]`,
			checks: []check{{"x/a", "y/a", "TCP", 80, true}, {"x/a", ext, "TCP", 80, true}, {"y/a", "x/a", "TCP", 80, false}, {"x/b", "x/a", "TCP", 80, true}},
		},
		{
			name: "no policyTypes, egress: [] is no egress rule: ingress only",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: []`,
			checks: []check{{"x/a", "y/a", "TCP", 80, true}, {"y/a", "x/a", "TCP", 80, false}},
		},
		{
			name: "policyTypes [Egress] only: ingress not isolated, ingress rules ignored",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]`,
			checks: []check{{"y/a", "x/a", "TCP", 80, true}, {"x/a", "y/a", "TCP", 80, false}, {"x/a", "x/b", "TCP", 80, false}},
		},
		{
			name: "policyTypes [Ingress] with egress rules: egress ignored",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]`,
			checks: []check{{"x/a", "y/a", "TCP", 80, true}, {"x/a", ext, "UDP", 53, true}, {"y/a", "x/a", "TCP", 80, false}},
		},
		{
			name: "duplicate policyTypes are accepted as the API server does",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Ingress]`,
			checks: []check{{"y/a", "x/a", "TCP", 80, false}, {"x/a", "y/a", "TCP", 80, true}},
		},
		{
			name: "ingress: [{}] allows everything, external sources included",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{}]`,
			checks: []check{{"y/a", "x/a", "TCP", 80, true}, {ext, "x/a", "UDP", 9, true}, {ext, "x/a", "ICMP", 0, true}},
		},
		{
			name: "egress: [{}] allows everything",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]`,
			checks: []check{{"x/a", ext, "TCP", 80, true}, {"x/a", "y/a", "SCTP", 1, true}},
		},
		{
			name: "ingress: [] allows nothing",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: []`,
			checks: []check{{"y/a", "x/a", "TCP", 80, false}, {ext, "x/a", "TCP", 80, false}, {"x/b", "x/a", "TCP", 80, false}},
		},
		{
			name: "missing ingress allows nothing",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  policyTypes: [Ingress]`,
			checks: []check{{"y/a", "x/a", "TCP", 80, false}, {ext, "x/a", "TCP", 80, false}},
		},
		{
			name: "rule with no from allows every peer on its ports",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{from: [], ports: [{port: 443}]}]`,
			checks: []check{{"y/a", "x/a", "TCP", 443, true}, {ext, "x/a", "TCP", 443, true}, {"y/a", "x/a", "TCP", 80, false}},
		},
		{
			name: "isolation by any policy; allows are the union across policies",
			policies: `
metadata: {namespace: x, name: p1}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 80}]}]
---
metadata: {namespace: x, name: p2}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 81}]}]
---
metadata: {namespace: x, name: p3}
spec:
  podSelector: {matchLabels: {app: nothing}}
  ingress: [{}]`,
			checks: []check{
				{"x/b", "x/a", "TCP", 80, true}, {"x/b", "x/a", "TCP", 81, false},
				{"y/a", "x/a", "TCP", 81, true}, {"y/a", "x/a", "TCP", 80, false},
				{"y/a", "x/b", "TCP", 81, true}, {"x/a", "x/b", "TCP", 80, false},
			},
		},
		{
			name: "a pod may always reach itself",
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]`,
			checks: []check{{"x/a", "x/a", "TCP", 80, true}, {"x/a", "x/b", "TCP", 80, false}},
		},
	} {
		tc.ns, tc.pods = threeNS(), pods
		t.Run(tc.name, func(t *testing.T) { runSpecCase(t, tc) })
	}
}

func TestSpecHost(t *testing.T) {
	pods := []Pod{mkPod("x/a", "10.0.0.1", ""), mkPod("x/b", "10.0.0.2", "")}
	deny := `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]`
	for _, tc := range []specCase{
		{
			name: "from the node to an isolated pod: allowed by default", policies: deny, hostIPs: []string{"10.0.9.1"},
			checks: []check{{"10.0.9.1", "x/a", "TCP", 80, true}, {"10.0.9.2", "x/a", "TCP", 80, false}, {"x/a", "10.0.9.1", "TCP", 80, false}},
		},
		{
			name: "from the node: denied with DenyFromHost", policies: deny, hostIPs: []string{"10.0.9.1"}, opts: Options{DenyFromHost: true},
			checks: []check{{"10.0.9.1", "x/a", "TCP", 80, false}},
		},
		{
			name: "an ipBlock holding the node's address allows it, both ways", hostIPs: []string{"10.0.9.1"}, opts: Options{DenyFromHost: true},
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 10.0.9.0/24, except: [10.0.9.128/25]}}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 6443}]}]`,
			checks: []check{{"10.0.9.1", "x/a", "TCP", 80, true}, {"x/a", "10.0.9.1", "TCP", 6443, true}, {"x/a", "10.0.9.1", "TCP", 80, false}},
		},
		{
			name: "an ipBlock whose except holds the node's address does not", hostIPs: []string{"10.0.9.200"}, opts: Options{DenyFromHost: true},
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.9.0/24, except: [10.0.9.128/25]}}]}]`,
			checks: []check{{"10.0.9.200", "x/a", "TCP", 80, false}, {"10.0.9.1", "x/a", "TCP", 80, true}},
		},
	} {
		tc.ns, tc.pods = threeNS(), pods
		t.Run(tc.name, func(t *testing.T) { runSpecCase(t, tc) })
	}
}

func TestSpecClusterDefaultDeny(t *testing.T) {
	ns := []Namespace{mkNS("kube-system"), mkNS("x"), mkNS("y")}
	pods := []Pod{
		mkPod("kube-system/coredns", "10.0.5.1", "dns:53/UDP,dns-tcp:53/TCP", "k8s-app", "kube-dns"),
		mkPod("kube-system/other", "10.0.5.2", "", "k8s-app", "metrics"),
		mkPod("x/a", "10.0.0.1", "", "app", "web"),
		mkPod("x/b", "10.0.0.2", "", "app", "db"),
		mkPod("y/a", "10.0.1.1", ""),
	}
	opts := Options{ClusterDefaultDeny: DefaultExemptions()}
	tc := specCase{
		name: "every pod isolated both ways but kube-system; DNS allowed; user policies open traffic",
		ns:   ns, pods: pods, opts: opts,
		policies: `
metadata: {namespace: x, name: web-to-db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
---
metadata: {namespace: x, name: web-egress}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]`,
		checks: []check{
			{"x/a", "y/a", "TCP", 80, false},
			{"y/a", "x/a", "TCP", 80, false},
			{"192.0.2.1", "x/a", "TCP", 80, false},
			{"x/a", "192.0.2.1", "TCP", 443, false},
			{"x/a", "kube-system/coredns", "UDP", 53, true},
			{"y/a", "kube-system/coredns", "TCP", 53, true},
			{"y/a", "kube-system/coredns", "TCP", 80, false},
			{"y/a", "kube-system/other", "UDP", 53, false},
			{"kube-system/other", "x/a", "TCP", 80, false}, // x/a isolated for ingress
			{"kube-system/other", "kube-system/coredns", "TCP", 80, true},
			{"kube-system/coredns", "192.0.2.1", "UDP", 53, true},
			{"x/a", "x/b", "TCP", 5432, true},
			{"x/a", "x/b", "TCP", 5433, false},
			{"x/b", "x/a", "TCP", 5432, false},
		},
	}
	runSpecCase(t, tc)

	c := Build(Snapshot{Namespaces: ns, Pods: pods}, opts)
	v, err := c.EvaluatePods(PodKey{"x", "a"}, PodKey{"y", "a"}, ProtoTCP, 80)
	if err != nil {
		t.Fatal(err)
	}
	want := PolicyKey{Namespace: "x", Name: DefaultDenyPolicyName}
	if v.Egress == nil || !slices.Contains(v.Egress.IsolatedBy, want) {
		t.Errorf("egress verdict %+v does not name %s", v.Egress, want)
	}
	if v.Reason != ReasonEgressDenied {
		t.Errorf("reason %s", v.Reason)
	}
	ep, _ := c.Endpoint(PodKey{"y", "a"})
	if !slices.Contains(ep.Ingress.IsolatedBy, PolicyKey{Namespace: "y", Name: DefaultDenyPolicyName}) {
		t.Errorf("y/a ingress IsolatedBy = %v", ep.Ingress.IsolatedBy)
	}
	if ep, _ := c.Endpoint(PodKey{"kube-system", "other"}); ep.Ingress.Isolated || ep.Egress.Isolated {
		t.Errorf("kube-system is exempt, got %+v", ep)
	}
	if err := DefaultExemptions().Validate(); err != nil {
		t.Errorf("DefaultExemptions: %v", err)
	}
}

func TestSpecWorldEdges(t *testing.T) {
	t.Run("pods without addresses are selected and harmless", func(t *testing.T) {
		runSpecCase(t, specCase{
			ns:   threeNS(),
			pods: []Pod{mkPod("x/a", "10.0.0.1", ""), mkPod("x/pending", "", "", "app", "web"), mkPod("y/a", "10.0.1.1", "", "app", "web")},
			policies: `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]`,
			checks: []check{{"y/a", "x/a", "TCP", 80, true}},
		})
		c := Build(Snapshot{Namespaces: threeNS(), Pods: []Pod{mkPod("x/pending", "", "")}}, Options{})
		if _, err := c.EvaluatePods(PodKey{"x", "pending"}, PodKey{"x", "pending"}, ProtoTCP, 80); err == nil {
			t.Error("EvaluatePods of a pod without addresses: want an error")
		}
	})
	t.Run("duplicate addresses resolve to one pod, deterministically", func(t *testing.T) {
		runSpecCase(t, specCase{
			ns:   threeNS(),
			pods: []Pod{mkPod("x/a", "10.0.0.1", "", "app", "web"), mkPod("x/b", "10.0.0.1", "", "app", "db"), mkPod("y/a", "10.0.1.1", "")},
			policies: `
metadata: {namespace: "y", name: p}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]`,
			checks: []check{{"10.0.0.1", "y/a", "TCP", 80, true}},
		})
	})
	t.Run("pods of a deleted namespace match only the all-namespaces selector", func(t *testing.T) {
		c := New(Options{})
		for _, ns := range threeNS() {
			c.SetNamespace(ns)
		}
		c.SetPod(mkPod("x/a", "10.0.0.1", ""))
		c.SetPod(mkPod("y/a", "10.0.1.1", ""))
		for _, np := range mkPolicies(t, `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 80}]}, {from: [{namespaceSelector: {}}], ports: [{port: 81}]}]`) {
			if err := c.SetPolicy(np); err != nil {
				t.Fatal(err)
			}
		}
		src, dst := netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.0.1")
		if !c.Evaluate(src, dst, ProtoTCP, 80).Allowed {
			t.Fatal("before delete: want allowed")
		}
		c.DeleteNamespace("y")
		if c.Evaluate(src, dst, ProtoTCP, 80).Allowed {
			t.Error("after delete: team=b no longer matches y/a")
		}
		if !c.Evaluate(src, dst, ProtoTCP, 81).Allowed {
			t.Error("after delete: the all-namespaces selector still matches y/a")
		}
		c.SetNamespace(mkNS("y", "team", "b"))
		if !c.Evaluate(src, dst, ProtoTCP, 80).Allowed {
			t.Error("namespace back: want allowed")
		}
		checkInvariants(t, c)
	})
	t.Run("a duplicated port name resolves to the first declared port, ingress and egress alike", func(t *testing.T) {
		runSpecCase(t, specCase{
			ns:   threeNS(),
			pods: []Pod{mkPod("x/a", "10.0.0.1", "http:9000/TCP,http:8000/TCP"), mkPod("y/a", "10.0.1.1", "")},
			policies: `
metadata: {namespace: x, name: in}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
---
metadata: {namespace: "y", name: out}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]`,
			checks: []check{{"y/a", "x/a", "TCP", 9000, true}, {"y/a", "x/a", "TCP", 8000, false}},
		})
	})
}

// TestRuleIDsStable: rule numbers are stored in the kernel with each allow,
// so updating a policy keeps the numbers of the rules that remain, frees
// those that are gone, and an invalid or deleted policy leaves none behind.
func TestRuleIDsStable(t *testing.T) {
	c := Build(Snapshot{Namespaces: threeNS(), Pods: []Pod{mkPod("x/a", "10.0.0.1", ""), mkPod("y/a", "10.0.1.1", "")}}, Options{})
	v1 := mkPolicies(t, `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}, {ports: [{port: 81}]}]
  egress: [{ports: [{port: 53, protocol: UDP}]}]`)[0]
	if err := c.SetPolicy(v1); err != nil {
		t.Fatal(err)
	}
	ids := func() map[RuleRef]RuleID {
		out := map[RuleRef]RuleID{}
		for id, ref := range c.ruleRefs {
			out[ref] = id
		}
		return out
	}
	before := ids()
	if len(before) != 3 {
		t.Fatalf("rule refs %v", before)
	}
	v2 := mkPolicies(t, `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}, {ports: [{port: 82}]}, {ports: [{port: 83}]}]`)[0]
	if err := c.SetPolicy(v2); err != nil {
		t.Fatal(err)
	}
	after := ids()
	for _, i := range []int{0, 1} {
		ref := RuleRef{Policy: PolicyKey{"x", "p"}, Direction: Ingress, Index: i}
		if before[ref] != after[ref] {
			t.Errorf("%s renumbered %d -> %d", ref, before[ref], after[ref])
		}
	}
	if _, ok := after[RuleRef{Policy: PolicyKey{"x", "p"}, Direction: Egress, Index: 0}]; ok {
		t.Error("the removed egress rule kept its number")
	}
	if len(after) != 3 {
		t.Errorf("rule refs after update: %v", after)
	}
	ep, _ := c.Endpoint(PodKey{"x", "a"})
	for r := range ep.Ingress.Rules.All() {
		if ref, ok := c.Rule(r.ID); !ok || ref.Policy != (PolicyKey{"x", "p"}) {
			t.Errorf("rule %s -> %v %v", r, ref, ok)
		}
	}
	// An invalid version: nothing of it is enforced and no number leaks.
	bad := mkPolicies(t, `
metadata: {namespace: x, name: p}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}, {ports: [{port: 82}]}, {ports: [{port: 83, protocol: ICMP}]}]`)[0]
	if err := c.SetPolicy(bad); err == nil {
		t.Fatal("want an error")
	}
	if got := ids(); len(got) != 0 {
		t.Errorf("invalid policy left rule numbers %v", got)
	}
	// A fresh invalid policy leaks nothing either, nor does its deletion.
	bad.Name = "q"
	_ = c.SetPolicy(bad)
	c.DeletePolicy(PolicyKey{"x", "q"})
	c.DeletePolicy(PolicyKey{"x", "p"})
	if got := ids(); len(got) != 0 {
		t.Errorf("rule numbers left after deleting everything: %v", got)
	}
	if len(c.ruleIDs) != 0 {
		t.Errorf("ruleIDs left: %v", c.ruleIDs)
	}
	checkInvariants(t, c)
}
