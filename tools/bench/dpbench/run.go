// Package dpbench measures zt's datapath side by side with no
// enforcement, iptables, iptables + ipset and nftables, on network
// namespaces of this machine (root required).
//
//	node netns (one per configuration, all alive during a run of one N)
//	  ├─ zb0 ══ server pod  10.201.0.1  echo :7000, iperf3 :7001 (CPU serverCPU)
//	  ├─ zb1 ══ client pod  10.202.0.2  the probing client, last of the N peers (CPU clientCPU)
//	  └─ zb2 ══ denied pod  10.203.0.3  not allowed: must be blocked
//
// Enforcement lives in the node namespace (netfilter) or on its host
// veths (zt's tcx programs), so every configuration sees the same packets
// and each namespace holds only its own rules. Repetitions visit the
// configurations in a rotating order, so drift of a busy machine spreads
// over all of them, and every figure is a ratio to the baseline of the
// same repetition.
package dpbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/internal/netnsutil"
	"github.com/ztnet/zt/internal/stats"
	"github.com/ztnet/zt/pkg/datapath"
)

// Options shape a run.
type Options struct {
	Ns       []int         // rule counts
	Reps     int           // alternating repetitions per N
	Duration time.Duration // per TCP_RR / TCP_CRR measurement
	Warmup   time.Duration // before each measurement
	// Slot is how long the client stays on one configuration before
	// taking the next, while TCP_RR or TCP_CRR take turns (runMix).
	Slot    time.Duration
	Iperf   time.Duration // per iperf3 measurement; 0 skips bulk throughput
	Changes int           // timed rule changes per N and configuration (at most)
	// ChangeBudget stops timing rule changes of a configuration after
	// this long (at least 1 is timed): an iptables change at 100k rules
	// takes seconds.
	ChangeBudget time.Duration
	// RawWrites is the number of bare zt policy map writes timed per N.
	RawWrites int
	// ClientCPU and ServerCPU pin the client and server processes (taskset).
	ClientCPU, ServerCPU int
	// RTPrio > 0 runs client and server with SCHED_FIFO at this priority.
	RTPrio   int
	Iptables string   // iptables binary: iptables (nf_tables) or iptables-legacy
	Configs  []string // default Configs
	// CheckOnly installs every configuration and checks enforcement,
	// measuring nothing.
	CheckOnly bool
	Log       io.Writer
}

// Metric is one measured quantity of one configuration at one N, per
// repetition, and as a ratio to the baseline of the same repetition.
type Metric struct {
	Values      []float64 `json:"values"`           // per repetition
	Median      float64   `json:"median"`           // of Values
	Ratios      []float64 `json:"ratios,omitempty"` // to "none" of the same repetition
	RatioMedian float64   `json:"ratio_median"`     // median of Ratios
	RatioMin    float64   `json:"ratio_min"`        // noise: min of Ratios
	RatioMax    float64   `json:"ratio_max"`        // noise: max of Ratios
	P50ns       float64   `json:"p50_ns,omitempty"` // median over repetitions
	P99ns       float64   `json:"p99_ns,omitempty"` // median over repetitions
	AddedP50ns  float64   `json:"added_p50_ns"`     // median of (p50 - baseline p50)
	AddedP99ns  float64   `json:"added_p99_ns"`     // median of (p99 - baseline p99)
	p50s, p99s  []float64
	addedP50    []float64
	addedP99    []float64
}

