package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/ztnet/zt/pkg/flows"
)

const (
	agentNamespace = "zt-system"
	agentSelector  = "app.kubernetes.io/name=zt-agent"
)

// newForwardSource reaches every running zt-agent pod (or the one on
// --node) through the API server and merges their records.
func newForwardSource(ctx context.Context, o *flowsOptions) (flowSource, func(), error) {
	rc, err := o.clientConfig().ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	_, port, err := splitPort(flows.DefaultAddr)
	if err != nil {
		return nil, nil, err
	}
	return agentsSource(ctx, cs, o.node, &portForwarder{rc: rc, cs: cs, port: port}, o.warn)
}

// agentTransport reaches the flows API of one agent pod. Through the API
// server it is a port-forward; where no kubelet runs (the lab) it can be
// the agent's local socket. Discovery, the version check and the merge are
// the same for every transport.
type agentTransport interface {
	// open returns a client for pod's agent and a func that closes it.
	// Errors say which pod and what the user can do.
	open(ctx context.Context, pod *corev1.Pod) (*flows.Client, func(), error)
}

// errForbidden is wrapped when RBAC refuses the user; the message says
// which permission is missing.
var errForbidden = errors.New("forbidden")

// agentsSource discovers the running zt-agent pods (of node, if set),
// opens each through tr, checks its API version and merges them. Agents
// that fail are left out with a warning naming each (on a large cluster
// some node is always down); it is an error only when none answers, or
// when RBAC refuses (then it refuses every one).
func agentsSource(ctx context.Context, cs kubernetes.Interface, node string, tr agentTransport, warn func(string)) (flowSource, func(), error) {
	pods, err := discoverAgents(ctx, cs, node)
	if err != nil {
		return nil, nil, err
	}
	clients := make([]*flows.Client, len(pods))
	closers := make([]func(), len(pods))
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			p := &pods[i]
			c, stop, err := tr.open(ctx, p)
			if err != nil {
				errs[i] = err
				return
			}
			clients[i], closers[i] = c, stop
			errs[i] = versionCheck(ctx, c, p)
		})
	}
	wg.Wait()
	closeAll := func() {
		for _, c := range closers {
			if c != nil {
				c()
			}
		}
	}
	// RBAC refuses every pod alike: say it once.
	for _, err := range errs {
		if errors.Is(err, errForbidden) {
			closeAll()
			return nil, nil, err
		}
	}
	var (
		failed []error
		srcs   mergeSource
	)
	for i, err := range errs {
		if err != nil {
			failed = append(failed, err)
			if closers[i] != nil {
				closers[i]()
				closers[i] = nil
			}
			continue
		}
		srcs = append(srcs, clients[i])
	}
	switch {
	case len(srcs) == 0 && len(failed) == 1:
		closeAll()
		return nil, nil, failed[0]
	case len(srcs) == 0:
		closeAll()
		return nil, nil, fmt.Errorf("%d of %d zt-agents failed:\n%w", len(failed), len(pods), errors.Join(failed...))
	case len(failed) > 0:
		warn(fmt.Sprintf("warning: records of %d of %d zt-agents are left out:\n%v", len(failed), len(pods), errors.Join(failed...)))
	}
	return srcs, closeAll, nil
}

// discoverAgents lists the running zt-agent pods by label (and node).
func discoverAgents(ctx context.Context, cs kubernetes.Interface, node string) ([]corev1.Pod, error) {
	lo := metav1.ListOptions{LabelSelector: agentSelector}
	if node != "" {
		lo.FieldSelector = "spec.nodeName=" + node
	}
	list, err := cs.CoreV1().Pods(agentNamespace).List(ctx, lo)
	if apierrors.IsForbidden(err) {
		return nil, fmt.Errorf("%w: cannot list zt-agent pods: you need get and list on pods, and create on pods/portforward, in namespace %s (ask your cluster admin for a Role), or run ztctl on the node (it reads --socket): %v",
			errForbidden, agentNamespace, err)
	}
	if err != nil {
		return nil, fmt.Errorf("list zt-agent pods in %s: %w", agentNamespace, err)
	}
	var running []corev1.Pod
	var other []string
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			running = append(running, p)
			continue
		}
		phase := string(p.Status.Phase)
		if p.DeletionTimestamp != nil {
			phase = "Terminating"
		}
		other = append(other, fmt.Sprintf("%s (%s)", p.Name, phase))
	}
	if len(running) > 0 {
		return running, nil
	}
	where := ""
	if node != "" {
		where = " on node " + node
	}
	msg := fmt.Sprintf("no running zt-agent pod (%s) in namespace %s%s", agentSelector, agentNamespace, where)
	hint := "is zt-agent installed (kubectl apply -k deploy/)?"
	switch {
	case len(other) > 0:
		msg += "; not running: " + strings.Join(other, ", ")
		hint = "why?"
	case node != "":
		hint = "is " + node + " a node's name? " + hint
	}
	return nil, fmt.Errorf("%w: %s: %s see kubectl -n %s get pods -l %s -o wide",
		flows.ErrUnreachable, msg, hint, agentNamespace, agentSelector)
}

// versionCheck asks the agent for its version; a wrong one is refused.
func versionCheck(ctx context.Context, c *flows.Client, pod *corev1.Pod) error {
	v, err := c.Version(ctx)
	if err != nil {
		return fmt.Errorf("%w: zt-agent %s does not answer its flows API through the port-forward: %v: see kubectl -n %s logs %s",
			flows.ErrUnreachable, podOnNode(pod), err, pod.Namespace, pod.Name)
	}
	if err := flows.CheckVersion(v); err != nil {
		return fmt.Errorf("zt-agent %s: %w", podOnNode(pod), err)
	}
	return nil
}

