// Package agent wires zt's stages on one node: Kubernetes informers feed
// the incremental compiler; a coalescing, bounded-frequency loop turns its
// output into kernel map writes and attaches the programs to local pods;
// a periodic full reconcile repairs drift. It is the only package besides
// cmd/ that logs.
//
//	k8swatch ──signal──▶ loop (≥ MinSyncInterval apart) ──▶ policy.Compiler
//	                       │                                     │
//	                       ├── local pods ─▶ host veth (netlink) ─▶ datapath.AttachEndpoint
//	                       └── mapsync.Builder ─▶ Syncer.ApplyDelta (Reconcile every ReconcileInterval)
package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/yaml"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/k8swatch"
	"github.com/ztnet/zt/pkg/mapsync"
	"github.com/ztnet/zt/pkg/policy"
)

// Agent enforces the cluster's NetworkPolicies on this node.
type Agent struct {
	cfg Config
	log *zap.Logger

	client   kubernetes.Interface
	dp       *datapath.Datapath
	watch    *k8swatch.Watcher
	compiler *policy.Compiler
	syncer   *mapsync.Syncer
	// builder patches the desired state from what changed, so a sync
	// costs its changes, not the size of the node's maps.
	builder  *mapsync.Builder
	metrics  *metrics
	recorder record.EventRecorder
	events   record.EventBroadcaster

	// bound: pods enforced here and their host interfaces.
	bound map[policy.PodKey]binding
	// missing: local pods whose interface was not found, with the error
	// last reported (reported again only when it changes).
	missing  map[policy.PodKey]string
	problems map[policy.PolicyKey]string
	// ifaces finds host veths through pod namespaces when no route
	// names them (bridge CNI); see interfaces.go.
	ifaces *ifaceFinder

	ready     atomic.Bool
	heartbeat atomic.Int64

	flows *flowState // see flows.go

	realized realizedState // see realized.go

	// svcRanges: the Service IP ranges last written (nil before the first).
	svcRanges *[]netip.Prefix
}

type binding struct {
	ifindex uint32
	cookie  uint64 // netns cookie for the socket hooks, 0 when unknown
}

// New opens the datapath (adopting pinned state) and connects to the API.
func New(cfg Config, log *zap.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	restCfg.UserAgent = "zt-agent/" + cfg.NodeName
	// Protobuf: every pod of the cluster is listed and watched; it decodes
	// in a fraction of JSON's time and garbage.
	restCfg.ContentType = "application/vnd.kubernetes.protobuf"
	restCfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	opts := policy.Options{NodeName: cfg.NodeName, DenyFromHost: cfg.DenyFromHost}
	if cfg.ClusterDefaultDeny {
		dd := policy.DefaultExemptions()
		if cfg.DefaultDenyExemptions != "" {
			data, err := os.ReadFile(cfg.DefaultDenyExemptions)
			if err != nil {
				return nil, err
			}
			dd = &policy.DefaultDeny{}
			if err := yaml.UnmarshalStrict(data, dd); err != nil {
				return nil, fmt.Errorf("%s: %w", cfg.DefaultDenyExemptions, err)
			}
		}
		if err := dd.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.DefaultDenyExemptions, err)
		}
		opts.ClusterDefaultDeny = dd
	}

	dp, err := datapath.Open(datapath.Options{BPFFSRoot: cfg.BPFFSRoot, MapSizes: cfg.MapSizes, Migrate: true, NoMount: cfg.NoMountBPFFS})
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	for _, m := range dp.Migrated() {
		log.Warn("pinned map layout changed: replaced", zap.String("map", m.Map), zap.String("reason", m.Reason),
			zap.Int("copied", m.Copied), zap.Int("moved", m.Moved), zap.String("moved_to", m.MovedTo), zap.Bool("empty", m.Empty))
	}
	if mem, err := dp.MapMemory(); err != nil {
		log.Warn("cannot read the kernel maps' memory; Go memory limit left as set", zap.Error(err))
	} else if cur := debug.SetMemoryLimit(-1); cur != math.MaxInt64 {
		var total uint64
		for _, v := range mem {
			total += v
		}
		next := goMemoryLimit(cur, total)
		debug.SetMemoryLimit(next)
		log.Info("Go memory limit leaves room for the kernel maps", zap.Int64("limit", cur),
			zap.Uint64("maps", total), zap.Int64("go_limit", next))
	}
	// New label sets are numbered above every number the adopted maps
	// use; a label set an adopted ipcache entry shows keeps its number, so
	// a restart over unchanged objects rewrites no entry naming a pod.
	first, hints, err := AdoptedIdentities(dp)
	if err != nil {
		dp.Close()
		return nil, err
	}
	opts.FirstIdentity = first + 1
	opts.IdentityHints = hints

	w, err := k8swatch.New(client, 0)
	if err != nil {
		dp.Close()
		return nil, err
	}
	a := &Agent{
		cfg: cfg, log: log, client: client, dp: dp, watch: w,
		compiler: policy.New(opts),
		syncer:   mapsync.New(dp),
		builder:  mapsync.NewBuilder(),
		metrics:  newMetrics(dp),
		bound:    map[policy.PodKey]binding{},
		missing:  map[policy.PodKey]string{},
		problems: map[policy.PolicyKey]string{},
		ifaces:   newIfaceFinder(cfg.NetnsDirs),
	}
	a.events = record.NewBroadcaster()
	a.recorder = a.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "zt-agent", Host: cfg.NodeName})
	return a, nil
}