// Point is one configuration at one N.
type Point struct {
	N         int     `json:"n"`
	Config    string  `json:"config"`
	Enforces  bool    `json:"enforces"` // probing client passed, denied client blocked (or passed for none)
	RR        Metric  `json:"tcp_rr"`   // transactions/s
	CRR       Metric  `json:"tcp_crr"`  // transactions/s
	Bulk      Metric  `json:"bulk"`     // iperf3 bits/s
	InstallMs float64 `json:"install_ms"`
	// ChangeP50us/P99us: one rule change (add or remove one peer) as the
	// tool does it: exec of iptables-restore, ipset, nft; for zt the
	// mapsync ApplyDelta (one key's plan + 2 map writes).
	ChangeP50us   float64 `json:"change_p50_us"`
	ChangeP99us   float64 `json:"change_p99_us"`
	ChangeSamples int     `json:"change_samples"`
	// zt only.
	RawChangeP50us float64 `json:"raw_change_p50_us,omitempty"` // the 2 map writes alone
	RawChangeP99us float64 `json:"raw_change_p99_us,omitempty"`
	RawSamples     int     `json:"raw_samples,omitempty"`
	ProgNsPerRun   float64 `json:"prog_ns_per_run,omitempty"` // tc program run_time_ns / run_cnt during TCP_RR
	ProgRunsPerTxn float64 `json:"prog_runs_per_txn,omitempty"`
	// ProgNsPerCRR: the tc programs' run time per TCP_CRR transaction
	// (a connection opened, one byte each way, closed), over
	// ProgRunsPerCRR runs: what a new connection costs in zt's programs.
	ProgNsPerCRR   float64 `json:"prog_ns_per_crr,omitempty"`
	ProgRunsPerCRR float64 `json:"prog_runs_per_crr,omitempty"`
	// StealMax is the largest share of the machine's CPU time the
	// hypervisor took during one of this point's samples (steal.go),
	// Resampled how many samples were measured again because of it.
	StealMax           float64 `json:"steal_max"`
	Resampled          int     `json:"resampled"`
	PolicyEntries      int     `json:"policy_entries,omitempty"`
	PolicyBytesPerEnt  float64 `json:"policy_bytes_per_entry,omitempty"`  // memlock loaded / entries
	IPCacheBytesPerEnt float64 `json:"ipcache_bytes_per_entry,omitempty"` // memlock loaded / entries
	// EmptyProgNsPerRun is the floor of ProgNsPerRun on this machine: the
	// same figure for a tc program that only returns TC_ACT_UNSPEC,
	// attached with tcx on the same host veths of the "none" topology and
	// measured right before zt's programs (only when "none" ran too).
	// What the statistics themselves, the call into a program and the
	// CPU's mitigations cost is in it; ProgNsPerRun - EmptyProgNsPerRun
	// is what zt's programs add.
	EmptyProgNsPerRun float64 `json:"empty_prog_ns_per_run,omitempty"`
	// ProgNsMin/Max and EmptyProgNsMin/Max: the range of the progReps
	// measurements whose medians the two figures above are.
	ProgNsMin      float64 `json:"prog_ns_min,omitempty"`
	ProgNsMax      float64 `json:"prog_ns_max,omitempty"`
	EmptyProgNsMin float64 `json:"empty_prog_ns_min,omitempty"`
	EmptyProgNsMax float64 `json:"empty_prog_ns_max,omitempty"`
	// WarmReqNs and WarmReplyNs: ns per packet (both programs a packet
	// crosses) of an established flow's request and reply with warm
	// caches (BPF_PROG_RUN repeating one packet; ztEnforcer.warmCost).
	WarmReqNs   float64 `json:"warm_req_ns,omitempty"`
	WarmReplyNs float64 `json:"warm_reply_ns,omitempty"`
	// EmptyWarmNs: the empty program's time per run in the same
	// BPF_PROG_RUN loop (the floor of one of the two runs in WarmReqNs).
	EmptyWarmNs float64 `json:"empty_warm_ns,omitempty"`
}

// Result is the datapath half of the report.
type Result struct {
	Options   Options `json:"options"`
	Points    []Point `json:"points"`
	IptablesV string  `json:"iptables_version"`
}

// DefaultSlot is Options.Slot's default: a few hundred transactions,
// short beside the seconds over which this machine's speed drifts.
const DefaultSlot = 20 * time.Millisecond

type runner struct {
	opts Options
	self string
	ctx  context.Context
}

func (r *runner) logf(format string, args ...any) {
	if r.opts.Log != nil {
		fmt.Fprintf(r.opts.Log, format+"\n", args...)
	}
}

