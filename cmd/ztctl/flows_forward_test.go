package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"
	"sigs.k8s.io/yaml"

	"github.com/ztnet/zt/deploy"
	"github.com/ztnet/zt/internal/testenv"
	"github.com/ztnet/zt/pkg/flows"
)

// forwardCluster is a real API server with fake zt-agent pods (nobody runs
// them: no kubelet answers) and kubeconfigs of users with less and more
// RBAC in zt-system.
type forwardCluster struct {
	srv *testenv.APIServer
	cs  kubernetes.Interface
	// kubeconfigs by user: "outsider" (no RBAC), "reader" (get/list pods),
	// "forwarder" (get/list pods, create pods/portforward).
	kubeconfig map[string]string
}

func newForwardCluster(t *testing.T) *forwardCluster {
	t.Helper()
	srv := testenv.StartAPIServer(t)
	c := &forwardCluster{srv: srv, cs: srv.AdminClient(t), kubeconfig: map[string]string{}}
	srv.CreateNamespace(t, agentNamespace, nil)
	srv.CreateNamespace(t, "elsewhere", nil)

	// The nodes' kubelet port has nothing behind it.
	dead := closedPort(t)
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		c.createNode(t, n, dead)
	}
	agent := map[string]string{"app.kubernetes.io/name": "zt-agent"}
	for _, p := range []struct {
		ns, name, node string
		labels         map[string]string
		phase          corev1.PodPhase
	}{
		{agentNamespace, "zt-agent-a", "node-a", agent, corev1.PodRunning},
		{agentNamespace, "zt-agent-b", "node-b", agent, corev1.PodRunning},
		{agentNamespace, "zt-agent-c", "node-c", agent, corev1.PodPending},
		{agentNamespace, "impostor", "node-a", map[string]string{"app.kubernetes.io/name": "zt-agent-debug"}, corev1.PodRunning},
		{"elsewhere", "zt-agent-x", "node-a", agent, corev1.PodRunning},
	} {
		c.createPod(t, p.ns, p.name, p.node, p.labels, p.phase)
	}
	podsRead := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}
	c.user(t, "outsider")
	c.user(t, "reader", podsRead)
	// The forwarder holds exactly the Role deploy/ ships for this.
	c.user(t, "forwarder", shippedFlowsReader(t).Rules...)
	return c
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// createNode creates a Node whose kubelet is at 127.0.0.1:port.
func (c *forwardCluster) createNode(t *testing.T, name string, port int) {
	t.Helper()
	ctx := context.Background()
	n, err := c.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	if _, err := c.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createPod creates a pod on node and sets its phase, as a kubelet would.
func (c *forwardCluster) createPod(t *testing.T, ns, name, node string, labels map[string]string, phase corev1.PodPhase) {
	t.Helper()
	ctx := context.Background()
	p, err := c.cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/zt-agent:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: phase}
	if _, err := c.cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// user creates the ServiceAccount zt-users/name, binds rules to it in
// zt-system and writes a kubeconfig with its token.
func (c *forwardCluster) user(t *testing.T, name string, rules ...rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	tok := c.srv.TokenFor(t, "zt-users", name)
	if len(rules) > 0 {
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "flows-" + name, Namespace: agentNamespace}, Rules: rules}
		if _, err := c.cs.RbacV1().Roles(agentNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "flows-" + name, Namespace: agentNamespace},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "zt-users", Name: name}},
		}
		if _, err := c.cs.RbacV1().RoleBindings(agentNamespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c.kubeconfig[name] = writeKubeconfig(t, c.srv.ConfigForToken(tok), name)
	// RBAC is read from an informer: wait until the grant is visible.
	if len(rules) > 0 {
		cs := kubernetes.NewForConfigOrDie(c.srv.ConfigForToken(tok))
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := cs.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{Limit: 1})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: RBAC not in effect: %v", name, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// writeKubeconfig writes rc (server, CA, token) as a kubeconfig file.
func writeKubeconfig(t *testing.T, rc *rest.Config, user string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{
		Server:                   rc.Host,
		CertificateAuthority:     rc.TLSClientConfig.CAFile,
		CertificateAuthorityData: rc.TLSClientConfig.CAData,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: rc.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: user}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// flowsAs runs `ztctl flows -A` off the node (no socket) as user; it
// must fail, and its error message is returned.
func (c *forwardCluster) flowsAs(t *testing.T, user string, args ...string) string {
	t.Helper()
	args = append([]string{"flows", "-A", "--socket", filepath.Join(t.TempDir(), "none.sock"), "--kubeconfig", c.kubeconfig[user]}, args...)
	start := time.Now()
	out, errOut, code := ztctl(t, args...)
	if code == 0 {
		t.Fatalf("ztctl %v succeeded without a reachable agent:\n%s", args, out)
	}
	t.Logf("%s (%s): %s", user, time.Since(start).Round(time.Millisecond), errOut)
	return errOut
}

func wantAll(t *testing.T, what, msg string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: message lacks %q:\n%s", what, w, msg)
		}
	}
}