// goMemoryLimit is the Go runtime's soft memory limit once the kernel
// maps are counted: the limit set (GOMEMLIMIT, the container's memory
// limit in the DaemonSet) less the maps' memory, which the same memory
// cgroup pays for when this agent created them, and never below half of
// it. Without a limit (math.MaxInt64) it stays unlimited.
func goMemoryLimit(limit int64, maps uint64) int64 {
	if limit == math.MaxInt64 || limit <= 0 {
		return limit
	}
	if maps >= uint64(limit) {
		return limit / 2
	}
	return max(limit-int64(maps), limit/2)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (pass --kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// AdoptedIdentities reads the adopted maps: the highest identity number
// they use (policy.Options.FirstIdentity is above it), and the ipcache's
// prefix -> number of allocated identities (policy.Options.IdentityHints).
// A temporary identity a killed agent left mid-update is neither.
func AdoptedIdentities(dp *datapath.Datapath) (identity.ID, map[netip.Prefix]identity.Entry, error) {
	m := identity.FirstAllocated
	ipc, err := dp.IPCacheList()
	if err != nil {
		return 0, nil, fmt.Errorf("read adopted ipcache: %w", err)
	}
	hints := map[netip.Prefix]identity.Entry{}
	for p, v := range ipc {
		var h identity.Entry
		if v.Identity < mapsync.TempIdentityBase {
			m = max(m, identity.ID(v.Identity))
			if v.Identity >= datapath.IdentityUserMin {
				h.ID = identity.ID(v.Identity)
			}
		}
		if v.CidrIdentity < mapsync.TempIdentityBase {
			m = max(m, identity.ID(v.CidrIdentity))
			if v.CidrIdentity >= datapath.IdentityUserMin {
				h.CIDR = identity.ID(v.CidrIdentity)
			}
		}
		if h != (identity.Entry{}) {
			hints[p] = h
		}
	}
	pol, err := dp.PolicyList()
	if err != nil {
		return 0, nil, fmt.Errorf("read adopted policy: %w", err)
	}
	for k := range pol {
		if k.PeerId < mapsync.TempIdentityBase {
			m = max(m, identity.ID(k.PeerId))
		}
	}
	return m, hints, nil
}

// Run enforces until ctx ends. The pinned maps and links stay: enforcement
// continues unchanged while no agent runs, and the next one adopts them.
func (a *Agent) Run(ctx context.Context) error {
	defer a.dp.Close()
	a.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	defer a.events.Shutdown()

	if a.cfg.SocketHooks {
		if err := a.dp.AttachCgroup(a.cfg.CgroupRoot); err != nil {
			a.metrics.errors.WithLabelValues("socket_hooks").Inc()
			a.log.Warn("socket-level enforcement unavailable: denied connect()/sendto() will time out instead of failing with EPERM; tc enforcement is unaffected", zap.Error(err))
		} else {
			a.log.Info("socket hooks attached (connect4/6, sendmsg4/6)")
		}
	}

	a.setupServiceEgress()

	defer a.startFlows(ctx)()
	srv := a.serveHealth()
	defer func() {
		if srv != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}
	}()

	a.heartbeat.Store(time.Now().UnixNano())
	a.watch.Start(ctx)
	defer a.watch.Shutdown()
	a.log.Info("waiting for informer caches", zap.String("node", a.cfg.NodeName))
	if !a.watch.WaitForSync(ctx) {
		return ctx.Err()
	}
	a.log.Info("caches synced")

	reconcile := time.NewTicker(a.cfg.ReconcileInterval)
	defer reconcile.Stop()
	retry := time.NewTimer(0) // the first sync is a full one, right away
	defer retry.Stop()
	backoff := a.cfg.RetryInterval
	full := true
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping; pinned maps and programs keep enforcing")
			return nil
		case <-a.watch.Signal():
		case <-reconcile.C:
			full = true
		case <-retry.C:
		}
		// Bound the frequency: a burst of events becomes one sync.
		if wait := a.cfg.MinSyncInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		last = time.Now()
		a.heartbeat.Store(last.UnixNano())
		needRetry, err := a.sync(full)
		switch {
		case err != nil:
			a.metrics.errors.WithLabelValues("sync").Inc()
			if errors.Is(err, mapsync.ErrMapFull) {
				a.metrics.errors.WithLabelValues("map_full").Inc()
			}
			a.log.Error("sync failed; the previous state stays enforced", zap.Error(err), zap.Duration("retry_in", backoff))
			full = true // after a failure, dump and repair
			retry.Reset(backoff)
			backoff = min(2*backoff, a.cfg.ReconcileInterval)
		case needRetry:
			full = false
			retry.Reset(backoff)
			backoff = min(2*backoff, a.cfg.ReconcileInterval)
		default:
			full = false
			backoff = a.cfg.RetryInterval
		}
	}
}