// Run measures every configuration at every N.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if len(opts.Configs) == 0 {
		opts.Configs = Configs
	}
	if opts.Configs[0] != CfgNone {
		return nil, errors.New("the first configuration must be the baseline \"none\"")
	}
	if opts.Iptables == "" {
		opts.Iptables = "iptables"
	}
	if opts.Reps <= 0 {
		opts.Reps = 1
	}
	if opts.Slot <= 0 {
		opts.Slot = DefaultSlot
	}

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r := &runner{opts: opts, self: self, ctx: ctx}
	res := &Result{Options: opts}
	if v, err := runIn(ctx, -1, nil, opts.Iptables, "-V"); err == nil {
		res.IptablesV = string(bytes.TrimSpace(v))
	}
	for _, n := range opts.Ns {
		pts, err := r.runN(n)
		if err != nil {
			return res, fmt.Errorf("N=%d: %w", n, err)
		}
		res.Points = append(res.Points, pts...)
	}
	return res, nil
}

type live struct {
	cfg string
	t   *topo
	e   enforcer
	pt  *Point
}

func (r *runner) runN(n int) (_ []Point, err error) {
	peers := peerAddrs(n)
	var all []*live
	defer func() {
		for _, l := range all {
			var cerr error
			if l.e != nil {
				cerr = netnsutil.Do(l.t.node, l.e.close)
			}
			err = errors.Join(err, cerr, l.t.close())
		}
	}()
	for _, cfg := range r.opts.Configs {
		t, err := newTopo()
		if err != nil {
			return nil, fmt.Errorf("%s: topology: %w", cfg, err)
		}
		l := &live{cfg: cfg, t: t, pt: &Point{N: n, Config: cfg}}
		all = append(all, l)
		if err := t.startServers(r.opts.ServerCPU, r.opts.RTPrio, r.iperfRT()); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg, err)
		}
		if err := r.waitConnected(t); err != nil {
			return nil, fmt.Errorf("%s: before enforcement: %w", cfg, err)
		}
		if l.e, err = newEnforcer(cfg, r.opts.Iptables); err != nil {
			return nil, err
		}
		took, err := l.e.install(r.ctx, t, peers)
		if err != nil {
			return nil, fmt.Errorf("%s: install %d rules: %w", cfg, n, err)
		}
		l.pt.InstallMs = float64(took.Microseconds()) / 1000
		if err := r.checkEnforced(l); err != nil {
			return nil, fmt.Errorf("%s: N=%d: %w", cfg, n, err)
		}
		l.pt.Enforces = true
		r.logf("N=%d %-9s installed in %.1f ms, enforces", n, cfg, l.pt.InstallMs)
		if enforcing(cfg) && r.opts.Changes > 0 {
			if err := r.timeChanges(l); err != nil {
				return nil, fmt.Errorf("%s: rule changes: %w", cfg, err)
			}
			// The extra peer is gone again: still the same enforcement.
			if err := r.checkEnforced(l); err != nil {
				return nil, fmt.Errorf("%s: after rule changes: %w", cfg, err)
			}
		}
		if ze, ok := l.e.(*ztEnforcer); ok {
			l.pt.PolicyEntries = ze.entries
			// All the memory the maps hold, per entry: a preallocated
			// hash costs its capacity, empty or not.
			l.pt.PolicyBytesPerEnt = float64(ze.memFull.Policy) / float64(ze.entries)
			l.pt.IPCacheBytesPerEnt = float64(ze.memFull.IPCache) / float64(len(ze.state.IPCache))
		}
	}
	if r.opts.CheckOnly {
		return points(all), nil
	}
	type sample struct {
		rr, crr clientResult
		bulk    float64
	}
	for rep := 0; rep < r.opts.Reps; rep++ {
		got := map[string]sample{}
		for attempt := 0; ; attempt++ {
			sm := newStealMeter(runtime.NumCPU())
			// Rates and latencies: every configuration in one client
			// process, taking turns in short slots (runMix).
			rr, err := r.mix("rr", all, rep)
			if err != nil {
				return nil, fmt.Errorf("TCP_RR: %w", err)
			}
			crr, err := r.mix("crr", all, rep)
			if err != nil {
				return nil, fmt.Errorf("TCP_CRR: %w", err)
			}
			for i, l := range all {
				got[l.cfg] = sample{rr: rr[i], crr: crr[i]}
			}
			// Bulk: iperf3 runs whole, in an order rotated every
			// repetition.
			if r.opts.Iperf > 0 {
				for i := range all {
					l := all[(i+rep)%len(all)]
					s := got[l.cfg]
					if s.bulk, err = r.iperf(l.t); err != nil {
						return nil, fmt.Errorf("%s: iperf3: %w", l.cfg, err)
					}
					got[l.cfg] = s
				}
			}
			stolen := sm.share()
			if stolen <= maxSteal || attempt == stealRetries {
				for _, l := range all {
					l.pt.StealMax = max(l.pt.StealMax, stolen) // of the samples kept
				}
				break
			}
			for _, l := range all {
				l.pt.Resampled++
			}
			r.logf("N=%d rep %d/%d: the hypervisor took %.1f%% of the CPU time during the sample: measuring it again",
				n, rep+1, r.opts.Reps, 100*stolen)
		}
		base := got[CfgNone]
		for _, l := range all {
			s := got[l.cfg]
			addRR(&l.pt.RR, s.rr, base.rr)
			addRR(&l.pt.CRR, s.crr, base.crr)
			if r.opts.Iperf > 0 {
				addValue(&l.pt.Bulk, s.bulk, base.bulk)
			}
		}
		r.logf("N=%d rep %d/%d: TCP_RR/s %s", n, rep+1, r.opts.Reps, summary(all, func(s sample) float64 { return s.rr.rate() }, got))
	}
	var none *live
	for _, l := range all {
		if l.cfg == CfgNone {
			none = l
		}
	}
	for _, l := range all {
		for _, m := range []*Metric{&l.pt.RR, &l.pt.CRR, &l.pt.Bulk} {
			m.finish()
		}
		if ze, ok := l.e.(*ztEnforcer); ok {
			if err := r.progCosts(n, l, ze, none); err != nil {
				return nil, err
			}
		}
	}
	return points(all), nil
}

