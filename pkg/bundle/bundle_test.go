package bundle

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/ztnet/zt/pkg/policy"
)

func TestDecodeKubectlList(t *testing.T) {
	b, err := Load("testdata/kubectl-list.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Namespaces) != 1 || len(b.Pods) != 1 || len(b.Policies) != 1 {
		t.Fatalf("got %d namespaces, %d pods, %d policies; want 1 each", len(b.Namespaces), len(b.Pods), len(b.Policies))
	}
	s, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p := s.Pods[0]
	wantIPs := []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00::5")}
	if len(p.IPs) != 2 || p.IPs[0] != wantIPs[0] || p.IPs[1] != wantIPs[1] {
		t.Errorf("IPs = %v, want %v", p.IPs, wantIPs)
	}
	wantPorts := []policy.ContainerPort{
		{Name: "http", Port: 8080, Protocol: policy.ProtoTCP},
		{Name: "metrics", Port: 9090, Protocol: policy.ProtoTCP}, // protocol defaults to TCP
		{Name: "admin", Port: 15000, Protocol: policy.ProtoUDP},  // restartable init container (sidecar)
	}
	if len(p.Ports) != len(wantPorts) {
		t.Fatalf("ports = %+v, want %+v", p.Ports, wantPorts)
	}
	for i := range wantPorts {
		if p.Ports[i] != wantPorts[i] {
			t.Errorf("ports[%d] = %+v, want %+v", i, p.Ports[i], wantPorts[i])
		}
	}
	if p.NodeName != "node-1" || p.Labels["app"] != "web" {
		t.Errorf("pod = %+v", p)
	}
}

func TestDecodeMultiDocument(t *testing.T) {
	in := `
# leading comment
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
---
apiVersion: v1
kind: Pod
metadata: {name: p}
status: {podIP: 10.0.0.1}
---
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "a"}, "spec": {"podSelector": {}}}
`
	b, err := Decode(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Namespaces) != 1 || len(b.Pods) != 1 || len(b.Policies) != 1 {
		t.Fatalf("got %d/%d/%d objects", len(b.Namespaces), len(b.Pods), len(b.Policies))
	}
	if b.Pods[0].Namespace != "default" {
		t.Errorf("pod without namespace got %q, want default", b.Pods[0].Namespace)
	}
	s, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// "default" is implied by the pod and gets created with its name label.
	var names []string
	for _, ns := range s.Namespaces {
		names = append(names, ns.Name)
	}
	if strings.Join(names, ",") != "a,default" {
		t.Errorf("namespaces = %v, want a,default", names)
	}
}

func TestDecodeErrors(t *testing.T) {
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nstatus: {podIP: 10.0.0.1}\n"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"malformed yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\n  bad: [indent\n", "document 2"},
		{"unknown kind", pod + "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "document 2: unsupported kind Service"},
		{"unregistered kind", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n", "document 1"},
		{"missing kind", "apiVersion: v1\nmetadata: {name: x}\n", "document 1"},
		{"duplicate", pod + "---\n" + pod, "document 2: duplicate Pod a/p (first in document 1)"},
		{"duplicate in list", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n", "document 1, item 1: duplicate Namespace a (first in document 1, item 0)"},
		{"nameless namespace", "apiVersion: v1\nkind: Namespace\nmetadata: {}\n", "document 1: Namespace has no metadata.name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !errors.Is(err, ErrBundle) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want ErrBundle containing %q", err, tc.want)
			}
		})
	}
}

func TestSnapshotErrors(t *testing.T) {
	in := `apiVersion: v1
kind: Pod
metadata: {name: noip, namespace: a}
---
apiVersion: v1
kind: Pod
metadata: {name: badip, namespace: a}
status: {podIPs: [{ip: 10.0.0.300}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: a}
status: {podIPs: [{ip: 10.0.0.3}]}
`
	b, err := Decode(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Snapshot()
	if err == nil {
		t.Fatal("no error for pods without a valid IP")
	}
	for _, want := range []string{"pod a/noip has no IP", `pod a/badip: status.podIPs[0]: invalid IP "10.0.0.300"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if len(s.Pods) != 1 || s.Pods[0].Name != "ok" {
		t.Errorf("the good pod must still convert: %+v", s.Pods)
	}
}

func TestParsePortKey(t *testing.T) {
	for in, want := range map[string]string{"80": "80/TCP", "53/UDP": "53/UDP", "53/udp": "53/UDP", "3868/SCTP": "3868/SCTP"} {
		k, err := ParsePortKey(in)
		if err != nil || k.String() != want {
			t.Errorf("ParsePortKey(%q) = %v, %v; want %s", in, k, err, want)
		}
	}
	for _, in := range []string{"", "0", "65536", "http", "80/ICMP", "80x", "-1"} {
		if _, err := ParsePortKey(in); err == nil {
			t.Errorf("ParsePortKey(%q): no error", in)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the decoder and, when they decode,
// to the compiler: errors are fine, panics are not.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.1}\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Namespace, metadata: {name: a}}]\n"))
	f.Add([]byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: In, values: [b]}]}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}]}]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("{\"kind\": \"List\", \"apiVersion\": \"v1\", \"items\": [{}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		s, _ := b.Snapshot()
		c := policy.Build(s, policy.Options{})
		for _, p := range s.Pods {
			for _, q := range s.Pods {
				_, _ = c.EvaluatePods(p.Key(), q.Key(), policy.ProtoTCP, 80)
			}
		}
	})
}
