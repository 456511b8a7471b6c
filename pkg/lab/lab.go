// Package lab is the whole zt system on one machine: a real etcd and
// kube-apiserver, deploy/ applied, one network namespace per node running
// its own zt-agent with its ServiceAccount token, one network namespace
// per pod behind a host veth in its node (the routed-CNI model), a server
// in every pod on each declared TCP, UDP and SCTP port, and probes with
// real packets between every pair of pods, reported in the reachability
// JSON of DESIGN.md (pkg/reach), so they diff against `ztctl reach -o json`.
//
// Everything it creates is recorded in a state folder (default
// /run/ztlab/state.json) as it is created, and Down removes exactly that:
// processes (by pid and start time), the pinned BPF objects, the one link
// in the root namespace, the namespace bind mounts, the folder.
package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztnet/zt/internal/kubeenv"
	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
	"github.com/ztnet/zt/pkg/reach"
)

// Config says how to build a lab.
type Config struct {
	// Dir is the state folder (default DefaultDir).
	Dir string
	// Name prefixes the agents' bpffs roots: /sys/fs/bpf/<Name>-<node>
	// (default "ztlab").
	Name string
	// Nodes is the number of nodes (default 1); node names a bundle's pods
	// carry in spec.nodeName are added.
	Nodes int
	// BinDir holds etcd, kube-apiserver and kubectl (default: $ZT_K8S_BIN,
	// the folder of this executable if it has them, <repo>/_out/bin).
	BinDir string
	// AgentBin is zt-agent (default: next to this executable, then
	// <repo>/_out/bin, then $PATH, else built with `go build`).
	AgentBin string
	// Self is the ztlab binary, run as `ztlab serve` in every pod
	// (default: this executable).
	Self string
	// Detach lets the lab outlive this process (`ztlab up`): no death
	// signal for the processes it starts.
	Detach bool
	// AgentArgs are extra zt-agent flags.
	AgentArgs []string
	// Log receives progress lines (default: discarded).
	Log io.Writer
	// ReadyTimeout bounds the wait for the agents (default 90 s).
	ReadyTimeout time.Duration
}

func (c *Config) defaults() {
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.Name == "" {
		c.Name = "ztlab"
	}
	if c.Nodes <= 0 {
		c.Nodes = 1
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 90 * time.Second
	}
	if c.Self == "" {
		c.Self, _ = os.Executable()
	}
}

// Lab is a running lab.
type Lab struct {
	cfg   Config
	st    *State
	kube  *kubeenv.Server // set in the process that started it
	admin kubernetes.Interface

	mu       sync.Mutex
	children []*exec.Cmd
}

// State returns the lab's recorded state.
func (l *Lab) State() *State { return l.st }

func (l *Lab) logf(format string, args ...any) {
	fmt.Fprintf(l.cfg.Log, "ztlab: "+format+"\n", args...)
}

// CheckRoot refuses to run without root, saying why root is needed.
func CheckRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("ztlab must run as root: it creates network namespaces, veth links, " +
			"bind mounts and BPF programs (run it with sudo)")
	}
	return nil
}

// RootLinkName is the root-namespace link of the lab kept in dir. It is
// derived from the folder, so whoever holds the folder knows which link is
// its lab's while other labs (other tests, other processes) run beside it.
func RootLinkName(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	sum := sha256.Sum256([]byte(dir))
	return "ztl-" + hex.EncodeToString(sum[:5])
}

