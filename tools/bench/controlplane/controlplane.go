// Package controlplane measures zt's control plane for tools/bench:
//
//   - policy propagation through a real kube-apiserver: `kubectl apply` (and
//     `kubectl delete`) of a NetworkPolicy to the first real TCP connection
//     attempt, from a pod's network namespace in a pkg/lab lab, whose
//     verdict changed; and the node-side part of it, the agent's
//     zt_policy_propagation_seconds (the first watch event of a batch to
//     its map writes done), with the rest of the cluster's pods existing
//     as API objects only;
//   - the zt-agent process's memory (VmRSS, VmHWM) as pods are added;
//   - pkg/policy's full compile and incremental updates on one core
//     (GOMAXPROCS=1), in a child process whose peak RSS rusage reports.
//
// It needs root (the lab), the Go toolchain and the repository (it builds
// zt-agent, ztlab and the compile child from the code at hand), and the
// pinned etcd, kube-apiserver and kubectl.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/ztnet/zt/internal/kubeenv"
)

// Config selects what Run measures.
type Config struct {
	// Quick runs small pod counts and few repetitions (well under 2 minutes).
	Quick bool
	// K8sBin is the directory holding kube-apiserver, etcd and kubectl;
	// default <repo>/_out/bin.
	K8sBin string
	// Log receives progress lines; may be nil.
	Log io.Writer
}

// Stats summarizes samples in milliseconds (nearest-rank percentiles).
type Stats struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// PropagationRow is one cluster size's propagation figures.
type PropagationRow struct {
	// Pods in the API (3 of them with network namespaces on the agent's
	// node); Policies in the API when the flips ran.
	Pods     int `json:"pods"`
	Policies int `json:"policies"`
	// Apply and Delete: kubectl apply / delete started -> first probe
	// whose verdict changed, one sample per flip (ms).
	Apply []float64 `json:"apply_ms"`
	// Delete: see Apply.
	Delete []float64 `json:"delete_ms"`
	// ClientCreate and ClientDelete: the same through client-go (Create,
	// Delete), without kubectl's process start and discovery.
	ClientCreate []float64 `json:"client_create_ms"`
	ClientDelete []float64 `json:"client_delete_ms"`
	// Node: the agent's zt_policy_propagation_seconds for each of those
	// changes (ms): watch event arrival -> map writes done.
	Node []float64 `json:"node_ms"`
	// NodeBatched counts changes whose agent-side figure is the mean of
	// several observations (other events came in the same window).
	NodeBatched       int   `json:"node_batched"`
	ApplyStats        Stats `json:"apply"`
	DeleteStats       Stats `json:"delete"`
	ClientCreateStats Stats `json:"client_create"`
	ClientDeleteStats Stats `json:"client_delete"`
	NodeStats         Stats `json:"node"`
	// GrowSeconds: creating the bulk pods through the API; SettleSeconds:
	// from the first create until the agent's ipcache held every pod;
	// CatchUpSeconds: a marker policy applied and deleted after them.
	GrowSeconds    float64 `json:"grow_s"`
	SettleSeconds  float64 `json:"settle_s"`
	CatchUpSeconds float64 `json:"catch_up_s"`
}

// GrowRow is one step of adding bulk pods.
type GrowRow struct {
	// Pods in the API after the step; Created of them in this step.
	Pods    int `json:"pods"`
	Created int `json:"created"`
	// Seconds to create them; PodsPerSecond = Created / Seconds.
	Seconds       float64 `json:"seconds"`
	PodsPerSecond float64 `json:"pods_per_second"`
	// SettleSeconds: from the first create until the agent's ipcache
	// held every pod.
	SettleSeconds float64 `json:"settle_s"`
}

// MemoryRow is the agent's memory with a number of pods in the API.
type MemoryRow struct {
	Pods int `json:"pods"`
	// Policies in the API then (the compiled policies weigh too).
	Policies int   `json:"policies"`
	RSSKiB   int64 `json:"vmrss_kib"`
	HWMKiB   int64 `json:"vmhwm_kib"`
	// BytesPerPod is VmRSS / Pods (fixed costs included).
	BytesPerPod float64 `json:"bytes_per_pod"`
}