func wantNone(t *testing.T, what, msg string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(msg, w) {
			t.Errorf("%s: message has %q:\n%s", what, w, msg)
		}
	}
}

// TestFlowsForward runs ztctl flows off the node against a real API server,
// as users with different RBAC, with fake zt-agent pods that no kubelet
// runs.
func TestFlowsForward(t *testing.T) {
	c := newForwardCluster(t)

	t.Run("no pods/list", func(t *testing.T) {
		msg := c.flowsAs(t, "outsider")
		wantAll(t, "outsider", msg, "cannot list zt-agent pods", "get and list on pods", "pods/portforward",
			"namespace zt-system", "--socket", `cannot list resource "pods"`)
	})

	t.Run("no pods/portforward", func(t *testing.T) {
		// The API server refuses before it asks any kubelet: the nodes'
		// kubelet port is closed, yet the message is about RBAC.
		msg := c.flowsAs(t, "reader")
		wantAll(t, "reader", msg, "refused", "create on pods/portforward in namespace zt-system", "--socket",
			`cannot create resource "pods/portforward"`)
		wantNone(t, "reader", msg, "kubelet", "connection refused")
		if n := strings.Count(msg, "refused:"); n != 1 {
			t.Errorf("the refusal is said %d times, want once:\n%s", n, msg)
		}
	})

	t.Run("discovery by label", func(t *testing.T) {
		// Only the labeled, Running pods of zt-system are tried: each is
		// named with its node, and what to do.
		msg := c.flowsAs(t, "forwarder")
		wantAll(t, "forwarder", msg, "2 of 2 zt-agents failed",
			"port-forward to zt-system/zt-agent-a on node node-a failed",
			"port-forward to zt-system/zt-agent-b on node node-b failed",
			"could not reach the node's kubelet", "kubectl get node node-a", "--node", "--socket")
		wantNone(t, "forwarder", msg, "impostor", "zt-agent-c", "zt-agent-x", "elsewhere")

		msg = c.flowsAs(t, "forwarder", "--node", "node-b")
		wantAll(t, "--node node-b", msg, "zt-system/zt-agent-b on node node-b", "kubectl get node node-b")
		wantNone(t, "--node node-b", msg, "zt-agent-a")
	})

	t.Run("node without a Node object", func(t *testing.T) {
		c.createPod(t, agentNamespace, "zt-agent-ghost", "node-gone", map[string]string{"app.kubernetes.io/name": "zt-agent"}, corev1.PodRunning)
		defer func() {
			if err := c.cs.CoreV1().Pods(agentNamespace).Delete(context.Background(), "zt-agent-ghost", *metav1.NewDeleteOptions(0)); err != nil {
				t.Fatal(err)
			}
		}()
		msg := c.flowsAs(t, "forwarder", "--node", "node-gone")
		wantAll(t, "--node node-gone", msg, "zt-system/zt-agent-ghost on node node-gone", "kubectl get node node-gone")
	})

	t.Run("no running agent", func(t *testing.T) {
		msg := c.flowsAs(t, "forwarder", "--node", "node-c")
		wantAll(t, "--node node-c", msg, "no running zt-agent pod (app.kubernetes.io/name=zt-agent) in namespace zt-system on node node-c",
			"not running: zt-agent-c (Pending)", "kubectl -n zt-system get pods -l app.kubernetes.io/name=zt-agent")
		msg = c.flowsAs(t, "forwarder", "--node", "node-z")
		wantAll(t, "--node node-z", msg, "no running zt-agent pod", "on node node-z", "is node-z a node's name?", "kubectl apply -k deploy/")
		wantNone(t, "--node node-z", msg, "not running:")
	})

	t.Run("transport seam", func(t *testing.T) {
		// The same discovery with agents reached on their sockets, as in
		// the lab: records of both agents merged by time.
		ctx := context.Background()
		_, sockA, sockB := twoAgents(t, 2)
		tr := &socketTransport{sockets: map[string]string{"zt-agent-a": sockA, "zt-agent-b": sockB}}
		src, closeSrc, err := agentsSource(ctx, c.cs, "", tr, noWarning(t))
		if err != nil {
			t.Fatal(err)
		}
		got := nodesOf(t, src)
		closeSrc()
		if want := "node-a node-b node-a node-b"; strings.Join(got, " ") != want {
			t.Errorf("merged nodes %v, want %s", got, want)
		}
		if want := []string{"zt-system/zt-agent-a", "zt-system/zt-agent-b"}; !slices.Equal(tr.tried(), want) {
			t.Errorf("tried %v, want %v", tr.tried(), want)
		}
		if tr.live != 0 {
			t.Errorf("%d agents left open", tr.live)
		}

		tr = &socketTransport{sockets: map[string]string{"zt-agent-b": sockB}}
		if _, _, err := agentsSource(ctx, c.cs, "node-b", tr, noWarning(t)); err != nil {
			t.Fatal(err)
		}
		if want := []string{"zt-system/zt-agent-b"}; !slices.Equal(tr.tried(), want) {
			t.Errorf("--node node-b: tried %v, want %v", tr.tried(), want)
		}

		// One agent unreachable: the others' records, and a warning
		// naming the one left out (a 5,000-node cluster always has a
		// node down).
		tr = &socketTransport{sockets: map[string]string{"zt-agent-a": sockA}}
		var warned []string
		src, closeSrc, err = agentsSource(ctx, c.cs, "", tr, func(s string) { warned = append(warned, s) })
		if err != nil {
			t.Fatalf("one agent of two unreachable: %v", err)
		}
		got = nodesOf(t, src)
		closeSrc()
		if want := "node-a node-a"; strings.Join(got, " ") != want {
			t.Errorf("with zt-agent-b unreachable: nodes %v, want %s", got, want)
		}
		wantAll(t, "partial", strings.Join(warned, "\n"), "warning: records of 1 of 2 zt-agents are left out", "zt-agent-b")
		wantNone(t, "partial", strings.Join(warned, "\n"), "zt-agent-a")
		if tr.live != 0 {
			t.Errorf("%d agents left open", tr.live)
		}
	})

	t.Run("version skew", func(t *testing.T) {
		_, sockA := agentAPI(t, flows.Version{API: flows.APIVersion, Agent: "test"})
		_, sockB := agentAPI(t, flows.Version{API: flows.APIVersion + 1, Agent: "v9.9.9"})
		// The skewed agent is left out, named, with what to do.
		tr := &socketTransport{sockets: map[string]string{"zt-agent-a": sockA, "zt-agent-b": sockB}}
		var warned []string
		_, closeSrc, err := agentsSource(context.Background(), c.cs, "", tr, func(s string) { warned = append(warned, s) })
		if err != nil {
			t.Fatalf("one skewed agent of two: %v", err)
		}
		closeSrc()
		msg := strings.Join(warned, "\n")
		wantAll(t, "skew", msg, "left out", "zt-agent zt-system/zt-agent-b on node node-b: version skew", "v9.9.9",
			"use a ztctl matching the agent")
		wantNone(t, "skew", msg, "zt-agent-a")
		// Only the skewed one: an error.
		tr = &socketTransport{sockets: map[string]string{"zt-agent-b": sockB}}
		_, _, err = agentsSource(context.Background(), c.cs, "node-b", tr, noWarning(t))
		if err == nil {
			t.Fatal("an agent of another API version was used")
		}
		wantAll(t, "skew", err.Error(), "zt-agent zt-system/zt-agent-b on node node-b: version skew", "v9.9.9")
		if tr.live != 0 {
			t.Errorf("%d agents left open after the error", tr.live)
		}
	})
}