// Up builds a lab and applies b (nil: an empty lab). Leftovers of an
// earlier lab recorded in cfg.Dir are removed first. On error everything
// created is removed again.
func Up(ctx context.Context, cfg Config, b *bundle.Bundle) (l *Lab, err error) {
	if err := CheckRoot(); err != nil {
		return nil, err
	}
	cfg.defaults()
	if _, serr := os.Stat(filepath.Join(cfg.Dir, StateFile)); serr == nil {
		fmt.Fprintf(cfg.Log, "ztlab: removing the leftovers of an earlier lab in %s\n", cfg.Dir)
		if err := Down(cfg.Dir, cfg.Log); err != nil {
			return nil, fmt.Errorf("remove the earlier lab: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	l = &Lab{cfg: cfg, st: &State{Name: cfg.Name, Dir: cfg.Dir, Created: time.Now()}}
	if err := l.st.save(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.logf("setting up failed: %v; removing what was created", err)
			l.dumpAgentLogs()
			if derr := l.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup: %w", derr))
			}
			l = nil
		}
	}()
	start := time.Now()

	// The fabric and the root link first: the apiserver binds the root
	// end's address.
	fabric, err := pickFabric()
	if err != nil {
		return l, err
	}
	rootIP := fabricAddr(fabric, 1)
	fabricNS := filepath.Join(cfg.Dir, "netns", "fabric")
	rootLink := RootLinkName(cfg.Dir)
	if err := l.st.record(func(s *State) {
		s.Fabric, s.FabricNS, s.RootLink = fabric.String(), fabricNS, rootLink
		s.Mounts = append(s.Mounts, fabricNS)
	}); err != nil {
		return l, err
	}
	if err := createNetns(fabricNS); err != nil {
		return l, err
	}
	if err := setupFabric(fabricNS, rootLink, rootIP); err != nil {
		return l, err
	}

	// kube-apiserver and etcd start while the nodes and pods are built.
	type kubeResult struct {
		s   *kubeenv.Server
		err error
	}
	kubec := make(chan kubeResult, 1)
	go func() {
		s, err := l.startKube(rootIP)
		kubec <- kubeResult{s, err}
	}()
	kubeDone := false
	waitKube := func() error {
		if kubeDone {
			return nil
		}
		kubeDone = true
		r := <-kubec
		if r.err != nil {
			return r.err
		}
		l.kube = r.s
		return nil
	}
	defer func() {
		if !kubeDone {
			if r := <-kubec; r.s != nil {
				l.kube = r.s
			}
		}
	}()

	if err := l.addNodes(b); err != nil {
		return l, err
	}
	agentBin, err := l.findAgent(ctx)
	if err != nil {
		return l, err
	}
	if err := waitKube(); err != nil {
		return l, err
	}
	l.logf("kube-apiserver %s ready (%s)", l.st.APIServer, time.Since(start).Round(time.Millisecond))
	if err := l.setupCluster(ctx); err != nil {
		return l, err
	}
	if b != nil {
		if err := l.apply(ctx, b); err != nil {
			return l, err
		}
	}
	// Agents start last: when each is ready (its first full sync realized),
	// everything above is enforced.
	if err := l.startAgents(agentBin); err != nil {
		return l, err
	}
	if err := l.waitAgents(ctx); err != nil {
		return l, err
	}
	l.logf("lab up in %s: %d node(s), %d pod(s)", time.Since(start).Round(time.Millisecond), len(l.st.Nodes), len(l.st.Pods))
	return l, nil
}

// startKube starts etcd and kube-apiserver listening on rootIP.
func (l *Lab) startKube(rootIP netip.Addr) (*kubeenv.Server, error) {
	binDir, err := l.binDir()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(l.cfg.Dir, "kube")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s, err := kubeenv.Start(kubeenv.Options{
		Dir: dir, BinDir: binDir, BindAddress: rootIP.AsSlice(), Detach: l.cfg.Detach,
		Logf: func(f string, a ...any) { l.logf(f, a...) },
	})
	if err != nil {
		return nil, err
	}
	etcd, api := s.Pids()
	err = l.st.record(func(st *State) {
		st.APIServer = s.URL()
		st.AdminKubeconfig = s.Kubeconfig()
		st.Kubectl = s.KubectlPath()
		st.Procs = append(st.Procs, newProc("etcd", "etcd", etcd, ""), newProc("kube-apiserver", "kube-apiserver", api, ""))
	})
	return s, err
}

// binDir finds the pinned Kubernetes binaries, building them with
// hack/k8s-bins.sh when they are missing and the repository is at hand.
func (l *Lab) binDir() (string, error) {
	if l.cfg.BinDir != "" {
		return l.cfg.BinDir, kubeenv.CheckBinaries(l.cfg.BinDir)
	}
	if os.Getenv(kubeenv.EnvBinDir) == "" && l.cfg.Self != "" {
		if d := filepath.Dir(l.cfg.Self); kubeenv.CheckBinaries(d) == nil {
			return d, nil
		}
	}
	d, err := kubeenv.BinDir()
	if err != nil {
		return "", err
	}
	if err := kubeenv.CheckBinaries(d); err != nil {
		root, rerr := kubeenv.RepoRoot()
		if rerr != nil || os.Getenv(kubeenv.EnvBinDir) != "" {
			return "", err
		}
		l.logf("building the pinned etcd, kube-apiserver and kubectl with hack/k8s-bins.sh (about 12 minutes the first time)")
		cmd := exec.Command(filepath.Join(root, "hack", "k8s-bins.sh"))
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = l.cfg.Log, l.cfg.Log
		if rerr := cmd.Run(); rerr != nil {
			return "", fmt.Errorf("hack/k8s-bins.sh: %w", rerr)
		}
		return d, kubeenv.CheckBinaries(d)
	}
	return d, nil
}

// findAgent locates zt-agent, or builds it from the repository.
func (l *Lab) findAgent(ctx context.Context) (string, error) {
	if l.cfg.AgentBin != "" {
		return l.cfg.AgentBin, nil
	}
	var cands []string
	if l.cfg.Self != "" {
		cands = append(cands, filepath.Join(filepath.Dir(l.cfg.Self), "zt-agent"))
	}
	root, rerr := kubeenv.RepoRoot()
	if rerr == nil {
		cands = append(cands, filepath.Join(root, "_out", "bin", "zt-agent"))
	}
	if p, err := exec.LookPath("zt-agent"); err == nil {
		cands = append(cands, p)
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	if rerr != nil {
		return "", errors.New("zt-agent not found next to ztlab, in _out/bin or $PATH (make build, or --agent-bin)")
	}
	out := filepath.Join(l.cfg.Dir, "bin", "zt-agent")
	l.logf("building zt-agent into %s", out)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/zt-agent")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/zt-agent: %v: %s", err, b)
	}
	return out, nil
}

