package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/tools/cache"

	"github.com/ztnet/zt/pkg/datapath"
	"github.com/ztnet/zt/pkg/flows"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/k8swatch"
	"github.com/ztnet/zt/pkg/policy"
)

// FlowsConfig configures the flow pipeline (kernel events to enriched,
// stored records) and its API, which ztctl flows reads.
type FlowsConfig struct {
	// Disabled runs no pipeline and no API (the events ring buffer then
	// stays unread; the kernel counts what it cannot emit).
	Disabled bool
	// Socket is the API's unix socket (mode 0600); "" disables it.
	Socket string
	// Addr is the API's loopback TCP address, for kubectl port-forward;
	// "" disables it. It must be a loopback address.
	Addr string
	// Dir is the journal directory; "" keeps records in memory only.
	Dir string
	// JournalMaxBytes caps the journal's files in total.
	JournalMaxBytes int64
	// AllowedSample > 0 makes the datapath emit allowed new connections
	// too and keeps 1 in AllowedSample of them; 0 keeps drops and audits
	// only.
	AllowedSample int
}

// DefaultFlowsConfig returns the defaults.
func DefaultFlowsConfig() FlowsConfig {
	return FlowsConfig{
		Socket:          flows.DefaultSocket,
		Addr:            flows.DefaultAddr,
		Dir:             flows.DefaultJournalDir,
		JournalMaxBytes: flows.DefaultJournalMaxBytes,
	}
}

func (c *FlowsConfig) validate() []error {
	var errs []error
	if c.Disabled {
		return nil
	}
	if c.Addr != "" {
		if err := flows.CheckLoopback(c.Addr); err != nil {
			errs = append(errs, fmt.Errorf("--flows-addr: %w", err))
		}
	}
	if c.JournalMaxBytes != 0 && c.JournalMaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("--flows-journal-max-bytes %d: want at least 1 MiB", c.JournalMaxBytes))
	}
	if c.AllowedSample < 0 {
		errs = append(errs, fmt.Errorf("--flows-allowed-sample %d: want 0 (off) or more", c.AllowedSample))
	}
	return errs
}

// flowState is the agent's side of the pipeline: the resolver the sync
// loop feeds (the compiler is not safe for concurrent use, so the loop
// copies what the reader needs into tables it publishes whole).
type flowState struct {
	resolver *flows.TableResolver
}

// agentVersion is the module version or VCS revision of this build.
func agentVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 && (v == "" || v == "(devel)") {
			v = "devel-" + s.Value[:12]
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return v
}

// startFlows starts the pipeline and the API; the returned func stops
// them (API first closes its streams, then the journal is flushed).
// Failing to start them is logged, never fatal: enforcement matters more.
func (a *Agent) startFlows(ctx context.Context) (stop func()) {
	cfg := a.cfg.Flows
	if cfg.Disabled {
		return func() {}
	}
	a.flows = &flowState{resolver: flows.NewTableResolver(flows.NewPodTable(0, 0))}
	if err := a.setEventsAllowed(cfg.AllowedSample > 0); err != nil {
		a.log.Warn("cannot configure allowed-connection events", zap.Error(err))
	}
	store, err := flows.OpenStore(flows.StoreOptions{Dir: cfg.Dir, MaxBytes: cfg.JournalMaxBytes})
	if err != nil {
		a.log.Error("flow records disabled: cannot open the journal", zap.String("dir", cfg.Dir), zap.Error(err))
		return func() {}
	}
	enricher, err := flows.NewEnricher(a.cfg.NodeName, a.flows.resolver)
	if err != nil {
		a.log.Error("flow records disabled", zap.Error(err))
		_ = store.Close()
		return func() {}
	}
	reader, err := a.dp.NewEventReader()
	if err != nil {
		a.log.Error("flow records disabled", zap.Error(err))
		_ = store.Close()
		return func() {}
	}
	pipe := flows.NewPipeline(enricher, store, flows.PipelineOptions{AllowedSample: cfg.AllowedSample})
	a.registerFlowMetrics(pipe, store)

	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := pipe.Run(pctx, reader, func(err error) {
			a.metrics.errors.WithLabelValues("flows").Inc()
			a.log.Debug("flow pipeline", zap.Error(err))
		})
		if err != nil {
			a.log.Warn("flow pipeline stopped", zap.Error(err))
		}
	}()

	srv := &http.Server{
		Handler: flows.NewHandler(flows.ServerOptions{
			Store:    store,
			Version:  flows.Version{API: flows.APIVersion, Agent: agentVersion(), Node: a.cfg.NodeName},
			Counters: a.flowCounters,
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	var ls []net.Listener
	for _, where := range [][2]string{{cfg.Socket, ""}, {"", cfg.Addr}} {
		l, err := flows.Listen(where[0], where[1])
		if err != nil {
			a.log.Error("flows API not served here", zap.Error(err))
		}
		ls = append(ls, l...)
	}
	for _, l := range ls {
		a.log.Info("flows API listening", zap.String("address", l.Addr().String()))
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("flows API", zap.Error(err))
			}
		}()
	}
	return func() {
		cancel()
		wg.Wait()
		// Closing the store ends follow streams, so Shutdown does not wait
		// on them.
		if err := store.Close(); err != nil {
			a.log.Warn("close flow journal", zap.Error(err))
		}
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}
}