// twoAgents serves two agent APIs, node-a's and node-b's, with n records
// each, alternating in time from an hour ago: a, b, a, b, ... It returns
// node-a's store (to add to) and both sockets.
func twoAgents(t *testing.T, n int) (stA *flows.Store, sockA, sockB string) {
	t.Helper()
	stA, sockA = agentAPI(t, flows.Version{API: flows.APIVersion, Agent: "test"})
	stB, sockB := agentAPI(t, flows.Version{API: flows.APIVersion, Agent: "test"})
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := range n {
		ra := flowRec(t0.Add(time.Duration(2*i)*time.Minute), fWeb, fDB, "drop", "policy-denied")
		ra.Node = "node-a"
		stA.Append(ra)
		rb := flowRec(t0.Add(time.Duration(2*i+1)*time.Minute), fAPI, fDB, "drop", "policy-denied")
		rb.Node = "node-b"
		stB.Append(rb)
	}
	return stA, sockA, sockB
}

// nodesOf queries every record of src and returns their nodes in order.
func nodesOf(t *testing.T, src flowSource) []string {
	t.Helper()
	var got []string
	if err := src.Query(context.Background(), flows.Filter{AllNamespaces: true}, func(r *flows.Record) error {
		got = append(got, r.Node)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// noWarning fails the test on a warning.
func noWarning(t *testing.T) func(string) {
	return func(s string) { t.Errorf("unexpected warning: %s", s) }
}

// socketTransport reaches fake agents on their unix sockets, by pod name,
// and records which pods were opened.
type socketTransport struct {
	sockets map[string]string
	mu      sync.Mutex
	pods    []string
	live    int
}

func (s *socketTransport) open(_ context.Context, pod *corev1.Pod) (*flows.Client, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = append(s.pods, pod.Namespace+"/"+pod.Name)
	sock, ok := s.sockets[pod.Name]
	if !ok {
		return nil, nil, fmt.Errorf("no socket for %s", pod.Name)
	}
	s.live++
	var once sync.Once
	return flows.NewSocketClient(sock), func() {
		once.Do(func() { s.mu.Lock(); s.live--; s.mu.Unlock() })
	}, nil
}

func (s *socketTransport) tried() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(slices.Values(s.pods))
}

// fakeKubelet answers the API server's port-forward requests as a kubelet
// does (portforward.k8s.io over SPDY): each data stream is connected to
// the flows API socket of the pod it names.
type fakeKubelet struct {
	srv     *httptest.Server
	mu      sync.Mutex
	sockets map[string]string // pod name -> the agent's socket
	pods    []string          // forwarded, "namespace/name"
}

func startFakeKubelet(t *testing.T, sockets map[string]string) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{sockets: sockets}
	k.srv = httptest.NewTLSServer(http.HandlerFunc(k.serve))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *fakeKubelet) port() int { return k.srv.Listener.Addr().(*net.TCPAddr).Port }

func (k *fakeKubelet) forwarded() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(slices.Values(k.pods))
}