func points(all []*live) []Point {
	out := make([]Point, 0, len(all))
	for _, l := range all {
		out = append(out, *l.pt)
	}
	return out
}

func summary[S any](all []*live, f func(S) float64, got map[string]S) string {
	var b bytes.Buffer
	for _, l := range all {
		fmt.Fprintf(&b, "%s=%.0f ", l.cfg, f(got[l.cfg]))
	}
	return b.String()
}

func (c clientResult) rate() float64 {
	if c.Seconds == 0 {
		return 0
	}
	return float64(c.Transactions) / c.Seconds
}

func addRR(m *Metric, s, base clientResult) {
	addValue(m, s.rate(), base.rate())
	m.p50s = append(m.p50s, s.P50ns)
	m.p99s = append(m.p99s, s.P99ns)
	// Latency is added relative to this repetition's baseline.
	m.addedP50 = append(m.addedP50, s.P50ns-base.P50ns)
	m.addedP99 = append(m.addedP99, s.P99ns-base.P99ns)
}

func addValue(m *Metric, v, base float64) {
	m.Values = append(m.Values, v)
	if base > 0 {
		m.Ratios = append(m.Ratios, v/base)
	}
}

func (m *Metric) finish() {
	m.Median = stats.Median(m.Values)
	m.RatioMedian = stats.Median(m.Ratios)
	if len(m.Ratios) > 0 {
		m.RatioMin, m.RatioMax = slices.Min(m.Ratios), slices.Max(m.Ratios)
	}
	m.P50ns, m.P99ns = stats.Median(m.p50s), stats.Median(m.p99s)
	m.AddedP50ns, m.AddedP99ns = stats.Median(m.addedP50), stats.Median(m.addedP99)
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// waitConnected waits until both clients reach the server: a fresh veth
// drops packets until its qdisc is activated, which is no policy.
func (r *runner) waitConnected(t *topo) error {
	dst := netip.AddrPortFrom(serverIP4, rrPort)
	for _, p := range []*pod{t.client, t.denied} {
		var err error
		for i := 0; i < 50; i++ {
			if err = t.dial(p, dst, 200*time.Millisecond); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("%s cannot reach the server: %w", p.name, err)
		}
	}
	return nil
}

// checkEnforced proves with real connections that the probing client
// reaches the server on both ports and that the denied client is blocked
// (passes without enforcement).
func (r *runner) checkEnforced(l *live) error {
	t := l.t
	// Port 7000 only: iperf3 -s takes any connection for a test, and the
	// iperf3 runs themselves fail if 7001 is blocked.
	if err := t.dial(t.client, netip.AddrPortFrom(serverIP4, rrPort), 2*time.Second); err != nil {
		return fmt.Errorf("allowed client blocked: %w", err)
	}
	err := t.dial(t.denied, netip.AddrPortFrom(serverIP4, rrPort), 300*time.Millisecond)
	if !enforcing(l.cfg) {
		if err != nil {
			return fmt.Errorf("without enforcement the other client is blocked: %w", err)
		}
		return nil
	}
	if err == nil {
		return errors.New("a client outside the allowed set reached the server: not enforcing")
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, unix.ECONNREFUSED) && !isTimeout(err) {
		return fmt.Errorf("denied client: unexpected error %w", err)
	}
	return nil
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// client runs one TCP_RR or TCP_CRR measurement from the client pod.
func (r *runner) client(t *topo, mode string) (clientResult, error) {
	var res clientResult
	ctx, cancel := context.WithTimeout(r.ctx, r.opts.Warmup+r.opts.Duration+30*time.Second)
	defer cancel()
	cmd := pinned(ctx, r.opts.ClientCPU, r.opts.RTPrio, r.self, netip.AddrPortFrom(serverIP4, rrPort).String(),
		r.opts.Duration.String(), r.opts.Warmup.String())
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := netnsutil.Do(t.client.ns, cmd.Start); err != nil {
		return res, err
	}
	if err := cmd.Wait(); err != nil {
		return res, fmt.Errorf("%w: %s", err, bytes.TrimSpace(errb.Bytes()))
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return res, fmt.Errorf("client output %q: %w", out.String(), err)
	}
	if res.Transactions == 0 {
		return res, errors.New("no transaction completed")
	}
	return res, nil
}

// mix runs TCP_RR or TCP_CRR from the client pod of every configuration
// in one client process that takes turns among them in slots of
// opts.Slot until each has had opts.Duration (runMix), and returns their
// results in the order of all. rep rotates which configuration goes
// first.
func (r *runner) mix(mode string, all []*live, rep int) ([]clientResult, error) {
	order := make([]*live, len(all))
	for i := range all {
		order[i] = all[(i+rep)%len(all)]
	}
	files := make([]*os.File, 0, len(order))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, l := range order {
		// Close-on-exec until exec.Cmd hands it to this child only.
		fd, err := unix.FcntlInt(uintptr(l.t.client.ns), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		files = append(files, os.NewFile(uintptr(fd), "netns"))
	}
	total := time.Duration(len(all)) * (r.opts.Warmup + r.opts.Duration)
	ctx, cancel := context.WithTimeout(r.ctx, total+30*time.Second)
	defer cancel()
	cmd := pinned(ctx, r.opts.ClientCPU, r.opts.RTPrio, r.self, mode, netip.AddrPortFrom(serverIP4, rrPort).String(),
		r.opts.Duration.String(), r.opts.Warmup.String(), r.opts.Slot.String(), strconv.Itoa(len(order)))
	cmd.Env = append(os.Environ(), childEnv+"=mix")
	cmd.ExtraFiles = files // descriptors mixFirstFD...
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%w: %s", err, bytes.TrimSpace(errb.Bytes()))
	}
	var res []clientResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("client output %q: %w", out.String(), err)
	}
	if len(res) != len(order) {
		return nil, fmt.Errorf("client measured %d configurations, want %d", len(res), len(order))
	}
	byCfg := map[string]clientResult{}
	for i, l := range order {
		ino, err := inode(l.t.client.ns)
		if err != nil {
			return nil, err
		}
		if res[i].Netns != ino {
			return nil, fmt.Errorf("%s: the client measured namespace %d in its place, want %d", l.cfg, res[i].Netns, ino)
		}
		if res[i].Transactions == 0 {
			return nil, fmt.Errorf("%s: no transaction completed", l.cfg)
		}
		byCfg[l.cfg] = res[i]
	}
	out2 := make([]clientResult, len(all))
	for i, l := range all {
		out2[i] = byCfg[l.cfg]
	}
	return out2, nil
}

// iperfRT is the SCHED_FIFO priority of iperf3: a bulk sender never
// blocks, so only when client and server have a CPU each (the kernel's
// RT throttling leaves other work 5% of each for the seconds it runs).
func (r *runner) iperfRT() int {
	if r.opts.ClientCPU == r.opts.ServerCPU {
		return 0
	}
	return r.opts.RTPrio
}

// iperf runs iperf3 from the client pod and returns received bits/s.
func (r *runner) iperf(t *topo) (float64, error) {
	secs := max(1, int(r.opts.Iperf.Round(time.Second)/time.Second))
	ctx, cancel := context.WithTimeout(r.ctx, time.Duration(secs)*time.Second+20*time.Second)
	defer cancel()
	cmd := pinned(ctx, r.opts.ClientCPU, r.iperfRT(), "iperf3", "-c", serverIP4.String(), "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(secs), "-J")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := netnsutil.Do(t.client.ns, cmd.Start); err != nil {
		return 0, err
	}
	werr := cmd.Wait()
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w (exit: %v)", err, werr)
	}
	if res.Error != "" || werr != nil {
		return 0, fmt.Errorf("iperf3: %s %v", res.Error, werr)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}

// timeChanges adds and removes one peer opts.Changes times.
func (r *runner) timeChanges(l *live) error {
	var d []float64
	count := 0
	start := time.Now()
	for i := 0; i < r.opts.Changes; i++ {
		if i >= 1 && r.opts.ChangeBudget > 0 && time.Since(start) > r.opts.ChangeBudget {
			break
		}
		count++
		took, err := l.e.change(r.ctx, l.t, extraPeer, i%2 == 0)
		if err != nil {
			return err
		}
		d = append(d, float64(took.Nanoseconds())/1000)
	}
	if count%2 == 1 { // leave the extra peer out
		if _, err := l.e.change(r.ctx, l.t, extraPeer, false); err != nil {
			return err
		}
	}
	l.pt.ChangeP50us, l.pt.ChangeP99us, l.pt.ChangeSamples = percentile(d, 0.5), percentile(d, 0.99), len(d)
	if ze, ok := l.e.(*ztEnforcer); ok {
		raw, err := ze.rawWrites(max(2, r.opts.RawWrites))
		if err != nil {
			return err
		}
		l.pt.RawChangeP50us, l.pt.RawChangeP99us, l.pt.RawSamples = percentile(raw, 0.5), percentile(raw, 0.99), len(raw)
	}
	return nil
}

// progReps is how many times the program cost is measured (at most;
// never more than the repetitions of the rates).
const progReps = 3

// progCosts measures the programs' cost per run: the empty program's (the
// floor, when none ran) and zt's, back to back so that drift of the
// machine between them stays small, progReps times; the medians go to the
// point with their min–max. Then zt's cost with warm caches, once (its
// loop of a single packet barely varies).
func (r *runner) progCosts(n int, l *live, ze *ztEnforcer, none *live) error {
	var zt, empty, emptyWarm, runs, crr, crrRuns []float64
	for range max(1, min(progReps, r.opts.Reps)) {
		if none != nil {
			e, w, err := r.emptyProgCost(n, none.t)
			if err != nil {
				return fmt.Errorf("empty program cost: %w", err)
			}
			empty, emptyWarm = append(empty, e), append(emptyWarm, w)
		}
		z, perTxn, err := r.progCost(l, ze, "rr")
		if err != nil {
			return fmt.Errorf("zt: program cost: %w", err)
		}
		zt, runs = append(zt, z), append(runs, perTxn)
		z, perTxn, err = r.progCost(l, ze, "crr")
		if err != nil {
			return fmt.Errorf("zt: program cost, TCP_CRR: %w", err)
		}
		crr, crrRuns = append(crr, z*perTxn), append(crrRuns, perTxn)
	}
	p := l.pt
	p.ProgNsPerRun, p.ProgNsMin, p.ProgNsMax = percentile(zt, 0.5), slices.Min(zt), slices.Max(zt)
	p.ProgRunsPerTxn = percentile(runs, 0.5)
	p.ProgNsPerCRR, p.ProgRunsPerCRR = percentile(crr, 0.5), percentile(crrRuns, 0.5)
	if len(empty) > 0 {
		p.EmptyProgNsPerRun, p.EmptyProgNsMin, p.EmptyProgNsMax = percentile(empty, 0.5), slices.Min(empty), slices.Max(empty)
		p.EmptyWarmNs = percentile(emptyWarm, 0.5)
	}
	var err error
	if p.WarmReqNs, p.WarmReplyNs, err = ze.warmCost(l.t); err != nil {
		return fmt.Errorf("zt: warm program cost: %w", err)
	}
	r.logf("N=%d zt        warm caches (BPF_PROG_RUN): %.0f ns per request packet, %.0f per reply packet", n, p.WarmReqNs, p.WarmReplyNs)
	return nil
}

// progCost runs one more TCP_RR or TCP_CRR (mode) with BPF run-time
// statistics on and returns the programs' run time divided by their run
// count, and their runs per transaction. Statistics are off during the
// rate measurements: they cost time themselves.
func (r *runner) progCost(l *live, ze *ztEnforcer, mode string) (nsPerRun, runsPerTxn float64, err error) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return 0, 0, fmt.Errorf("enable bpf stats: %w", err)
	}
	defer stats.Close()
	c0, ns0, err := ze.progStats(l.t)
	if err != nil {
		return 0, 0, err
	}
	res, err := r.client(l.t, mode)
	if err != nil {
		return 0, 0, err
	}
	c1, ns1, err := ze.progStats(l.t)
	if err != nil {
		return 0, 0, err
	}
	if c1 <= c0 {
		return 0, 0, errors.New("the programs did not run")
	}
	nsPerRun, runsPerTxn = float64(ns1-ns0)/float64(c1-c0), float64(c1-c0)/float64(res.Transactions)
	r.logf("N=%d zt        program %.0f ns per run, %.2f runs per %s transaction", l.pt.N, nsPerRun, runsPerTxn, modeName(mode))
	return nsPerRun, runsPerTxn, nil
}

