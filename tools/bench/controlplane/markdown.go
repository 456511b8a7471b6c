package controlplane

import (
	"bytes"
	"fmt"
	"io"
)

// Markdown writes a "## Control plane" section for docs/benchmarks.md.
func (r *Report) Markdown(w io.Writer) error {
	var b bytes.Buffer
	mode := r.Mode
	fmt.Fprintf(&b, "## Control plane\n\n")
	fmt.Fprintf(&b, "One %s run of `tools/bench` (package `tools/bench/controlplane`) on %d CPUs, %s, %.0f s.\n\n",
		mode, r.CPUs, r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Seconds)

	fmt.Fprintf(&b, "### Targets\n\n| target | want | got | |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		verdict := "FAIL"
		switch {
		case !t.Measured:
			verdict = "not measured in this run"
		case t.Pass:
			verdict = "pass"
		}
		got := t.Got
		if got == "" {
			got = "-"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Want, got, verdict)
	}

	fmt.Fprintf(&b, "\n### Policy propagation\n\n")
	fmt.Fprintf(&b, "A lab (pkg/lab): etcd, kube-apiserver, one node with zt-agent (--min-sync-interval %s, its default) and "+
		"three pods with network namespaces; the other pods exist in the API only, on other nodes. "+
		"Each flip is `kubectl apply -f -` of a policy letting client reach the isolated server, then `kubectl delete` of it, "+
		"then the same create and delete through client-go; "+
		"the time runs from starting kubectl (or the call) to the moment the first real TCP connection attempt from client's network namespace "+
		"whose verdict changed sent its SYN (attempts start every 10 ms and overlap; an attempt passes when its handshake completes within 300 ms, below TCP's 1 s SYN retransmission, so a pass means the first SYN passed; a block counts once 3 attempts in a row failed with none passing after). "+
		"*node* is the agent's `zt_policy_propagation_seconds` for the same changes: first watch event of a batch to its map writes done. "+
		"%d flips per size.\n\n", r.AgentSyncInterval, r.Flips)
	fmt.Fprintf(&b, "| pods | policies | kubectl apply p50 / p99 | kubectl delete p50 / p99 | client create p50 / p99 | client delete p50 / p99 | node p50 / p99 / max |\n")
	fmt.Fprintf(&b, "|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range r.Propagation {
		fmt.Fprintf(&b, "| %d | %d | %.0f / %.0f ms | %.0f / %.0f ms | %.0f / %.0f ms | %.0f / %.0f ms | %.1f / %.1f / %.1f ms |\n",
			p.Pods, p.Policies, p.ApplyStats.P50, p.ApplyStats.P99, p.DeleteStats.P50, p.DeleteStats.P99,
			p.ClientCreateStats.P50, p.ClientCreateStats.P99, p.ClientDeleteStats.P50, p.ClientDeleteStats.P99,
			p.NodeStats.P50, p.NodeStats.P99, p.NodeStats.Max)
	}

	fmt.Fprintf(&b, "\nWhile the pods were added (outside the flips), %d probes from client to the isolated server: %d passed.\n",
		r.HoleProbes, r.Holes)
	fmt.Fprintf(&b, "\n### Bulk pods\n\n")
	switch r.BulkVia {
	case BulkViaEtcd:
		fmt.Fprintf(&b, "The API-only pods were written straight into the lab's etcd, status (Running, one address) included, "+
			"in the API server's storage encoding (protobuf, key /registry/pods/NS/NAME), one etcd revision per pod, %d puts at once: "+
			"the API server's watch cache read them from etcd and sent them to the agent as ADDED events, one per pod. "+
			"Admission and the API server's write path were skipped; the three lab pods, the namespaces and every "+
			"NetworkPolicy went through the API server (`%s=api` creates the bulk pods through it too: Create, then UpdateStatus).\n\n",
			etcdWorkers, envBulkVia)
	default:
		fmt.Fprintf(&b, "The API-only pods were created through the API server: Create, then UpdateStatus with the address "+
			"(two writes and two watch events per pod).\n\n")
	}
	fmt.Fprintf(&b, "| pods | created | took | pods/s | in the agent's ipcache after |\n|---:|---:|---:|---:|---:|\n")
	for _, g := range r.Grow {
		fmt.Fprintf(&b, "| %d | %d | %.1f s | %.0f | %.1f s |\n", g.Pods, g.Created, g.Seconds, g.PodsPerSecond, g.SettleSeconds)
	}
	fmt.Fprintf(&b, "\n### Agent memory\n\nThe zt-agent process of the lab, after the flips at each size "+
		"(/proc/PID/status).\n\n| pods | policies | VmRSS | VmHWM | VmRSS / pod |\n|---:|---:|---:|---:|---:|\n")
	for _, m := range r.Memory {
		fmt.Fprintf(&b, "| %d | %d | %.1f MiB | %.1f MiB | %.1f KiB |\n", m.Pods, m.Policies, float64(m.RSSKiB)/1024, float64(m.HWMKiB)/1024, m.BytesPerPod/1024)
	}
	if r.MarginalTo > 0 {
		fmt.Fprintf(&b, "\nGrowth between %d and %d pods (the smallest size with as many policies as the largest, so the compiled "+
			"policies are not counted as pods): %.2f KiB per pod.\n", r.MarginalFrom, r.MarginalTo, r.MarginalBytesPerPod/1024)
	}

	fmt.Fprintf(&b, "\n### Compiler (pkg/policy) on one core\n\n"+
		"A generated cluster (one namespace per 100 pods, 10 apps each in two versions, nodes of 100 pods; "+
		"policies mixing pod, namespace and combined selectors, ipBlocks, named ports, port ranges, egress), "+
		"compiled by `policy.Build` in a child process with GOMAXPROCS=1. *node* view: one node's pods are endpoints "+
		"(what zt-agent compiles); *cluster*: every pod is (`ztctl compile`). Peak RSS is the child's (rusage: input, "+
		"compiler, runtime); heap is what the built compiler holds. Updates: a pod relabel, or a policy added or "+
		"deleted, each followed by Sync; *new ipBlock*: a policy whose ipBlock no other policy references, holding 128 pods' "+
		"addresses, added or deleted (a CIDR identity made or dropped, and those addresses' prefix identity changed: "+
		"no pod is relabelled).\n\n")
	fmt.Fprintf(&b, "| pods | policies | view | identities | full compile | peak RSS | compiler heap | relabel p50 | relabel p99 | policy p50 | policy p99 | new ipBlock p50 | new ipBlock p99 |\n")
	fmt.Fprintf(&b, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range r.Compile {
		if c.TimedOut {
			fmt.Fprintf(&b, "| %d | %d | %s | - | not done in %s | - | - | - | - | - | - | - | - |\n", c.Pods, c.Policies, c.View, compileTimeout)
			continue
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %d | %.0f ms | %.0f MiB | %.0f MiB | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms |\n",
			c.Pods, c.Policies, c.View, c.Identities, c.FullMs, float64(c.MaxRSSKiB)/1024, float64(c.CompilerHeapBytes)/(1<<20),
			c.Relabel.P50, c.Relabel.P99, c.Policy.P50, c.Policy.P99, c.Reference.P50, c.Reference.P99)
	}
	_, err := w.Write(b.Bytes())
	return err
}
