// Package k8swatch watches the Kubernetes objects zt compiles: all Pods
// (kept as a compact Pod: what policy reads), Namespaces and
// NetworkPolicies; and the
// cluster's ServiceCIDRs (the Service IP ranges, whose egress the datapath
// decides after the NAT).
//
//	API server ──informers──▶ handlers: record the key, signal ──▶ Changes()
//	                                                           ──▶ listers (current objects)
//
// Handlers only mark work: a key set and a one-slot signal channel. The
// consumer drains the keys and reads the current objects from the listers,
// so a burst of events becomes one sync and nothing is processed twice.
package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetworkingv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
)

// Kind names a watched kind.
type Kind int

// Watched kinds.
const (
	KindNamespace Kind = iota
	KindPod
	KindNetworkPolicy
)

func (k Kind) String() string {
	return [...]string{"Namespace", "Pod", "NetworkPolicy"}[k]
}

// Changes are the keys ("ns/name", or "name" for namespaces) of objects
// that changed since the previous call, per kind. An object whose key is
// listed but that the lister no longer has was deleted.
type Changes struct {
	Namespaces, Pods, Policies []string
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Namespaces) == 0 && len(c.Pods) == 0 && len(c.Policies) == 0
}

// Watcher owns the informers.
type Watcher struct {
	factory    informers.SharedInformerFactory
	Namespaces listerscorev1.NamespaceLister
	Pods       PodLister
	Policies   listersnetworkingv1.NetworkPolicyLister
	synced     []cache.InformerSynced

	// ServiceCIDRs are not waited for (WaitForSync): an agent whose role
	// lacks them still enforces, deciding Service addresses before the NAT.
	ServiceCIDRs listersnetworkingv1.ServiceCIDRLister
	svcSynced    cache.InformerSynced
	svcChanged   atomic.Bool

	mu      sync.Mutex
	pending [3]map[string]struct{}
	signal  chan struct{}
	// lastEvent is when the oldest undrained change arrived (for the
	// propagation-latency metric).
	firstPending time.Time
}

// New sets up informers on client. resync is the informers' periodic
// resync (0 disables it; the agent reconciles the kernel on its own timer).
func New(client kubernetes.Interface, resync time.Duration) (*Watcher, error) {
	f := informers.NewSharedInformerFactory(client, resync)
	w := &Watcher{factory: f, signal: make(chan struct{}, 1)}
	for i := range w.pending {
		w.pending[i] = map[string]struct{}{}
	}
	// No namespace index (nothing lists pods by namespace), and only what
	// the compiler reads: all pods of the cluster are held in memory on
	// every node.
	pods := f.InformerFor(&corev1.Pod{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewPodInformer(c, metav1.NamespaceAll, resync, cache.Indexers{})
	})
	if err := pods.SetTransform(TrimPod); err != nil {
		return nil, fmt.Errorf("set pod transform: %w", err)
	}
	nss := f.Core().V1().Namespaces().Informer()
	if err := nss.SetTransform(trimMeta); err != nil {
		return nil, fmt.Errorf("set namespace transform: %w", err)
	}
	pols := f.Networking().V1().NetworkPolicies().Informer()
	if err := pols.SetTransform(trimMeta); err != nil {
		return nil, fmt.Errorf("set networkpolicy transform: %w", err)
	}
	for kind, inf := range map[Kind]cache.SharedIndexInformer{KindNamespace: nss, KindPod: pods, KindNetworkPolicy: pols} {
		if _, err := inf.AddEventHandler(w.handler(kind)); err != nil {
			return nil, fmt.Errorf("add %s handler: %w", kind, err)
		}
		w.synced = append(w.synced, inf.HasSynced)
	}
	svc := f.Networking().V1().ServiceCIDRs().Informer()
	if err := svc.SetTransform(trimMeta); err != nil {
		return nil, fmt.Errorf("set servicecidr transform: %w", err)
	}
	w.svcChanged.Store(true)
	changed := func(any) {
		w.svcChanged.Store(true)
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
	if _, err := svc.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed, UpdateFunc: func(_, o any) { changed(o) }, DeleteFunc: changed,
	}); err != nil {
		return nil, fmt.Errorf("add ServiceCIDR handler: %w", err)
	}
	w.svcSynced = svc.HasSynced
	w.ServiceCIDRs = f.Networking().V1().ServiceCIDRs().Lister()
	w.Namespaces = f.Core().V1().Namespaces().Lister()
	w.Pods = PodLister{store: pods.GetStore()}
	w.Policies = f.Networking().V1().NetworkPolicies().Lister()
	return w, nil
}

