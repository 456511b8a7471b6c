package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/mapsync"
	"github.com/ztnet/zt/pkg/policy"
)

// testRoot returns a unique bpffs root, removed at cleanup.
func testRoot(t testing.TB) string {
	root := filepath.Join("/sys/fs/bpf", "zt-test-k-"+randHex(6))
	track(func() { created.roots = append(created.roots, root) })
	t.Cleanup(func() {
		if err := os.RemoveAll(root); err != nil {
			t.Errorf("remove %s: %v", root, err)
		}
	})
	return root
}

// cluster wires a node's pods the way the agent does: compiler →
// mapsync.Desired → Syncer → pinned maps, tc programs on the host veths.
type cluster struct {
	t      testing.TB
	n      *node
	root   string
	dp     *datapath.Datapath
	c      *policy.Compiler
	syncer *mapsync.Syncer
}

// openDatapath opens (or adopts) the datapath at root and tears
// everything down at cleanup.
func openDatapath(t testing.TB, root string) *datapath.Datapath {
	t.Helper()
	dp, err := datapath.Open(datapath.Options{BPFFSRoot: root})
	if err != nil {
		t.Fatalf("open datapath at %s: %v", root, err)
	}
	t.Cleanup(func() {
		recordLinks(root)
		if err := dp.Remove(); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
		if err := dp.Close(); err != nil {
			t.Errorf("close datapath: %v", err)
		}
	})
	return dp
}

// newCluster compiles the node's pods (no policies yet), reconciles and
// attaches the tc programs to every host veth.
func newCluster(t testing.TB, n *node, nsLabels map[string]map[string]string) *cluster {
	t.Helper()
	cl := &cluster{t: t, n: n, root: testRoot(t)}
	cl.dp = openDatapath(t, cl.root)
	cl.c = policy.New(policy.Options{})
	cl.c.SetHostIPs([]netip.Addr{nodeIP4, nodeIP6})
	for name, l := range nsLabels {
		cl.c.SetNamespace(policy.Namespace{Name: name, Labels: l})
	}
	for _, p := range n.pods {
		cl.c.SetPod(p.policyPod())
	}
	cl.syncer = mapsync.New(cl.dp)
	cl.c.Sync()
	if _, err := cl.syncer.Reconcile(cl.desired()); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	mustNS(t, n.ns, func() error {
		for _, p := range n.pods {
			mode, err := cl.dp.AttachEndpoint(p.hostIfindex)
			if err != nil {
				return fmt.Errorf("attach %s: %w", p.hostIf, err)
			}
			if mode != datapath.AttachTCX {
				return fmt.Errorf("attach %s: mode %s, want tcx", p.hostIf, mode)
			}
		}
		return nil
	})
	return cl
}

func (cl *cluster) bindings() []mapsync.Binding {
	var out []mapsync.Binding
	for _, p := range cl.n.pods {
		out = append(out, mapsync.Binding{Pod: p.key(), Ifindex: uint32(p.hostIfindex)})
	}
	return out
}

func (cl *cluster) desired() mapsync.State {
	st, err := mapsync.Desired(cl.c, cl.bindings(), mapsync.Options{})
	if err != nil {
		cl.t.Fatalf("desired: %v", err)
	}
	return st
}

// apply syncs the compiler and writes the difference to the kernel.
func (cl *cluster) apply() mapsync.Stats {
	cl.t.Helper()
	cl.c.Sync()
	st, err := cl.syncer.Apply(cl.desired())
	if err != nil {
		cl.t.Fatalf("apply: %v", err)
	}
	return st
}

func (cl *cluster) setPolicy(np *networkingv1.NetworkPolicy) {
	cl.t.Helper()
	if err := cl.c.SetPolicy(np); err != nil {
		cl.t.Fatalf("policy %s/%s: %v", np.Namespace, np.Name, err)
	}
}