// CompileRow is one pkg/policy compile on one core.
type CompileRow struct {
	Pods     int `json:"pods"`
	Policies int `json:"policies"`
	// View "node": one node's 100 pods are endpoints (as zt-agent
	// compiles); "cluster": every pod is (as `ztctl compile` does).
	View   string  `json:"view"`
	FullMs float64 `json:"full_ms"`
	// MaxRSSKiB is the child's peak RSS (rusage): generated input,
	// compiler and Go runtime. CompilerHeapBytes is the live heap the
	// built compiler adds to InputHeapBytes (after a GC).
	MaxRSSKiB         int64   `json:"max_rss_kib"`
	InputHeapBytes    uint64  `json:"input_heap_bytes"`
	CompilerHeapBytes uint64  `json:"compiler_heap_bytes"`
	Endpoints         int     `json:"endpoints"`
	Identities        int     `json:"identities"`
	Problems          int     `json:"problems"`
	ChildSeconds      float64 `json:"child_s"`
	// TimedOut: the child was stopped after compileTimeout; no figures.
	TimedOut bool `json:"timed_out"`
	// Relabel: one pod's labels change + Sync; Policy: one policy added
	// or deleted + Sync; Reference: the same with a policy whose ipBlock
	// no other references, which makes or drops a CIDR identity and moves
	// the 128 pod addresses in it to another prefix identity (ms per
	// update).
	RelabelMs   []float64 `json:"relabel_ms"`
	PolicyMs    []float64 `json:"policy_ms"`
	ReferenceMs []float64 `json:"reference_ms"`
	Relabel     Stats     `json:"relabel"`
	Policy      Stats     `json:"policy"`
	Reference   Stats     `json:"reference"`
}

// Target is one goal of issue #7 and whether this run met it.
type Target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	// Measured is false when this run did not reach the size the target
	// names (quick mode); Pass is then false too.
	Measured bool `json:"measured"`
	Pass     bool `json:"pass"`
}