func (w *Watcher) handler(kind Kind) cache.ResourceEventHandler {
	mark := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			return
		}
		w.mu.Lock()
		if len(w.pending[0])+len(w.pending[1])+len(w.pending[2]) == 0 {
			w.firstPending = time.Now()
		}
		w.pending[kind][key] = struct{}{}
		w.mu.Unlock()
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    mark,
		UpdateFunc: func(_, obj any) { mark(obj) },
		DeleteFunc: mark,
	}
}

// Start starts the informers; they stop with ctx.
func (w *Watcher) Start(ctx context.Context) {
	w.factory.Start(ctx.Done())
	// The ServiceCIDRs' first list may end after the handlers' signals
	// were consumed by a sync that found them not yet listed: signal again.
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), w.svcSynced) {
			w.svcChanged.Store(true)
			select {
			case w.signal <- struct{}{}:
			default:
			}
		}
	}()
}

// WaitForSync waits until every informer has listed once.
func (w *Watcher) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.synced...)
}

// ServiceRanges returns the Service IP ranges of every ServiceCIDR, sorted
// and deduplicated, when they changed since the last call (changed false
// otherwise, and before the first list). A range that does not parse is
// reported and skipped.
func (w *Watcher) ServiceRanges() (ranges []netip.Prefix, changed bool, err error) {
	if !w.svcSynced() || !w.svcChanged.Swap(false) {
		return nil, false, nil
	}
	objs, lerr := w.ServiceCIDRs.List(labels.Everything())
	if lerr != nil {
		w.svcChanged.Store(true)
		return nil, false, fmt.Errorf("list ServiceCIDRs: %w", lerr)
	}
	var errs []error
	for _, o := range objs {
		for _, c := range o.Spec.CIDRs {
			p, perr := netip.ParsePrefix(c)
			if perr != nil {
				errs = append(errs, fmt.Errorf("ServiceCIDR %s: %w", o.Name, perr))
				continue
			}
			ranges = append(ranges, p.Masked())
		}
	}
	slices.SortFunc(ranges, ComparePrefix)
	return slices.Compact(ranges), true, errors.Join(errs...)
}

// ComparePrefix orders prefixes by address, then by length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Signal is readable when changes are pending.
func (w *Watcher) Signal() <-chan struct{} { return w.signal }

// Drain returns the pending changes and when the oldest of them arrived.
func (w *Watcher) Drain() (Changes, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	take := func(k Kind) []string {
		out := make([]string, 0, len(w.pending[k]))
		for key := range w.pending[k] {
			out = append(out, key)
		}
		if len(out) > 1024 {
			// clear keeps a map's memory: the burst of a full list
			// would stay allocated for good.
			w.pending[k] = map[string]struct{}{}
		} else {
			clear(w.pending[k])
		}
		return out
	}
	c := Changes{Namespaces: take(KindNamespace), Pods: take(KindPod), Policies: take(KindNetworkPolicy)}
	return c, w.firstPending
}

// Shutdown stops the informer goroutines and waits for them.
func (w *Watcher) Shutdown() { w.factory.Shutdown() }

func trimMeta(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	return obj, nil
}

// Terminated reports whether a pod no longer holds its addresses: its
// phase is final, so its IPs may already belong to another pod (see
// Pod.Terminated for the cached form).
func Terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