// addNodes makes node1..nodeN plus every node a pod of b names.
func (l *Lab) addNodes(b *bundle.Bundle) error {
	var names []string
	for i := 1; i <= l.cfg.Nodes; i++ {
		names = append(names, fmt.Sprintf("node%d", i))
	}
	if b != nil {
		for _, p := range b.Pods {
			if n := p.Spec.NodeName; n != "" && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	fabric := netip.MustParsePrefix(l.st.Fabric)
	for i, name := range names {
		idx := i + 1
		if idx > 200 {
			return errors.New("too many nodes")
		}
		ip := nodeFabricIP(fabric, idx)
		n := Node{
			Name: name, Index: idx,
			Netns:       filepath.Join(l.cfg.Dir, "netns", "nodes", name),
			PodNetns:    filepath.Join(l.cfg.Dir, "netns", "pods", name),
			IP:          ip.String(),
			HealthAddr:  netip.AddrPortFrom(ip, uint16(9870+idx)).String(),
			BPFFS:       fmt.Sprintf("/sys/fs/bpf/%s-%s", l.cfg.Name, name),
			AgentLog:    filepath.Join(l.cfg.Dir, "logs", "agent-"+name+".log"),
			FlowsSocket: filepath.Join(l.cfg.Dir, "flows-"+name+".sock"),
		}
		if err := l.st.record(func(s *State) { s.Mounts = append(s.Mounts, n.Netns) }); err != nil {
			return err
		}
		if err := createNetns(n.Netns); err != nil {
			return err
		}
		if err := os.MkdirAll(n.PodNetns, 0o755); err != nil {
			return err
		}
		if err := setupNode(l.st.FabricNS, &n, fabric); err != nil {
			return err
		}
		if err := l.st.record(func(s *State) { s.Nodes = append(s.Nodes, n) }); err != nil {
			return err
		}
	}
	return linkNodes(l.st.Nodes)
}

// setupCluster applies deploy/ and writes the agent's kubeconfig with its
// ServiceAccount token (TokenRequest), as a kubelet would project it.
func (l *Lab) setupCluster(ctx context.Context) error {
	out, err := applyDeploy(ctx, l.st.Kubectl, l.st.AdminKubeconfig, filepath.Join(l.cfg.Dir, "deploy"))
	if err != nil {
		return err
	}
	l.logf("kubectl apply -k deploy/: %s", strings.Join(strings.Fields(strings.ReplaceAll(out, "\n", "; ")), " "))
	if l.admin, err = clientFromKubeconfig(l.st.AdminKubeconfig); err != nil {
		return err
	}
	tok, err := l.kube.TokenFor(ctx, agentNamespace, agentServiceAccount, agentTokenTTL)
	if err != nil {
		return err
	}
	path := filepath.Join(l.cfg.Dir, "agent.kubeconfig")
	if err := kubeenv.WriteKubeconfig(path, l.st.APIServer, l.kube.CACert(), agentServiceAccount, tok); err != nil {
		return err
	}
	return l.st.record(func(s *State) { s.AgentKubeconfig = path })
}

// Apply adds a bundle to a running lab: namespaces, pods (each with its
// namespace, wiring and server, before the API object), policies. It then
// waits until every agent has realized what the API server holds (see
// waitAgents); a bundle that changes nothing returns at once.
func (l *Lab) Apply(ctx context.Context, b *bundle.Bundle) error {
	if err := l.apply(ctx, b); err != nil {
		return err
	}
	return l.waitAgents(ctx)
}

// Sync makes the objects of the lab's API server match b, as if b were
// the whole cluster: what Apply does, plus deleting the NetworkPolicies,
// pods and namespaces b lacks (never the API server's own namespaces nor
// zt-system; a namespace some pod or policy of b names stays). Labels are
// replaced by b's. A deleted pod keeps its network namespace, wiring and
// server in the lab (unenforced, and no longer probed): a later Sync or
// Apply that brings it back, at the same addresses, recreates only its API
// object. It then waits until every agent has realized the result (see
// waitAgents).
func (l *Lab) Sync(ctx context.Context, b *bundle.Bundle) error {
	if err := l.ensureAdmin(); err != nil {
		return err
	}
	wantNS := map[string]bool{}
	wantPod := map[string]bool{}
	wantPol := map[string]bool{}
	for _, ns := range b.Namespaces {
		wantNS[ns.Name] = true
	}
	for _, p := range b.Pods {
		wantNS[p.Namespace] = true
		wantPod[p.Namespace+"/"+p.Name] = true
	}
	for _, np := range b.Policies {
		wantNS[np.Namespace] = true
		wantPol[np.Namespace+"/"+np.Name] = true
	}
	// Deletions first: a namespace b lacks takes its pods and policies.
	nss, err := l.admin.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, ns := range nss.Items {
		if !wantNS[ns.Name] && !systemNamespaces[ns.Name] {
			if err := deleteNamespace(ctx, l.admin, ns.Name); err != nil {
				return err
			}
		}
	}
	nps, err := l.admin.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, np := range nps.Items {
		if !wantPol[np.Namespace+"/"+np.Name] {
			if err := deletePolicy(ctx, l.admin, np.Namespace, np.Name); err != nil {
				return err
			}
		}
	}
	pods, err := l.admin.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if !wantPod[p.Namespace+"/"+p.Name] && !systemNamespaces[p.Namespace] {
			if err := deletePod(ctx, l.admin, p.Namespace, p.Name); err != nil {
				return err
			}
		}
	}
	// Namespaces a pod or policy names but b lacks exist, with no labels.
	full := *b
	full.Namespaces = slices.Clone(b.Namespaces)
	have := map[string]bool{}
	for _, ns := range b.Namespaces {
		have[ns.Name] = true
	}
	for name := range wantNS {
		if !have[name] && !systemNamespaces[name] {
			full.Namespaces = append(full.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
		}
	}
	if err := l.apply(ctx, &full); err != nil {
		return err
	}
	return l.waitAgents(ctx)
}

func (l *Lab) apply(ctx context.Context, b *bundle.Bundle) error {
	if err := l.ensureAdmin(); err != nil {
		return err
	}
	for _, ns := range b.Namespaces {
		if err := applyNamespace(ctx, l.admin, ns); err != nil {
			return err
		}
	}
	// Pods in a stable order, so round-robin placement is repeatable.
	pods := slices.Clone(b.Pods)
	slices.SortStableFunc(pods, func(a, b *corev1.Pod) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	var newPods []Pod
	nodeOf := map[string]Node{}
	for _, p := range pods {
		key := p.Namespace + "/" + p.Name
		node, existing, err := l.placePod(p)
		if err != nil {
			return err
		}
		nodeOf[key] = node
		if existing {
			if err := l.sameAddresses(p); err != nil {
				return err
			}
			continue
		}
		if p.Spec.HostNetwork {
			continue
		}
		lp, err := l.addPod(p, node)
		if err != nil {
			return err
		}
		newPods = append(newPods, lp)
	}
	if err := l.startServers(newPods); err != nil {
		return err
	}
	nodes := map[string]Node{}
	for _, n := range l.st.Nodes {
		nodes[n.Name] = n
	}
	if err := waitLinksUp(newPods, nodes, 10*time.Second); err != nil {
		return err
	}
	for _, p := range pods {
		n := nodeOf[p.Namespace+"/"+p.Name]
		if err := createPod(ctx, l.admin, p, n.Name, n.IP); err != nil {
			return err
		}
	}
	for _, np := range b.Policies {
		if err := applyPolicy(ctx, l.admin, np); err != nil {
			if isInvalid(err) {
				l.logf("warning: %v (skipped)", err)
				continue
			}
			return err
		}
	}
	return nil
}

// sameAddresses checks that a pod the lab already wired keeps its
// addresses (they are its network namespace's).
func (l *Lab) sameAddresses(p *corev1.Pod) error {
	pp, err := policy.PodFromAPI(p)
	if err != nil {
		return err
	}
	var ips []string
	for _, a := range pp.IPs {
		ips = append(ips, a.String())
	}
	for _, lp := range l.st.Pods {
		if lp.Key() == p.Namespace+"/"+p.Name && !slices.Equal(lp.IPs, ips) {
			return fmt.Errorf("pod %s: addresses %v, but the lab wired it with %v (addresses cannot change)", lp.Key(), ips, lp.IPs)
		}
	}
	return nil
}

// placePod picks the pod's node: its spec.nodeName, else round-robin.
func (l *Lab) placePod(p *corev1.Pod) (Node, bool, error) {
	key := p.Namespace + "/" + p.Name
	for _, lp := range l.st.Pods {
		if lp.Key() == key {
			for _, n := range l.st.Nodes {
				if n.Name == lp.Node {
					return n, true, nil
				}
			}
		}
	}
	if name := p.Spec.NodeName; name != "" {
		for _, n := range l.st.Nodes {
			if n.Name == name {
				return n, false, nil
			}
		}
		return Node{}, false, fmt.Errorf("pod %s: spec.nodeName %q is no node of this lab", key, name)
	}
	// Round-robin over node1..nodeN by the number of pods placed so far.
	count := len(l.st.Pods)
	rr := min(l.cfg.Nodes, len(l.st.Nodes))
	if rr <= 0 {
		rr = len(l.st.Nodes)
	}
	return l.st.Nodes[count%rr], false, nil
}

// addPod creates the pod's namespace and wiring.
func (l *Lab) addPod(p *corev1.Pod, node Node) (Pod, error) {
	key := p.Namespace + "/" + p.Name
	// The compiler's projection of the pod: its addresses and declared
	// ports are exactly what reach.Compute evaluates.
	pp, err := policy.PodFromAPI(p)
	if err != nil {
		return Pod{}, err
	}
	if len(pp.IPs) == 0 {
		return Pod{}, fmt.Errorf("pod %s has no IP (status.podIPs is empty): a bundle needs every pod's address", key)
	}
	lp := Pod{Namespace: p.Namespace, Name: p.Name, Node: node.Name,
		Netns:  filepath.Join(node.PodNetns, p.Namespace+"_"+p.Name),
		HostIf: fmt.Sprintf("zp%d", len(l.st.Pods)+1)}
	for _, a := range pp.IPs {
		for _, other := range l.st.Pods {
			if slices.Contains(other.IPs, a.String()) {
				return lp, fmt.Errorf("pod %s: address %s is also pod %s's", key, a, other.Key())
			}
		}
		lp.IPs = append(lp.IPs, a.String())
	}
	seen := map[PortProto]bool{}
	for _, cp := range pp.Ports {
		pp := PortProto{Port: cp.Port, Protocol: cp.Protocol.String()}
		if !seen[pp] {
			seen[pp] = true
			lp.Ports = append(lp.Ports, pp)
		}
	}
	if err := l.st.record(func(s *State) { s.Mounts = append(s.Mounts, lp.Netns) }); err != nil {
		return lp, err
	}
	if err := createNetns(lp.Netns); err != nil {
		return lp, err
	}
	if err := l.st.record(func(s *State) { s.Pods = append(s.Pods, lp) }); err != nil {
		return lp, err
	}
	if err := setupPod(&lp, node, l.st.Nodes); err != nil {
		return lp, err
	}
	return lp, nil
}

// startServers starts `ztlab serve` in each pod and waits until every one
// is bound.
func (l *Lab) startServers(pods []Pod) error {
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { errs[i] = l.startServer(p) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *Lab) startServer(p Pod) error {
	spec := ServeSpec{IPs: p.Addrs()}
	for _, pp := range p.Ports {
		switch pp.Protocol {
		case "TCP":
			spec.TCP = append(spec.TCP, pp.Port)
		case "UDP":
			spec.UDP = append(spec.UDP, pp.Port)
		case "SCTP":
			spec.SCTP = append(spec.SCTP, pp.Port)
		}
	}
	logPath := filepath.Join(l.cfg.Dir, "logs", "server-"+p.Namespace+"_"+p.Name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(l.cfg.Self, append([]string{"serve"}, spec.Args()...)...)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.SysProcAttr = l.sysProcAttr()
	if err := startInNetns(p.Netns, cmd); err != nil {
		return fmt.Errorf("pod %s: start server: %w", p.Key(), err)
	}
	l.adopt(cmd)
	if err := l.st.record(func(s *State) {
		s.Procs = append(s.Procs, newProc("server", p.Key(), cmd.Process.Pid, logPath))
	}); err != nil {
		return err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "ready" {
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("pod %s: server did not start: %s", p.Key(), strings.TrimSpace(string(b)))
		}
	case <-time.After(15 * time.Second):
		return fmt.Errorf("pod %s: server not ready after 15 s", p.Key())
	}
	return nil
}

func (l *Lab) sysProcAttr() *syscall.SysProcAttr {
	if l.cfg.Detach {
		return &syscall.SysProcAttr{Setsid: true}
	}
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// adopt reaps a child of this process when it exits.
func (l *Lab) adopt(cmd *exec.Cmd) {
	l.mu.Lock()
	l.children = append(l.children, cmd)
	l.mu.Unlock()
	go func() { _ = cmd.Wait() }()
}

// startAgents runs zt-agent in each node's namespace with the agent
// kubeconfig (its ServiceAccount token), its bpffs root and health port.
func (l *Lab) startAgents(agentBin string) error {
	for _, n := range l.st.Nodes {
		if err := l.startAgent(agentBin, n); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startAgent(agentBin string, n Node) error {
	if err := l.st.record(func(s *State) { s.BPFFS = append(s.BPFFS, n.BPFFS) }); err != nil {
		return err
	}
	logf, err := os.OpenFile(n.AgentLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{
		"--node-name", n.Name,
		"--kubeconfig", l.st.AgentKubeconfig,
		"--bpffs-root", n.BPFFS,
		"--health-addr", n.HealthAddr,
		"--netns-dirs", n.PodNetns,
		"--log-format", "console",
		"--min-sync-interval", "50ms",
	}
	// Every agent shares this machine's mount namespace: give each its own
	// flows socket and journal (agents that have them).
	if agentHasFlag(agentBin, "flows-socket") {
		args = append(args, "--flows-socket", n.FlowsSocket)
	}
	if agentHasFlag(agentBin, "flows-dir") {
		args = append(args, "--flows-dir", filepath.Join(l.cfg.Dir, "flows", n.Name))
	}
	args = append(args, l.cfg.AgentArgs...)
	cmd := exec.Command(agentBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.SysProcAttr = l.sysProcAttr()
	if err := startInNetns(n.Netns, cmd); err != nil {
		return fmt.Errorf("node %s: start zt-agent: %w", n.Name, err)
	}
	l.adopt(cmd)
	return l.st.record(func(s *State) {
		s.Procs = append(s.Procs, newProc("agent", n.Name, cmd.Process.Pid, n.AgentLog))
	})
}

var agentFlags struct {
	sync.Once
	help string
}

// agentHasFlag reports whether zt-agent knows --name (its -h output).
func agentHasFlag(bin, name string) bool {
	agentFlags.Do(func() {
		out, _ := exec.Command(bin, "-h").CombinedOutput()
		agentFlags.help = string(out)
	})
	return strings.Contains(agentFlags.help, "-"+name+" ")
}

// ---- readiness ----

// metrics scrapes an agent's /metrics into name{labels} -> value.
func scrape(hc *http.Client, addr string) (map[string]float64, error) {
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

func (l *Lab) proc(role, name string) (Proc, bool) {
	for _, p := range l.st.Procs {
		if p.Role == role && p.Name == name {
			return p, true
		}
	}
	return Proc{}, false
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (l *Lab) dumpAgentLogs() {
	for _, n := range l.st.Nodes {
		if t := tail(n.AgentLog, 15); t != "" {
			l.logf("last lines of the agent log of %s:\n%s", n.Name, t)
		}
	}
}

// ---- use ----

// Open attaches to the running lab recorded in dir.
func Open(dir string, log io.Writer) (*Lab, error) {
	if err := CheckRoot(); err != nil {
		return nil, err
	}
	st, err := LoadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab in %s (ztlab up first)", dir)
	}
	if err != nil {
		return nil, err
	}
	cfg := Config{Dir: dir, Name: st.Name, Log: log, Nodes: len(st.Nodes)}
	cfg.defaults()
	return &Lab{cfg: cfg, st: st}, nil
}

// Probe probes every ordered pair of the lab's pods on every port the
// destination declares.
func (l *Lab) Probe(ctx context.Context, o ProbeOptions) (reach.Report, error) {
	if o.Warn == nil {
		o.Warn = func(f string, a ...any) { l.logf("warning: "+f, a...) }
	}
	pods, err := l.livePods(ctx)
	if err != nil {
		return reach.Report{}, err
	}
	start := time.Now()
	r, err := Probe(ctx, pods, o)
	if err == nil {
		l.logf("probed in %s: %s", time.Since(start).Round(time.Millisecond), countAllowed(r))
	}
	return r, err
}

// livePods are the lab's pods the API server holds (a pod deleted
// through the API keeps its namespace in the lab but is no pod of the
// cluster any more).
func (l *Lab) livePods(ctx context.Context) ([]Pod, error) {
	if err := l.ensureAdmin(); err != nil {
		return nil, err
	}
	list, err := l.admin.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	live := map[string]bool{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			live[p.Namespace+"/"+p.Name] = true
		}
	}
	var out []Pod
	for _, p := range l.st.Pods {
		if live[p.Key()] {
			out = append(out, p)
		}
	}
	return out, nil
}

// Down removes the lab.
func (l *Lab) Down() error { return down(l.st, l.cfg.Log) }

// Down removes the lab recorded in dir: processes, BPF pins, the root
// link, namespaces and the folder. A folder without state is left alone.
func Down(dir string, log io.Writer) error {
	st, err := LoadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return down(st, log)
}

func down(st *State, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	var errs []error
	// Agents first (they would re-attach), then servers, then the API.
	for _, role := range []string{"agent", "server", "kube-apiserver", "etcd"} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range st.Procs {
			if p.Role != role {
				continue
			}
			wg.Go(func() {
				if err := p.stop(15 * time.Second); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	nodeNS := map[string]string{}
	for _, n := range st.Nodes {
		nodeNS[n.BPFFS] = n.Netns
	}
	for _, root := range st.BPFFS {
		if err := removePins(root, nodeNS[root]); err != nil {
			errs = append(errs, err)
		}
	}
	if st.RootLink != "" {
		if err := deleteRootLink(st.RootLink); err != nil {
			errs = append(errs, err)
		}
	}
	// Pods, then nodes, then the fabric: the reverse of creation.
	for i := len(st.Mounts) - 1; i >= 0; i-- {
		if err := removeNetns(st.Mounts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(log, "ztlab: cleanup incomplete, state kept in %s: %v\n", st.Dir, err)
		return err
	}
	if err := os.RemoveAll(st.Dir); err != nil {
		return err
	}
	return nil
}

func deleteRootLink(name string) error {
	l, err := netLinkByName(name)
	if err != nil {
		return nil // already gone
	}
	return netLinkDel(l)
}

// Addresses is what `ztlab up` prints: how to reach the lab.
func (l *Lab) Addresses(w io.Writer) {
	st := l.st
	fmt.Fprintf(w, "lab:        %s (state %s)\n", st.Name, filepath.Join(st.Dir, StateFile))
	fmt.Fprintf(w, "apiserver:  %s\n", st.APIServer)
	fmt.Fprintf(w, "kubeconfig: %s\n", st.AdminKubeconfig)
	fmt.Fprintf(w, "kubectl:    %s --kubeconfig %s get ns,pods,netpol -A\n", st.Kubectl, st.AdminKubeconfig)
	fmt.Fprintf(w, "ztctl:      %s --kubeconfig %s get ns,pods,netpol -A -o yaml | ztctl reach -f -\n", st.Kubectl, st.AdminKubeconfig)
	fmt.Fprintf(w, "env:        eval \"$(ztlab --dir %s env)\"   # then kubectl ... and ztctl flows -A talk to this lab\n", st.Dir)
	for _, n := range st.Nodes {
		fmt.Fprintf(w, "node %-8s agent http://%s (/readyz /realized /metrics), flows %s, netns %s, bpffs %s, log %s\n",
			n.Name, n.HealthAddr, n.FlowsSocket, n.Netns, n.BPFFS, n.AgentLog)
	}
	for _, p := range st.Pods {
		fmt.Fprintf(w, "pod %-24s on %s %s ports %v\n", p.Key(), p.Node, strings.Join(p.IPs, ","), p.Ports)
	}
}

var _ = net.IPv4len
var _ = identity.ProtoTCP