// setEventsAllowed sets or clears the datapath's allowed-events flag,
// which an earlier agent may have left set.
func (a *Agent) setEventsAllowed(on bool) error {
	c, err := a.dp.Config()
	if err != nil {
		return err
	}
	want := c.Flags &^ datapath.ConfigEventsAllowed
	if on {
		want |= datapath.ConfigEventsAllowed
	}
	if want == c.Flags {
		return nil
	}
	c.Flags = want
	return a.dp.SetConfig(c)
}

func (a *Agent) flowCounters() ([]flows.Counter, error) {
	cs, err := a.dp.Counters()
	if err != nil {
		return nil, err
	}
	var out []flows.Counter
	for _, c := range cs {
		if c.Packets == 0 {
			continue
		}
		out = append(out, flows.Counter{Direction: c.Dir.String(), Verdict: c.Verdict.String(),
			Reason: c.Reason.String(), Packets: c.Packets, Bytes: c.Bytes})
	}
	return out, nil
}

func (a *Agent) registerFlowMetrics(p *flows.Pipeline, s *flows.Store) {
	for _, c := range []struct {
		result string
		get    func(flows.Stats) uint64
	}{
		{"stored", func(s flows.Stats) uint64 { return s.Stored }},
		{"suppressed", func(s flows.Stats) uint64 { return s.Suppressed }},
		{"sampled_out", func(s flows.Stats) uint64 { return s.SampledOut }},
		{"decode_error", func(s flows.Stats) uint64 { return s.DecodeErrors }},
	} {
		_ = a.metrics.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "zt_flow_events_total", Help: "Flow events read from the kernel, by what became of them.",
			ConstLabels: prometheus.Labels{"result": c.result},
		}, func() float64 { return float64(c.get(p.Stats())) }))
	}
	_ = a.metrics.reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "zt_flow_journal_bytes", Help: "Bytes of flow records in the on-disk journal.",
	}, func() float64 { return float64(s.JournalBytes()) }))
}

// flowsRefresh runs in the sync loop after the compiler synced and the
// endpoints were bound: it copies the changed pods and the local
// endpoints' policies into the resolver.
func (a *Agent) flowsRefresh(changes k8swatch.Changes) {
	if a.flows == nil {
		return
	}
	pods := a.flows.resolver.Pods
	for _, key := range changes.Pods {
		namespace, name, _ := cache.SplitMetaNamespaceKey(key)
		pk := policy.PodKey{Namespace: namespace, Name: name}
		p, ok := a.compiler.Pod(pk)
		if !ok || p.HostNetwork {
			pods.Delete(pk.Namespace, pk.Name)
			continue
		}
		// The labels are the informer cache's, shared and never modified
		// (an update replaces them): no copy per pod.
		pods.Set(flows.PodInfo{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels}, p.IPs)
	}
	t := &flows.Tables{Endpoints: map[uint32]flows.EndpointInfo{}, Rules: map[uint32]string{}, Identities: map[uint32]string{}}
	for pk, b := range a.bound {
		ep, ok := a.compiler.Endpoint(pk)
		if !ok {
			continue
		}
		info := flows.EndpointInfo{Pod: flows.PodInfo{Namespace: pk.Namespace, Name: pk.Name}}
		if p, ok := a.compiler.Pod(pk); ok {
			info.Pod.Labels = maps.Clone(p.Labels)
		}
		for d, dp := range []*policy.DirectionPolicy{&ep.Ingress, &ep.Egress} {
			for _, k := range dp.IsolatedBy {
				info.IsolatedBy[d] = append(info.IsolatedBy[d], k.String())
			}
			for r := range dp.Rules.All() {
				if _, done := t.Rules[uint32(r.ID)]; done || r.ID == 0 {
					continue
				}
				if ref, ok := a.compiler.Rule(r.ID); ok {
					t.Rules[uint32(r.ID)] = ref.String()
				}
			}
		}
		t.Endpoints[b.ifindex] = info
	}
	for _, id := range a.compiler.Identities() {
		if id.Labels.Kind != identity.KindCIDR || len(id.Labels.CIDRs) == 0 {
			continue
		}
		best := id.Labels.CIDRs[0]
		for _, p := range id.Labels.CIDRs {
			if p.Bits() > best.Bits() {
				best = p
			}
		}
		t.Identities[uint32(id.ID)] = best.String()
	}
	a.flows.resolver.Publish(t)
}