// sync applies pending changes to the compiler and the kernel. needRetry
// is set when some local pod's interface was not found.
func (a *Agent) sync(full bool) (needRetry bool, err error) {
	start := time.Now()
	changes, firstEvent := a.watch.Drain()
	a.applyChanges(changes)
	hostIPs, err := hostAddrs()
	if err != nil {
		return false, err
	}
	a.compiler.SetHostIPs(hostIPs)
	a.syncServiceRanges()
	// One Sync over everything: the first one numbers every identity
	// (keeping the adopted numbers) from the complete picture.
	a.compiler.Sync()

	needRetry = a.bindEndpoints()
	a.flowsRefresh(changes)
	var binds []mapsync.Binding
	for pk, b := range a.bound {
		binds = append(binds, mapsync.Binding{Pod: pk, Ifindex: b.ifindex, Audit: a.cfg.Audit})
	}
	if full {
		// The periodic repair also rebuilds the desired state from the
		// compiler, so a wrong patch cannot outlive one interval.
		a.builder.Check()
	}
	desired, delta, derr := a.builder.Update(a.compiler, binds, mapsync.Options{DenyFromHost: a.cfg.DenyFromHost})
	if derr != nil {
		a.log.Error("some endpoints could not be compiled", zap.Error(derr))
	}
	if delta.Drift > 0 {
		a.metrics.errors.WithLabelValues("desired_drift").Inc()
		a.log.Error("the patched desired state differed from the compiler's (a bug): rebuilt it", zap.Int("entries", delta.Drift))
	}
	var st mapsync.Stats
	if full {
		st, err = a.syncer.Reconcile(desired)
	} else {
		st, err = a.syncer.ApplyDelta(desired, delta)
	}
	kind := "incremental"
	if full {
		kind = "full"
	}
	a.metrics.syncDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	if err != nil {
		return needRetry, err
	}
	a.syncNetns()
	a.detachStale()
	a.realized.publish(len(desired.Endpoints), len(a.missing))
	if !changes.Empty() && !firstEvent.IsZero() {
		a.metrics.propagation.Observe(time.Since(firstEvent).Seconds())
	}
	a.recordStats(desired, st)
	if full && !a.ready.Load() {
		a.ready.Store(true)
		a.log.Info("first full sync realized in the kernel: ready",
			zap.Int("endpoints", len(desired.Endpoints)), zap.Int("ipcache", len(desired.IPCache)),
			zap.Int("policy", len(desired.Policy)), zap.Int("writes", st.Writes()))
	} else if st.Writes() > 0 {
		a.log.Debug("synced", zap.String("kind", kind), zap.Int("writes", st.Writes()), zap.Duration("took", time.Since(start)))
	}
	return needRetry, nil
}

func (a *Agent) recordStats(d mapsync.State, st mapsync.Stats) {
	a.metrics.endpoints.Set(float64(len(d.Endpoints)))
	a.metrics.identities.Set(float64(len(a.compiler.Identities())))
	a.metrics.mapEntries.WithLabelValues("ipcache").Set(float64(len(d.IPCache)))
	a.metrics.mapEntries.WithLabelValues("endpoints").Set(float64(len(d.Endpoints)))
	a.metrics.mapEntries.WithLabelValues("policy").Set(float64(len(d.Policy)))
	for _, w := range []struct {
		m, op string
		n     int
	}{
		{"ipcache", "put", st.IPCachePut}, {"ipcache", "delete", st.IPCacheDeleted},
		{"endpoints", "put", st.EndpointPut}, {"endpoints", "delete", st.EndpointDeleted},
		{"policy", "put", st.PolicyPut}, {"policy", "delete", st.PolicyDeleted},
	} {
		if w.n > 0 {
			a.metrics.writes.WithLabelValues(w.m, w.op).Add(float64(w.n))
		}
	}
}

