package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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

// newForwardSource port-forwards to the flows API port of every running
// zt-agent pod (or the one on --node) and merges their records.
func newForwardSource(ctx context.Context, o *flowsOptions) (flowSource, func(), error) {
	rc, err := o.clientConfig().ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	lo := metav1.ListOptions{LabelSelector: agentSelector}
	if o.node != "" {
		lo.FieldSelector = "spec.nodeName=" + o.node
	}
	pods, err := cs.CoreV1().Pods(agentNamespace).List(ctx, lo)
	if apierrors.IsForbidden(err) {
		return nil, nil, fmt.Errorf("cannot list zt-agent pods: you need pods/list and pods/portforward in %s (or run ztctl on the node with --socket): %w", agentNamespace, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list zt-agent pods in %s: %w", agentNamespace, err)
	}
	_, port, err := splitPort(flows.DefaultAddr)
	if err != nil {
		return nil, nil, err
	}
	var (
		srcs    []flowSource
		closers []func()
	)
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		local, stop, err := forward(ctx, rc, p, port)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers = append(closers, stop)
		c := flows.NewHTTPClient("127.0.0.1:" + strconv.Itoa(int(local)))
		c.Via = "port-forward to " + p.Namespace + "/" + p.Name + " on " + p.Spec.NodeName
		if err := checkAgent(ctx, c); err != nil {
			closeAll()
			return nil, nil, err
		}
		srcs = append(srcs, c)
	}
	if len(srcs) == 0 {
		where := ""
		if o.node != "" {
			where = " on node " + o.node
		}
		return nil, nil, fmt.Errorf("%w: no running zt-agent pod (%s) in %s%s", flows.ErrUnreachable, agentSelector, agentNamespace, where)
	}
	return mergeSource(srcs), closeAll, nil
}

func splitPort(addr string) (string, uint16, error) {
	i := strings.LastIndexByte(addr, ':')
	p, err := strconv.ParseUint(addr[i+1:], 10, 16)
	if i < 0 || err != nil {
		return "", 0, fmt.Errorf("address %q: no port", addr)
	}
	return addr[:i], uint16(p), nil
}

// forward opens a port-forward to pod's port and returns the local port.
func forward(ctx context.Context, rc *rest.Config, pod *corev1.Pod, port uint16) (uint16, func(), error) {
	tr, upgrader, err := spdy.RoundTripperFor(rc)
	if err != nil {
		return 0, nil, fmt.Errorf("port-forward transport: %w", err)
	}
	host, err := url.Parse(rc.Host)
	if err != nil {
		return 0, nil, fmt.Errorf("API server %q: %w", rc.Host, err)
	}
	u := host.JoinPath(rc.APIPath, "api/v1/namespaces", pod.Namespace, "pods", pod.Name, "portforward")
	if rc.APIPath == "" {
		u = host.JoinPath("api/v1/namespaces", pod.Namespace, "pods", pod.Name, "portforward")
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: tr}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return 0, nil, fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
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
		return 0, nil, fmt.Errorf("port-forward to %s/%s: no local port: %v", pod.Namespace, pod.Name, err)
	}
	return ports[0].Local, stopFn, nil
}

func forwardError(pod *corev1.Pod, err error) error {
	if err == nil {
		err = errors.New("ended before it was ready")
	}
	msg := strings.ToLower(err.Error())
	if apierrors.IsForbidden(err) || strings.Contains(msg, "forbidden") || strings.Contains(msg, "403") {
		return fmt.Errorf("port-forward to %s/%s refused: you need pods/portforward in %s (or run ztctl on the node with --socket): %w",
			pod.Namespace, pod.Name, agentNamespace, err)
	}
	return fmt.Errorf("port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
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