// emptyProgCost measures the floor of progCost on this machine: a tc
// program that only returns TC_ACT_UNSPEC, attached with tcx where zt
// attaches its programs (ingress and egress of the host veths of t, a
// topology without enforcement), timed the same way during one TCP_RR.
// It returns run_time_ns / run_cnt; the program is detached and closed
// before it returns.
func (r *runner) emptyProgCost(n int, t *topo) (_, warmNs float64, err error) {
	prog, err := emptyProg()
	if err != nil {
		return 0, 0, err
	}
	defer prog.Close()
	links, err := attachEverywhere(t, prog)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, closeLinks(links)) }() // detach before the program is closed
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return 0, 0, fmt.Errorf("enable bpf stats: %w", err)
	}
	defer stats.Close()
	s0, err := prog.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("program stats: %w", err)
	}
	res, err := r.client(t, "rr")
	if err != nil {
		return 0, 0, err
	}
	s1, err := prog.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("program stats: %w", err)
	}
	if s1.RunCount <= s0.RunCount {
		return 0, 0, errors.New("the empty program did not run")
	}
	runs := s1.RunCount - s0.RunCount
	ns := float64((s1.Runtime - s0.Runtime).Nanoseconds()) / float64(runs)
	r.logf("N=%d empty     program %.0f ns per run, %.2f runs per TCP_RR transaction (the floor, on none's topology)",
		n, ns, float64(runs)/float64(res.Transactions))
	// The floor of warmCost too: the same BPF_PROG_RUN loop on the
	// request frame, on the server's host veth, statistics off.
	stats.Close()
	frame := pkttestPacket(t.client.ip4, t.server.ip4, 45678, rrPort)
	var warm time.Duration
	err = netnsutil.Do(t.node, func() (err error) {
		_, warm, err = datapath.RunTC(prog, t.server.hostIfindex, frame, warmRepeat)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("run the empty program: %w", err)
	}
	r.logf("N=%d empty     program %d ns per run with warm caches (BPF_PROG_RUN)", n, warm.Nanoseconds())
	return ns, float64(warm.Nanoseconds()), nil
}

func modeName(mode string) string {
	if mode == "crr" {
		return "TCP_CRR"
	}
	return "TCP_RR"
}