// enableSocketHooks registers every pod's network namespace cookie (as the
// agent does when a pod starts) and attaches the cgroup socket programs at
// the cgroup v2 root. They are machine-wide: detached at cleanup.
func (cl *cluster) enableSocketHooks() {
	t := cl.t
	t.Helper()
	for _, p := range cl.n.pods {
		cookie, err := datapath.NetnsCookie(nsPath(p.ns))
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.dp.NetnsPut(cookie, datapath.NetnsVal{EpId: uint32(p.hostIfindex), Ifindex: uint32(p.hostIfindex)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.dp.AttachCgroup(""); err != nil {
		t.Fatalf("attach socket hooks: %v", err)
	}
	recordLinks(cl.root)
	t.Cleanup(func() {
		if err := cl.dp.DetachCgroup(); err != nil {
			t.Errorf("detach socket hooks: %v", err)
		}
	})
}

func (cl *cluster) counter(dir datapath.Dir, v datapath.Verdict, r datapath.Reason) uint64 {
	cl.t.Helper()
	c, err := cl.dp.Counter(dir, v, r)
	if err != nil {
		cl.t.Fatal(err)
	}
	return c.Packets
}

func nonZeroCounters(t testing.TB, dp *datapath.Datapath) string {
	cs, err := dp.Counters()
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, c := range cs {
		if c.Packets != 0 {
			fmt.Fprintf(&b, " %s/%s/%s=%d", c.Dir, c.Verdict, c.Reason, c.Packets)
		}
	}
	return b.String()
}

// ---- expectations ----

// flow is one probe: from a pod (nil: the node itself) to a pod's port.
type flow struct {
	from  *pod
	to    *pod
	proto string // "tcp" or "udp"
	port  int
	v6    bool
	want  bool
}

func (f flow) String() string {
	from := "node"
	if f.from != nil {
		from = f.from.String()
	}
	fam := "v4"
	if f.v6 {
		fam = "v6"
	}
	return fmt.Sprintf("%s -> %s %s/%d %s", from, f.to, f.proto, f.port, fam)
}

func (f flow) src() netip.Addr {
	if f.from == nil {
		if f.v6 {
			return nodeIP6
		}
		return nodeIP4
	}
	return f.from.ip(f.v6)
}

// flows expands (from, to, proto, port, want) over both families.
func both(from, to *pod, proto string, port int, want bool) []flow {
	return []flow{{from, to, proto, port, false, want}, {from, to, proto, port, true, want}}
}

// expect checks every flow twice over: the compiler's Evaluate (the one
// truth ztctl uses) and real packets through the kernel. Probes run in
// parallel; an allowed probe waits up to 2 s, a denied one 400 ms.
func (cl *cluster) expect(flows ...flow) {
	t := cl.t
	t.Helper()
	for _, f := range flows {
		proto := policy.ProtoTCP
		if f.proto == "udp" {
			proto = policy.ProtoUDP
		}
		v := cl.c.Evaluate(f.src(), f.to.ip(f.v6), proto, uint16(f.port))
		if v.Allowed != f.want {
			t.Errorf("compiler: %s allowed=%v (%s), want %v", f, v.Allowed, v.Reason, f.want)
		}
	}
	type result struct {
		f   flow
		err error
		dur time.Duration
	}
	res := make([]result, len(flows))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			timeout := 400 * time.Millisecond
			if f.want {
				timeout = 2 * time.Second
			}
			dst := netip.AddrPortFrom(f.to.ip(f.v6), uint16(f.port))
			start := time.Now()
			var err error
			if f.from == nil {
				err = cl.n.probe(f.proto, dst, timeout)
			} else {
				err = f.from.probe(f.proto, dst, timeout)
			}
			res[i] = result{f, err, time.Since(start)}
		}()
	}
	wg.Wait()
	failed := false
	for _, r := range res {
		got := r.err == nil
		if got != r.f.want {
			failed = true
			t.Errorf("kernel: %s passed=%v (err %v after %v), want %v", r.f, got, r.err, r.dur.Round(time.Millisecond), r.f.want)
		}
	}
	if failed {
		t.Logf("counters:%s", nonZeroCounters(t, cl.dp))
	}
}

func isEPERM(err error) bool { return errors.Is(err, unix.EPERM) }

// ---- NetworkPolicy builders ----

func netpol(ns, name string, sel map[string]string, types []networkingv1.PolicyType,
	ingress []networkingv1.NetworkPolicyIngressRule, egress []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: sel},
			PolicyTypes: types,
			Ingress:     ingress,
			Egress:      egress,
		},
	}
}

type (
	networkingPolicy  = networkingv1.NetworkPolicy
	networkingIngress = networkingv1.NetworkPolicyIngressRule
	networkingEgress  = networkingv1.NetworkPolicyEgressRule
	networkingPort    = networkingv1.NetworkPolicyPort
)

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	bothTypes   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

func ingressRule(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports}
}

func egressRule(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports}
}

func peers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

func podSel(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func nsSel(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func nsPodSel(ns, pods map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: ns},
		PodSelector: &metav1.LabelSelector{MatchLabels: pods}}
}

func ipBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func proto(s string) *corev1.Protocol {
	p := corev1.ProtocolTCP
	if s == "udp" {
		p = corev1.ProtocolUDP
	}
	return &p
}

func port(pr string, n int) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(n))
	return networkingv1.NetworkPolicyPort{Protocol: proto(pr), Port: &v}
}

func namedPort(pr, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: proto(pr), Port: &v}
}

func portRange(pr string, lo, hi int) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(lo))
	end := int32(hi)
	return networkingv1.NetworkPolicyPort{Protocol: proto(pr), Port: &v, EndPort: &end}
}

func labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}