// applyChanges feeds changed objects to the compiler: namespaces first (pod
// identities read their labels), then pods, then policies.
func (a *Agent) applyChanges(ch k8swatch.Changes) {
	for _, key := range ch.Namespaces {
		ns, err := a.watch.Namespaces.Get(key)
		if apierrors.IsNotFound(err) {
			a.compiler.DeleteNamespace(key)
			a.realized.consume(k8swatch.KindNamespace, key, nil)
			continue
		}
		if err == nil {
			a.realized.consume(k8swatch.KindNamespace, key, ns)
			a.compiler.SetNamespace(policy.Namespace{Name: ns.Name, Labels: ns.Labels})
		}
	}
	for _, key := range ch.Pods {
		namespace, name, _ := cache.SplitMetaNamespaceKey(key)
		pk := policy.PodKey{Namespace: namespace, Name: name}
		pod, err := a.watch.Pods.Get(namespace, name)
		if apierrors.IsNotFound(err) {
			a.realized.consume(k8swatch.KindPod, key, nil)
		} else if err == nil {
			a.realized.consume(k8swatch.KindPod, key, pod)
		}
		if apierrors.IsNotFound(err) || (err == nil && pod.Terminated()) {
			a.compiler.DeletePod(pk)
			continue
		}
		if err != nil {
			continue
		}
		// The compiler keeps the cached pod's (shared) labels and strings.
		p, err := policy.PodFromAPI(pod.API())
		if err != nil {
			a.log.Warn("pod skipped", zap.String("pod", key), zap.Error(err))
			a.compiler.DeletePod(pk)
			continue
		}
		a.compiler.SetPod(p)
	}
	for _, key := range ch.Policies {
		namespace, name, _ := cache.SplitMetaNamespaceKey(key)
		pk := policy.PolicyKey{Namespace: namespace, Name: name}
		np, err := a.watch.Policies.NetworkPolicies(namespace).Get(name)
		if apierrors.IsNotFound(err) {
			a.realized.consume(k8swatch.KindNetworkPolicy, key, nil)
			a.compiler.DeletePolicy(pk)
			delete(a.problems, pk)
			continue
		}
		if err != nil {
			continue
		}
		a.realized.consume(k8swatch.KindNetworkPolicy, key, np)
		if err := a.compiler.SetPolicy(np); err != nil {
			msg := err.Error()
			if a.problems[pk] != msg {
				a.problems[pk] = msg
				a.metrics.errors.WithLabelValues("invalid_policy").Inc()
				a.log.Warn("invalid NetworkPolicy skipped; every other policy stays enforced", zap.String("policy", key), zap.Error(err))
				a.recorder.Eventf(np, corev1.EventTypeWarning, "InvalidNetworkPolicy", "zt skipped this policy: %v", err)
			}
		} else {
			delete(a.problems, pk)
		}
	}
	a.metrics.invalid.Set(float64(len(a.problems)))
}

// bindEndpoints finds the host interface of every local compiled endpoint
// and attaches the programs to it. It reports whether some are missing.
func (a *Agent) bindEndpoints() (missing bool) {
	want := map[policy.PodKey]bool{}
	a.ifaces.begin()
	for _, ep := range a.compiler.Endpoints() {
		want[ep.Pod] = true
		if len(ep.IPs) == 0 {
			continue // no address yet: nothing to route to, nothing to enforce
		}
		link, err := a.hostInterface(ep.IPs)
		if err != nil {
			missing = true
			a.reportMissing(ep.Pod, fmt.Errorf("pod %s: %w", ep.Pod, err))
			// Fail closed: a lookup that fails (a transient netlink error,
			// a route being replaced) must not unbind a pod whose interface
			// still exists, or its endpoint entry would be deleted and the
			// pod left unenforced. Only a vanished interface unbinds.
			if b, ok := a.bound[ep.Pod]; ok {
				if _, lerr := linkByIndex(int(b.ifindex)); lerr == nil {
					continue
				}
				delete(a.bound, ep.Pod)
			}
			continue
		}
		ifindex := uint32(link.Attrs().Index)
		if b, ok := a.bound[ep.Pod]; ok && b.ifindex == ifindex {
			continue
		}
		mode, err := a.dp.AttachEndpoint(int(ifindex))
		if err != nil {
			missing = true
			a.metrics.errors.WithLabelValues("attach").Inc()
			a.reportMissing(ep.Pod, fmt.Errorf("attach to %s: %w", link.Attrs().Name, err))
			continue
		}
		a.log.Info("endpoint attached", zap.String("pod", ep.Pod.String()), zap.String("interface", link.Attrs().Name),
			zap.Uint32("ifindex", ifindex), zap.String("mode", mode.String()))
		a.bound[ep.Pod] = binding{ifindex: ifindex}
		delete(a.missing, ep.Pod)
	}
	for pk := range a.bound {
		if !want[pk] {
			delete(a.bound, pk)
		}
	}
	for pk := range a.missing {
		if !want[pk] {
			delete(a.missing, pk)
		}
	}
	return missing
}