func podOnNode(p *corev1.Pod) string {
	return fmt.Sprintf("%s/%s on node %s", p.Namespace, p.Name, p.Spec.NodeName)
}

func splitPort(addr string) (string, uint16, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("address %q: no port", addr)
	}
	p, err := strconv.ParseUint(addr[i+1:], 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: no port", addr)
	}
	return addr[:i], uint16(p), nil
}

// portForwarder reaches an agent's flows API (on the pod's loopback) by a
// port-forward through the API server and the node's kubelet.
type portForwarder struct {
	rc   *rest.Config
	cs   kubernetes.Interface
	port uint16
}

func (f *portForwarder) open(ctx context.Context, pod *corev1.Pod) (*flows.Client, func(), error) {
	local, stop, err := f.forward(ctx, pod)
	if err != nil {
		return nil, nil, err
	}
	c := flows.NewHTTPClient("127.0.0.1:" + strconv.Itoa(int(local)))
	c.Via = "port-forward to " + podOnNode(pod)
	return c, stop, nil
}

// forward opens a port-forward to pod's port and returns the local port.
func (f *portForwarder) forward(ctx context.Context, pod *corev1.Pod) (uint16, func(), error) {
	tr, upgrader, err := spdy.RoundTripperFor(f.rc)
	if err != nil {
		return 0, nil, fmt.Errorf("port-forward transport: %w", err)
	}
	// As kubectl builds it: the API server's path prefix, if any, kept.
	u := f.cs.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: tr}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", f.port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return 0, nil, fmt.Errorf("port-forward to %s: %w", podOnNode(pod), err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	var once sync.Once
	stopFn := func() { once.Do(func() { close(stop) }) }
	select {
	case <-ready:
	case err := <-errc:
		return 0, nil, forwardError(pod, err)
	case <-ctx.Done():
		stopFn()
		return 0, nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		stopFn()
		return 0, nil, fmt.Errorf("port-forward to %s: no local port: %v", podOnNode(pod), err)
	}
	return ports[0].Local, stopFn, nil
}

// forwardError says what a failed port-forward means for the user. The
// API server decides RBAC before it contacts the kubelet, and its refusal
// comes back as the upgrade's error text.
func forwardError(pod *corev1.Pod, err error) error {
	if err == nil {
		err = errors.New("ended before it was ready")
	}
	msg := err.Error()
	if apierrors.IsForbidden(err) || strings.Contains(msg, `"pods/portforward"`) {
		return fmt.Errorf("%w: port-forward to %s/%s refused: you need create on pods/portforward in namespace %s (ask your cluster admin for a Role), or run ztctl on the node (it reads --socket): %v",
			errForbidden, pod.Namespace, pod.Name, agentNamespace, err)
	}
	return fmt.Errorf("%w: port-forward to %s failed: %v: the API server could not reach the node's kubelet; check the node (kubectl get node %s), pick another node with --node, or run ztctl on the node (it reads --socket)",
		flows.ErrUnreachable, podOnNode(pod), err, pod.Spec.NodeName)
}

// mergeSource queries several agents. Stored records are merged by time
// (with --last, the last N overall); followed ones are passed on as they
// arrive.
type mergeSource []flowSource

func (m mergeSource) Query(ctx context.Context, f flows.Filter, fn func(*flows.Record) error) error {
	if len(m) == 1 {
		return m[0].Query(ctx, f, fn)
	}
	start := time.Now()
	back := f
	back.Follow = false
	lists := make([][]*flows.Record, len(m))
	errs := make([]error, len(m))
	var wg sync.WaitGroup
	for i, s := range m {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Query(ctx, back, func(r *flows.Record) error {
				c := *r
				lists[i] = append(lists[i], &c)
				return nil
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	seen := make([]uint64, len(m)) // highest seq printed, per agent
	var all []*flows.Record
	for i, l := range lists {
		for _, r := range l {
			seen[i] = max(seen[i], r.Seq)
		}
		all = append(all, l...)
	}
	slices.SortStableFunc(all, func(a, b *flows.Record) int { return a.Time.Compare(b.Time) })
	if f.Last > 0 && len(all) > f.Last {
		all = all[len(all)-f.Last:]
	}
	for _, r := range all {
		if err := fn(r); err != nil {
			return err
		}
	}
	if !f.Follow {
		return nil
	}
	// Follow from a little before the backlog was read (agents' clocks
	// may differ from ours); what was printed is skipped by sequence.
	fol := f
	fol.Last = 0
	if since := start.Add(-5 * time.Minute); fol.Since.Before(since) {
		fol.Since = since
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	live := make(chan *flows.Record, 256)
	errc := make(chan error, len(m))
	for i, s := range m {
		go func() {
			errc <- s.Query(ctx, fol, func(r *flows.Record) error {
				if r.Seq <= seen[i] {
					return nil
				}
				seen[i] = r.Seq
				c := *r
				select {
				case live <- &c:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
		}()
	}
	running := len(m)
	for running > 0 {
		select {
		case r := <-live:
			if err := fn(r); err != nil {
				return err
			}
		case err := <-errc:
			running--
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
		}
	}
	return ctx.Err()
}
