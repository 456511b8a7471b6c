// Command bench measures zt against no enforcement, iptables, ipset and
// nftables (the datapath half, tools/bench/dpbench) and the control
// plane (tools/bench/controlplane), prints the results and optionally
// writes them as a document with charts and JSON. Run as root:
//
//	go run ./tools/bench --doc docs/benchmarks.md          # full: 10 to 100,000 rules
//	go run ./tools/bench --quick --only datapath           # a few minutes
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztnet/zt/tools/bench/controlplane"
	"github.com/ztnet/zt/tools/bench/dpbench"
)

func main() {
	dpbench.MaybeChild()
	os.Exit(run())
}

// Machine describes where the figures come from.
type Machine struct {
	CPUModel     string `json:"cpu_model"`
	CPUs         int    `json:"cpus"`
	Kernel       string `json:"kernel"`
	LoadAtStart  string `json:"loadavg_at_start"`
	LoadAtFinish string `json:"loadavg_at_finish"`
}

// Output is the JSON the bench writes.
type Output struct {
	Command      string               `json:"command"`
	Started      time.Time            `json:"started"`
	Seconds      float64              `json:"seconds"`
	Machine      Machine              `json:"machine"`
	Datapath     *dpbench.Result      `json:"datapath,omitempty"`
	Targets      []dpbench.Target     `json:"datapath_targets,omitempty"`
	ControlPlane *controlplane.Report `json:"controlplane,omitempty"`
}

func run() int {
	var (
		quick     = flag.Bool("quick", false, "small sizes and short runs (datapath: about 2 minutes)")
		only      = flag.String("only", "", "run only one half: datapath or controlplane")
		doc       = flag.String("doc", "", "write a Markdown report here, with PNG charts and JSON beside it")
		jsonOut   = flag.String("json", "", "write the JSON here (default: the --doc path with .json)")
		nsFlag    = flag.String("n", "", "comma-separated rule counts (default 10,1000,10000,100000; quick 10,100000)")
		reps      = flag.Int("reps", 0, "alternating repetitions per N (default 5; quick 2)")
		dur       = flag.Duration("duration", 0, "per TCP_RR/TCP_CRR measurement (default 1s; quick 0.5s)")
		slot      = flag.Duration("slot", dpbench.DefaultSlot, "TCP_RR/TCP_CRR: how long the client stays on one configuration before taking the next")
		iperf     = flag.Duration("iperf", 0, "per iperf3 measurement, whole seconds (default 1s; quick: none)")
		changes   = flag.Int("changes", 0, "timed rule changes per N and configuration, at most (default 50; quick 10)")
		budget    = flag.Duration("change-budget", 0, "stop timing a configuration's rule changes after this long, at least 1 (default 15s; quick 3s)")
		iptables  = flag.String("iptables", "iptables", "iptables binary: iptables (nf_tables backend here) or iptables-legacy")
		clientCPU = flag.Int("client-cpu", 0, "CPU the client processes are pinned to")
		serverCPU = flag.Int("server-cpu", 1, "CPU the server processes are pinned to")
		configs   = flag.String("configs", "", "comma-separated configurations, none first (default none,zt,iptables,ipset,nftables)")
		rtPrio    = flag.Int("rt", 10, "SCHED_FIFO priority of client and server (chrt -f); 0: normal scheduling")
		checkOnly = flag.Bool("check-only", false, "datapath: install every configuration and check it enforces, measure nothing")
		k8sBin    = flag.String("k8s-bin", "", "control plane: directory with kube-apiserver, etcd, kubectl (default _out/bin)")
	)
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: run as root (network namespaces, netfilter, BPF)")
		return 2
	}
	if *only != "" && *only != "datapath" && *only != "controlplane" {
		fmt.Fprintf(os.Stderr, "bench: --only %q: want datapath or controlplane\n", *only)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := dpbench.Options{Ns: []int{10, 1000, 10000, 100000}, Reps: 5, Duration: time.Second,
		Warmup: 200 * time.Millisecond, Iperf: time.Second, Changes: 50, ChangeBudget: 15 * time.Second, RawWrites: 2000,
		Slot: *slot, ClientCPU: *clientCPU, ServerCPU: *serverCPU, RTPrio: *rtPrio, Iptables: *iptables, CheckOnly: *checkOnly, Log: os.Stderr}
	if *quick {
		opts.Ns, opts.Reps, opts.Duration, opts.Iperf, opts.Changes, opts.ChangeBudget, opts.RawWrites =
			[]int{10, 100000}, 2, 500*time.Millisecond, 0, 10, time.Second, 500
	}
	if *nsFlag != "" {
		opts.Ns = nil
		for _, s := range strings.Split(*nsFlag, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "bench: -n: bad count %q\n", s)
				return 2
			}
			opts.Ns = append(opts.Ns, n)
		}
	}
	if *configs != "" {
		opts.Configs = strings.Split(*configs, ",")
	}
	for _, o := range []struct {
		set bool
		do  func()
	}{
		{*reps > 0, func() { opts.Reps = *reps }},
		{*dur > 0, func() { opts.Duration = *dur }},
		{*iperf > 0, func() { opts.Iperf = *iperf }},
		{*changes > 0, func() { opts.Changes = *changes }},
		{*budget > 0, func() { opts.ChangeBudget = *budget }},
	} {
		if o.set {
			o.do()
		}
	}

	out := Output{Command: "go run ./tools/bench " + strings.Join(os.Args[1:], " "), Started: time.Now().UTC(), Machine: machine()}
	if *only != "controlplane" {
		res, err := dpbench.Run(ctx, opts)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: datapath: %v\n", err)
			return 1
		}
		out.Datapath, out.Targets = res, res.Targets()
	}
	if out.Datapath != nil {
		// Written before the control plane runs: its full plan takes long.
		out.Seconds = time.Since(out.Started).Seconds()
		out.Machine.LoadAtFinish = loadavg()
		if err := emit(&out, *doc, *jsonOut, *checkOnly); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
	}
	if *only != "datapath" && !*checkOnly {
		rep, err := controlplane.Run(ctx, controlplane.Config{Quick: *quick, K8sBin: *k8sBin, Log: os.Stderr})
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: control plane: %v\n", err)
			return 1
		}
		out.ControlPlane = rep
		out.Seconds = time.Since(out.Started).Seconds()
		out.Machine.LoadAtFinish = loadavg()
		if err := emit(&out, *doc, *jsonOut, *checkOnly); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
	}
	return 0
}