func (k *fakeKubelet) serve(w http.ResponseWriter, req *http.Request) {
	// /portForward/{namespace}/{pod}
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != "portForward" {
		http.NotFound(w, req)
		return
	}
	k.mu.Lock()
	sock, ok := k.sockets[parts[2]]
	k.pods = append(k.pods, parts[1]+"/"+parts[2])
	k.mu.Unlock()
	if !ok {
		http.Error(w, "no such pod", http.StatusNotFound)
		return
	}
	if _, err := httpstream.Handshake(req, w, []string{portforward.PortForwardProtocolV1Name}); err != nil {
		return // Handshake wrote the error
	}
	var mu sync.Mutex
	errStreams := map[string]httpstream.Stream{} // by request ID
	conn := spdy.NewResponseUpgrader().UpgradeResponse(w, req, func(s httpstream.Stream, replySent <-chan struct{}) error {
		id := s.Headers().Get(corev1.PortForwardRequestIDHeader)
		switch s.Headers().Get(corev1.StreamType) {
		case corev1.StreamTypeError:
			mu.Lock()
			errStreams[id] = s
			mu.Unlock()
		case corev1.StreamTypeData:
			go func() {
				<-replySent
				defer func() {
					mu.Lock()
					if e := errStreams[id]; e != nil {
						e.Close()
					}
					delete(errStreams, id)
					mu.Unlock()
				}()
				defer s.Close()
				c, err := net.Dial("unix", sock)
				if err != nil {
					s.Reset()
					return
				}
				defer c.Close()
				go func() {
					io.Copy(c, s)
					c.(*net.UnixConn).CloseWrite()
				}()
				io.Copy(s, c)
			}()
		default:
			return fmt.Errorf("unknown stream type %q", s.Headers().Get(corev1.StreamType))
		}
		return nil
	})
	if conn == nil {
		return
	}
	<-conn.CloseChan()
}