// Report holds the raw figures of one run.
type Report struct {
	Quick bool `json:"quick"`
	// Mode is "quick", "full" or "tiny" (the package's test).
	Mode    string    `json:"mode"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	CPUs    int       `json:"cpus"`
	// AgentSyncInterval is the agent's --min-sync-interval (its default).
	AgentSyncInterval string `json:"agent_sync_interval"`
	// BulkVia says how the API-only pods were created: BulkViaEtcd or
	// BulkViaAPI; Grow has each step's rate.
	BulkVia     string           `json:"bulk_via"`
	Grow        []GrowRow        `json:"grow"`
	Flips       int              `json:"flips"`
	Propagation []PropagationRow `json:"propagation"`
	Memory      []MemoryRow      `json:"memory"`
	// MarginalBytesPerPod is the growth of VmRSS per pod from the
	// MemoryRow of MarginalFrom pods to the largest (MarginalTo pods): the
	// smallest row with as many policies as the largest, so that the
	// compiled policies' memory does not count as the pods'.
	MarginalBytesPerPod float64      `json:"marginal_bytes_per_pod"`
	MarginalFrom        int          `json:"marginal_from_pods"`
	MarginalTo          int          `json:"marginal_to_pods"`
	Compile             []CompileRow `json:"compile"`
	// HoleProbes were made from client to the isolated server while bulk
	// pods were added (outside the flips); Holes of them passed.
	HoleProbes int      `json:"hole_probes"`
	Holes      int      `json:"holes"`
	Targets    []Target `json:"targets"`
}

// compileTimeout bounds one compile child.
const compileTimeout = 5 * time.Minute

type compileCase struct {
	pods, policies int
	view           string
}

// plan is what one run measures.
type plan struct {
	mode     string
	propPods []int // cluster sizes for the flips (and a memory row each)
	flips    int
	memPods  []int // further sizes for memory only
	// policies are added (in bulk namespaces) before the last propagation size.
	bulkPolicies int
	compile      []compileCase
	updates      int
}

func planFor(quick bool) plan {
	if quick {
		return plan{
			mode:     "quick",
			propPods: []int{100, 1000}, flips: 5,
			compile: []compileCase{{10000, 1000, "node"}},
			updates: 20,
		}
	}
	p := plan{
		mode:     "full",
		propPods: []int{100, 1000, 10000}, flips: 20, memPods: []int{100000}, bulkPolicies: 999,
		updates: 50,
	}
	for _, pods := range []int{10000, 100000} {
		for _, pols := range []int{1000, 10000} {
			p.compile = append(p.compile, compileCase{pods, pols, "node"})
			// The cluster view (every pod an endpoint) at 100,000 pods
			// takes minutes on one core: only at 10,000.
			if pods == 10000 {
				p.compile = append(p.compile, compileCase{pods, pols, "cluster"})
			}
		}
	}
	return p
}

// Run measures the control plane (needs root).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	return run(ctx, cfg, planFor(cfg.Quick))
}

func run(ctx context.Context, cfg Config, p plan) (rep *Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("controlplane: must run as root (network namespaces, BPF)")
	}
	t0 := time.Now()
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "controlplane: %5.1fs "+format+"\n", append([]any{time.Since(t0).Seconds()}, args...)...)
		}
	}
	k8sBin := cfg.K8sBin
	if k8sBin == "" {
		root, err := kubeenv.RepoRoot()
		if err != nil {
			return nil, err
		}
		k8sBin = filepath.Join(root, "_out", "bin")
	}
	if err := kubeenv.CheckBinaries(k8sBin); err != nil {
		return nil, err
	}
	via, err := bulkVia()
	if err != nil {
		return nil, err
	}
	rep = &Report{Quick: cfg.Quick, Mode: p.mode, Started: time.Now(), CPUs: runtime.NumCPU(),
		AgentSyncInterval: agentSyncInterval, Flips: p.flips, BulkVia: via}
	logf("building zt-agent, ztlab and the compile child")
	bins, err := buildBinaries(ctx)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bins.dir)

	// The cluster first: the lab is gone before the compiler runs.
	if err := measureCluster(ctx, bins, k8sBin, p, rep, logf); err != nil {
		return nil, err
	}
	for _, c := range p.compile {
		cctx, cancel := context.WithTimeout(ctx, compileTimeout)
		row, err := runCompile(cctx, bins.compilebench, c, p.updates)
		timedOut := cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		cancel()
		if timedOut {
			row = CompileRow{Pods: c.pods, Policies: c.policies, View: c.view, TimedOut: true}
			logf("compile %d pods, %d policies, %s view: not done after %s", c.pods, c.policies, c.view, compileTimeout)
		} else if err != nil {
			return nil, err
		} else {
			logf("compile %d pods, %d policies, %s view: full %.0f ms, peak RSS %d KiB; relabel p99 %.2f ms, policy p99 %.2f ms, new ipBlock p99 %.2f ms",
				c.pods, c.policies, c.view, row.FullMs, row.MaxRSSKiB, row.Relabel.P99, row.Policy.P99, row.Reference.P99)
		}
		rep.Compile = append(rep.Compile, row)
	}
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.Targets = targets(rep)
	return rep, nil
}

func measureCluster(ctx context.Context, bins binaries, k8sBin string, p plan, rep *Report, logf func(string, ...any)) (err error) {
	logf("starting a lab (etcd, kube-apiserver, zt-agent, 3 pods)")
	bl, err := startLab(ctx, bins, k8sBin, rep.BulkVia, logf)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := bl.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("lab down: %w", cerr))
		}
	}()
	// Before any flip: the server is isolated, client and other are not let in.
	for _, from := range []string{"client", "other"} {
		passed, blocked, err := bl.probe(ctx, from, time.Second)
		if err != nil {
			return err
		}
		if passed || !blocked {
			return fmt.Errorf("%s -> isolated server before any allow: passed=%v, blocked by zt=%v", from, passed, blocked)
		}
	}
	policies := 1
	memory := func(pods int) error {
		rss, hwm, err := bl.rss()
		if err != nil {
			return err
		}
		rep.Memory = append(rep.Memory, MemoryRow{Pods: pods, Policies: policies, RSSKiB: rss, HWMKiB: hwm, BytesPerPod: float64(rss) * 1024 / float64(pods)})
		logf("%d pods, %d policies: agent VmRSS %d KiB, VmHWM %d KiB", pods, policies, rss, hwm)
		return nil
	}
	grow := func(pods int) (PropagationRow, error) {
		row := PropagationRow{Pods: pods}
		// client must never reach the isolated server while pods arrive.
		stop := bl.holeWatch(ctx)
		defer func() { rep.HoleProbes += stop() }()
		start := time.Now()
		before := bl.created
		if err := bl.grow(ctx, pods-localPods); err != nil {
			return row, err
		}
		row.GrowSeconds = time.Since(start).Seconds()
		if err := bl.settle(ctx, 10*time.Minute); err != nil {
			return row, err
		}
		row.SettleSeconds = time.Since(start).Seconds()
		g := GrowRow{Pods: pods, Created: bl.created - before, Seconds: row.GrowSeconds, SettleSeconds: row.SettleSeconds}
		if g.Seconds > 0 {
			g.PodsPerSecond = float64(g.Created) / g.Seconds
		}
		rep.Grow = append(rep.Grow, g)
		cu, err := bl.catchUp(ctx, 5*time.Minute)
		if err != nil {
			return row, err
		}
		row.CatchUpSeconds = cu.Seconds()
		logf("%d pods in the API: %d created (%s) in %.1f s (%.0f pods/s), in the agent's ipcache after %.1f s, caught up in %.1f s",
			pods, g.Created, rep.BulkVia, row.GrowSeconds, g.PodsPerSecond, row.SettleSeconds, row.CatchUpSeconds)
		return row, nil
	}
	for i, pods := range p.propPods {
		if i == len(p.propPods)-1 && p.bulkPolicies > 0 {
			if err := bl.createPolicies(ctx, p.bulkPolicies); err != nil {
				return err
			}
			policies += p.bulkPolicies
		}
		row, err := grow(pods)
		if err != nil {
			return err
		}
		row.Policies = policies
		for range p.flips {
			if err := bl.flip(ctx, &row); err != nil {
				return fmt.Errorf("%d pods: %w", pods, err)
			}
		}
		row.ApplyStats, row.DeleteStats, row.NodeStats = summarize(row.Apply), summarize(row.Delete), summarize(row.Node)
		row.ClientCreateStats, row.ClientDeleteStats = summarize(row.ClientCreate), summarize(row.ClientDelete)
		logf("%d pods: kubectl apply -> enforced p50 %.1f ms p99 %.1f ms; delete p50 %.1f ms p99 %.1f ms; client create p50 %.1f ms p99 %.1f ms; node p50 %.1f ms p99 %.1f ms",
			pods, row.ApplyStats.P50, row.ApplyStats.P99, row.DeleteStats.P50, row.DeleteStats.P99,
			row.ClientCreateStats.P50, row.ClientCreateStats.P99, row.NodeStats.P50, row.NodeStats.P99)
		rep.Propagation = append(rep.Propagation, row)
		if err := memory(pods); err != nil {
			return err
		}
	}
	for _, pods := range p.memPods {
		if _, err := grow(pods); err != nil {
			return err
		}
		if err := memory(pods); err != nil {
			return err
		}
	}
	// Still enforced after all of it.
	if passed, blocked, err := bl.probe(ctx, "client", time.Second); err != nil || passed || !blocked {
		return fmt.Errorf("client -> isolated server after the flips: passed=%v, blocked by zt=%v (%v)", passed, blocked, err)
	}
	rep.Holes = int(bl.holes.Load())
	if rep.Holes > 0 {
		return fmt.Errorf("client reached the isolated server %d times (of %d probes) while pods were added", rep.Holes, rep.HoleProbes)
	}
	marginal(rep)
	return nil
}

// marginal sets the report's VmRSS growth per pod: from the smallest
// memory row with as many policies as the largest row (the first row
// when there is no other) to the largest.
func marginal(rep *Report) {
	n := len(rep.Memory)
	if n < 2 {
		return
	}
	b := rep.Memory[n-1]
	a := rep.Memory[0]
	for _, m := range rep.Memory[:n-1] {
		if m.Policies == b.Policies {
			a = m
			break
		}
	}
	if b.Pods == a.Pods {
		return
	}
	rep.MarginalFrom, rep.MarginalTo = a.Pods, b.Pods
	rep.MarginalBytesPerPod = float64(b.RSSKiB-a.RSSKiB) * 1024 / float64(b.Pods-a.Pods)
}

// summarize gives nearest-rank percentiles of samples.
func summarize(samples []float64) Stats {
	if len(samples) == 0 {
		return Stats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := func(p int) float64 {
		k := (p*len(s) + 99) / 100
		return s[min(max(k, 1), len(s))-1]
	}
	return Stats{N: len(s), P50: rank(50), P99: rank(99), Max: s[len(s)-1]}
}

func targets(r *Report) []Target {
	var ts []Target
	// kubectl apply -> enforced at 10,000 pods.
	t := Target{Name: "kubectl apply -> enforced, p99 at 10,000 pods", Want: "<= 1 s"}
	for _, row := range r.Propagation {
		if row.Pods == 10000 {
			t.Measured, t.Got = true, fmt.Sprintf("%.0f ms", row.ApplyStats.P99)
			t.Pass = row.ApplyStats.P99 <= 1000
		}
	}
	ts = append(ts, t)
	// Node side at the largest size.
	t = Target{Name: "watch event -> map write on the node, p99", Want: "<= 100 ms"}
	if n := len(r.Propagation); n > 0 {
		row := r.Propagation[n-1]
		t.Measured = row.Pods >= 10000
		t.Got = fmt.Sprintf("%.1f ms at %d pods", row.NodeStats.P99, row.Pods)
		t.Pass = t.Measured && row.NodeStats.P99 <= 100
	}
	ts = append(ts, t)
	t = Target{Name: "agent memory per pod (VmRSS growth)", Want: "<= 5 KiB"}
	if n := len(r.Memory); n >= 2 {
		t.Measured = r.Memory[n-1].Pods >= 10000
		t.Got = fmt.Sprintf("%.2f KiB (%d -> %d pods)", r.MarginalBytesPerPod/1024, r.MarginalFrom, r.MarginalTo)
		t.Pass = t.Measured && r.MarginalBytesPerPod <= 5*1024
	}
	ts = append(ts, t)
	t = Target{Name: "full compile, 10,000 pods + 1,000 policies, one core (agent's node view)", Want: "< 1 s"}
	t2 := Target{Name: "incremental update (pod relabel, or policy add/delete + Sync, one with a new ipBlock too), p99 at 10,000 pods", Want: "< 10 ms"}
	for _, c := range r.Compile {
		if c.Pods == 10000 && c.Policies == 1000 && c.View == "node" {
			t.Measured, t.Got, t.Pass = true, fmt.Sprintf("%.0f ms", c.FullMs), c.FullMs < 1000
			worst := max(c.Relabel.P99, c.Policy.P99, c.Reference.P99)
			t2.Measured = true
			t2.Got = fmt.Sprintf("relabel %.2f ms, policy %.2f ms, new ipBlock %.2f ms", c.Relabel.P99, c.Policy.P99, c.Reference.P99)
			t2.Pass = worst < 10
		}
	}
	return append(ts, t, t2)
}