// emit prints the report and writes the document, charts and JSON.
func emit(out *Output, doc, jsonOut string, checkOnly bool) error {
	var md bytes.Buffer
	charts := map[string]string{}
	if doc != "" && out.Datapath != nil && !checkOnly {
		base := strings.TrimSuffix(doc, filepath.Ext(doc))
		for _, m := range []string{"rr", "crr"} {
			path := base + "-" + m + ".png"
			if err := out.Datapath.Chart(path, m); err != nil {
				return err
			}
			charts[m] = filepath.Base(path)
		}
	}
	if err := writeMarkdown(&md, out, []string{charts["rr"], charts["crr"]}); err != nil {
		return err
	}
	fmt.Print(md.String())
	if doc != "" {
		if err := os.WriteFile(doc, md.Bytes(), 0o644); err != nil {
			return err
		}
		if jsonOut == "" {
			jsonOut = strings.TrimSuffix(doc, filepath.Ext(doc)) + ".json"
		}
	}
	if jsonOut != "" {
		b, err := json.MarshalIndent(out, "", "  ")
		if err == nil {
			err = os.WriteFile(jsonOut, append(b, '\n'), 0o644)
		}
		if err != nil {
			return fmt.Errorf("json: %w", err)
		}
	}
	return nil
}

func writeMarkdown(w *bytes.Buffer, out *Output, charts []string) error {
	m := out.Machine
	fmt.Fprintf(w, "# Benchmarks\n\nWritten by the bench itself; do not edit by hand. Regenerate as root with `make bench` (this run: `%s`, %.0f s).\n\n",
		out.Command, out.Seconds)
	fmt.Fprintf(w, "- date: %s\n- machine: %d CPUs, %s, Linux %s\n- load average (1, 5, 15 min) at start: %s; at the end: %s. "+
		"The bench keeps at most two CPUs busy itself; more than that was other work on the machine, which the noise figures (min–max of the repetitions) show.\n\n",
		out.Started.Format("2006-01-02 15:04 UTC"), m.CPUs, m.CPUModel, m.Kernel, m.LoadAtStart, m.LoadAtFinish)
	if out.Datapath != nil {
		var cs []string
		for _, c := range charts {
			if c != "" {
				cs = append(cs, c)
			}
		}
		if err := out.Datapath.Markdown(w, cs); err != nil {
			return err
		}
	}
	if out.ControlPlane != nil {
		if err := out.ControlPlane.Markdown(w); err != nil {
			return err
		}
	}
	return nil
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), LoadAtStart: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], ", ")
}