// TestFlowsForwardKubelet is the whole path: ztctl port-forwards through
// the real API server to a fake kubelet on two nodes, which connects each
// stream to that node's in-process agent API; the records come back
// merged by time.
func TestFlowsForwardKubelet(t *testing.T) {
	c := newForwardCluster(t)
	stA, sockA, sockB := twoAgents(t, 3)
	_, sockSkew := agentAPI(t, flows.Version{API: flows.APIVersion + 1, Agent: "v9.9.9"})
	kubelet := startFakeKubelet(t, map[string]string{"zt-agent-a": sockA, "zt-agent-b": sockB, "zt-agent-skew": sockSkew})
	ctx := context.Background()
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		n, err := c.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(kubelet.port())
		if _, err := c.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	flowsJSON := func(t *testing.T, args ...string) []flows.Record {
		t.Helper()
		args = append([]string{"flows", "-A", "-o", "json", "--socket", filepath.Join(t.TempDir(), "none.sock"),
			"--kubeconfig", c.kubeconfig["forwarder"]}, args...)
		start := time.Now()
		out, errOut, code := ztctl(t, args...)
		if code != 0 {
			t.Fatalf("ztctl %v: exit %d: %s", args, code, errOut)
		}
		t.Logf("ztctl %v: %s", args[1:], time.Since(start).Round(time.Millisecond))
		var recs []flows.Record
		if err := json.Unmarshal([]byte(out), &recs); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		return recs
	}
	nodes := func(recs []flows.Record) string {
		var s []string
		for _, r := range recs {
			s = append(s, r.Node)
		}
		return strings.Join(s, " ")
	}

	t.Run("merged", func(t *testing.T) {
		recs := flowsJSON(t)
		if got, want := nodes(recs), "node-a node-b node-a node-b node-a node-b"; got != want {
			t.Errorf("nodes %q, want %q", got, want)
		}
		if want := []string{"zt-system/zt-agent-a", "zt-system/zt-agent-b"}; !slices.Equal(kubelet.forwarded(), want) {
			t.Errorf("forwarded to %v, want %v", kubelet.forwarded(), want)
		}
		if got, want := nodes(flowsJSON(t, "--last", "3")), "node-b node-a node-b"; got != want {
			t.Errorf("--last 3: nodes %q, want %q", got, want)
		}
	})

	t.Run("one node", func(t *testing.T) {
		if got, want := nodes(flowsJSON(t, "--node", "node-b")), "node-b node-b node-b"; got != want {
			t.Errorf("--node node-b: nodes %q, want %q", got, want)
		}
	})

	t.Run("follow", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errOut syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, []string{"flows", "-A", "-f", "-o", "jsonl", "--last", "1", "--socket", filepath.Join(t.TempDir(), "none.sock"),
				"--kubeconfig", c.kubeconfig["forwarder"]}, &out, &errOut)
		}()
		waitFor := func(s string) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(out.String(), s) {
				if time.Now().After(deadline) {
					t.Fatalf("output never showed %q:\n%s\nstderr: %s", s, out.String(), errOut.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		waitFor(`"node":"node-b"`) // the backlog: the last record overall
		late := flowRec(time.Now(), fAPI, fWeb, "drop", "deny-rule")
		late.Node, late.Dst.Port = "node-a", 8443
		stA.Append(late)
		waitFor("8443")
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("follow ended with %d: %s", code, errOut.String())
		}
		if n := strings.Count(out.String(), "\n"); n != 2 {
			t.Errorf("followed %d records, want 2:\n%s", n, out.String())
		}
	})

	t.Run("version skew", func(t *testing.T) {
		c.createPod(t, agentNamespace, "zt-agent-skew", "node-c", map[string]string{"app.kubernetes.io/name": "zt-agent"}, corev1.PodRunning)
		msg := c.flowsAs(t, "forwarder", "--node", "node-c")
		wantAll(t, "skew", msg, "zt-agent zt-system/zt-agent-skew on node node-c: version skew", "v9.9.9", "use a ztctl matching the agent")
	})

	t.Run("the reader is still refused", func(t *testing.T) {
		before := len(kubelet.forwarded())
		msg := c.flowsAs(t, "reader")
		wantAll(t, "reader", msg, "create on pods/portforward in namespace zt-system")
		if n := len(kubelet.forwarded()); n != before {
			t.Errorf("the kubelet was asked %d times for a user without pods/portforward", n-before)
		}
	})
}

// shippedFlowsReader is deploy/flows-reader.yaml, the Role people are
// bound to for `ztctl flows` through the API server.
func shippedFlowsReader(t *testing.T) *rbacv1.Role {
	t.Helper()
	b, err := deploy.Manifests.ReadFile("flows-reader.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var r rbacv1.Role
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		t.Fatalf("deploy/flows-reader.yaml: %v", err)
	}
	if r.Kind != "Role" || r.Namespace != agentNamespace || len(r.Rules) == 0 {
		t.Fatalf("deploy/flows-reader.yaml: %s %s/%s with %d rules, want a Role in %s", r.Kind, r.Namespace, r.Name, len(r.Rules), agentNamespace)
	}
	return &r
}