func (a *Agent) reportMissing(pk policy.PodKey, err error) {
	msg := err.Error()
	if a.missing[pk] == msg {
		return
	}
	a.missing[pk] = msg
	a.metrics.errors.WithLabelValues("interface_not_found").Inc()
	a.log.Warn("pod not enforced yet: its interface was not found; retrying", zap.String("pod", pk.String()), zap.Error(err))
	if a.watch == nil || a.recorder == nil {
		return
	}
	if pod, gerr := a.watch.Pods.Get(pk.Namespace, pk.Name); gerr == nil {
		a.recorder.Eventf(pod.API(), corev1.EventTypeWarning, "InterfaceNotFound", "zt cannot enforce policy on this pod yet: %v", err)
	}
}

// syncNetns keys the socket hooks by the pods' network namespace cookies.
func (a *Agent) syncNetns() {
	if !a.cfg.SocketHooks {
		return
	}
	paths := map[int]string(nil)
	want := map[uint64]datapath.NetnsVal{}
	for pk, b := range a.bound {
		if b.cookie == 0 {
			if paths == nil {
				paths = netnsPaths(a.cfg.NetnsDirs)
			}
			link, err := linkByIndex(int(b.ifindex))
			if err != nil {
				continue
			}
			path, ok := paths[peerNetnsID(link)]
			if !ok {
				continue // tc still enforces; connect() just fails later
			}
			cookie, err := datapath.NetnsCookie(path)
			if err != nil {
				continue
			}
			b.cookie = cookie
			a.bound[pk] = b
		}
		want[b.cookie] = datapath.NetnsVal{EpId: b.ifindex, Ifindex: b.ifindex}
	}
	have, err := a.dp.NetnsList()
	if err != nil {
		return
	}
	for c, v := range want {
		if have[c] != v {
			_ = a.dp.NetnsPut(c, v)
		}
	}
	for c := range have {
		if _, ok := want[c]; !ok {
			_ = a.dp.NetnsDelete(c)
		}
	}
}

// detachStale removes programs from interfaces no local pod uses any more
// (after mapsync removed their endpoint entries).
func (a *Agent) detachStale() {
	attached, err := a.dp.AttachedEndpoints()
	if err != nil {
		return
	}
	inUse := map[int]bool{}
	for _, b := range a.bound {
		inUse[int(b.ifindex)] = true
	}
	for _, i := range attached {
		if inUse[i] {
			continue
		}
		if err := a.dp.DetachEndpoint(i); err != nil {
			a.log.Debug("detach", zap.Int("ifindex", i), zap.Error(err))
			continue
		}
		if _, err := a.dp.ConntrackFlushEndpoint(uint32(i)); err != nil {
			a.log.Debug("flush conntrack", zap.Int("ifindex", i), zap.Error(err))
		}
	}
}

func (a *Agent) serveHealth() *http.Server {
	if a.cfg.HealthAddr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Alive while the loop turns: it wakes at least every reconcile
		// interval.
		if since := time.Since(time.Unix(0, a.heartbeat.Load())); since > 2*a.cfg.ReconcileInterval+time.Minute {
			http.Error(w, fmt.Sprintf("sync loop stalled for %s", since.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready: caches not synced or first full sync not realized yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/realized", a.serveRealized)
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: a.cfg.HealthAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("health server", zap.Error(err))
		}
	}()
	return srv
}

// Ready reports whether the first full sync is realized.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Netlink lookups, replaceable in tests.
var (
	lookupHostInterface = routeInterface
	linkByIndex         = netlink.LinkByIndex
)
