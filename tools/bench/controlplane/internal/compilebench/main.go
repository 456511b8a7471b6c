// Command compilebench compiles one generated cluster with pkg/policy and
// prints what it measured as JSON on stdout. The controlplane benchmark
// runs it as a child process (with GOMAXPROCS=1) so that the child's peak
// RSS, read from rusage by the parent, is this one compile's alone.
//
//	compilebench -pods 10000 -policies 1000 -view node -updates 50 [-cpuprofile FILE]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/pkg/policy"
	"github.com/ztnet/zt/tools/bench/controlplane/internal/compileresult"
)

func main() {
	pods := flag.Int("pods", 10000, "pods in the cluster")
	policies := flag.Int("policies", 1000, "NetworkPolicies")
	view := flag.String("view", "node", "node: one node's endpoints (as an agent compiles); cluster: every pod an endpoint (as ztctl compiles)")
	updates := flag.Int("updates", 50, "incremental updates of each kind to time")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "compilebench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*pods, *policies, *view, *updates); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "compilebench:", err)
		os.Exit(1)
	}
}

func liveHeap() uint64 {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func run(pods, policies int, view string, updates int) error {
	w := benchworld.Generate(pods, policies)
	var opts policy.Options
	switch view {
	case "cluster":
	case "node":
		opts.NodeName = w.Pods[0].NodeName
	default:
		return fmt.Errorf("unknown view %q (node or cluster)", view)
	}
	r := compileresult.Result{Pods: pods, Policies: policies, View: view, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	r.InputHeapBytes = liveHeap()
	t0 := time.Now()
	c := policy.Build(w, opts)
	r.FullNs = time.Since(t0).Nanoseconds()
	r.CompilerHeapBytes = liveHeap() - r.InputHeapBytes
	r.Endpoints = len(c.Endpoints())
	r.Identities = len(c.Identities())
	r.Problems = len(c.Problems())
	if r.Endpoints == 0 {
		return fmt.Errorf("%d pods, view %s: no endpoint compiled", pods, view)
	}

	// A local pod flips between two label sets, each selected by other
	// policies: its identity and every rule naming it change.
	p := w.Pods[0]
	for i := range updates {
		q := benchworld.Relabel(p, i)
		t := time.Now()
		c.SetPod(q)
		c.Sync()
		r.RelabelNs = append(r.RelabelNs, time.Since(t).Nanoseconds())
	}
	// A policy selecting the local pod's tier is added, then deleted.
	for i := range updates {
		key := policy.PolicyKey{Namespace: p.Namespace, Name: benchworld.UpdatePolicyName}
		t := time.Now()
		if i%2 == 0 {
			if err := c.SetPolicy(benchworld.UpdatePolicy(p, i)); err != nil {
				return fmt.Errorf("set policy: %w", err)
			}
		} else {
			c.DeletePolicy(key)
		}
		c.Sync()
		r.PolicyNs = append(r.PolicyNs, time.Since(t).Nanoseconds())
	}
	// A policy with an ipBlock no other policy references is added, then
	// deleted: a CIDR identity is made and the addresses of the pods in
	// the block take it as their prefix identity, then both undone.
	for i := range updates {
		key := policy.PolicyKey{Namespace: p.Namespace, Name: benchworld.ReferencePolicyName}
		t := time.Now()
		if i%2 == 0 {
			if err := c.SetPolicy(benchworld.ReferencePolicy(p)); err != nil {
				return fmt.Errorf("set policy: %w", err)
			}
		} else {
			c.DeletePolicy(key)
		}
		c.Sync()
		r.ReferenceNs = append(r.ReferenceNs, time.Since(t).Nanoseconds())
	}
	runtime.KeepAlive(w)
	return json.NewEncoder(os.Stdout).Encode(r)
}
