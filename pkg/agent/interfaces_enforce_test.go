package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/mapsync"
	"github.com/ztnet/zt/pkg/policy"
)

// TestBridgeLayoutEnforced: on the bridge CNI's layout the agent's own
// binding (bindEndpoints, finding the veths through the pods' namespaces)
// attaches zt so that a bridged connection into a default-deny pod is
// dropped, and passes once a policy allows it.
func TestBridgeLayoutEnforced(t *testing.T) {
	n := newTestNode(t)
	n.withBridge(pfx("10.79.0.1/24"))
	client := n.addPod("cli", pfx("10.79.0.10/24"))
	server := n.addPod("srv", pfx("10.79.0.11/24"))

	root := filepath.Join("/sys/fs/bpf", "zt-test-agent-"+n.tag)
	dp, err := datapath.Open(datapath.Options{BPFFSRoot: root})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		// Links are detached with the node namespace; pins go here.
		if err := dp.Remove(); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
		dp.Close()
		if err := os.RemoveAll(root); err != nil {
			t.Error(err)
		}
	})

	const node, ns = "n1", "bridged"
	c := policy.New(policy.Options{NodeName: node})
	c.SetNamespace(policy.Namespace{Name: ns, Labels: map[string]string{"kubernetes.io/metadata.name": ns}})
	for _, p := range []*testPod{client, server} {
		c.SetPod(policy.Pod{Namespace: ns, Name: p.name, NodeName: node, IPs: p.ips, Labels: map[string]string{"app": p.name}})
	}
	a := &Agent{log: zap.NewNop(), compiler: c, dp: dp, metrics: newMetrics(dp),
		bound: map[policy.PodKey]binding{}, missing: map[policy.PodKey]string{},
		ifaces: newIfaceFinder([]string{n.dir})}
	syncer := mapsync.New(dp)
	sync := func() {
		t.Helper()
		c.Sync()
		n.do(func() error {
			if a.bindEndpoints() {
				return fmt.Errorf("interfaces missing: %v", a.missing)
			}
			var binds []mapsync.Binding
			for pk, b := range a.bound {
				binds = append(binds, mapsync.Binding{Pod: pk, Ifindex: b.ifindex})
			}
			d, err := mapsync.Desired(c, binds, mapsync.Options{})
			if err != nil {
				return err
			}
			_, err = syncer.Apply(d)
			return err
		})
	}

	port := listen(t, server)
	probe := func() error { return dial(client, server.ips[0], port) }

	sync()
	if got := a.bound[policy.PodKey{Namespace: ns, Name: "srv"}].ifindex; got != uint32(server.host) {
		t.Fatalf("server bound to ifindex %d, want its bridge port %s (%d)", got, server.hostIf, server.host)
	}
	if err := probe(); err != nil {
		t.Fatalf("no policy yet: the bridged connection fails: %v", err)
	}

	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "srv"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if err := c.SetPolicy(deny); err != nil {
		t.Fatal(err)
	}
	sync()
	if err := probe(); err == nil {
		t.Fatal("default-deny: the bridged connection into the server passed")
	}

	allow := deny.DeepCopy()
	allow.Name = "allow-cli"
	allow.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "cli"}}}}}}
	if err := c.SetPolicy(allow); err != nil {
		t.Fatal(err)
	}
	sync()
	if err := probe(); err != nil {
		t.Fatalf("allowed: the bridged connection fails: %v", err)
	}
}

// listen serves TCP (accept, write one byte) in p's namespace until the
// test ends; it returns the port.
func listen(t *testing.T, p *testPod) int {
	t.Helper()
	var l net.Listener
	if err := netnsutil.DoPath(p.path, func() error {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(p.ips[0].String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{1})
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// dial connects from p's namespace and reads the server's byte.
func dial(p *testPod, ip netip.Addr, port int) error {
	return netnsutil.DoPath(p.path, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(700 * time.Millisecond))
		b := make([]byte, 1)
		_, err = c.Read(b)
		return err
	})
}
