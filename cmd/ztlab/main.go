// Command ztlab runs the whole zt system on one machine with real packets:
// etcd and kube-apiserver, deploy/ applied, one network namespace per node
// with its own zt-agent, one per pod with a server on every declared port,
// and probes between every pair of pods printed as the reachability JSON
// of `ztctl reach -o json`, so the two can be diffed.
//
//	ztlab run --bundle examples/shop/cluster.yaml --bundle examples/shop/policies.yaml -o json
//	ztlab up --nodes 2 --bundle cluster.yaml    # then: ztlab apply policies.yaml; ztlab probe; ztlab down
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/lab"
	"github.com/ztnet/zt/pkg/reach"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ztlab:", err)
		os.Exit(1)
	}
}

type common struct {
	dir      string
	name     string
	nodes    int
	agentBin string
	binDir   string
	agentArg []string
	quiet    bool
}

func (c *common) config(detach bool, stderr io.Writer) lab.Config {
	cfg := lab.Config{Dir: c.dir, Name: c.name, Nodes: c.nodes, AgentBin: c.agentBin, BinDir: c.binDir,
		AgentArgs: c.agentArg, Detach: detach, Log: stderr}
	if c.quiet {
		cfg.Log = io.Discard
	}
	return cfg
}

func newRoot() *cobra.Command {
	c := &common{}
	root := &cobra.Command{
		Use:   "ztlab",
		Short: "The whole zt system on one machine, with real packets",
		Long: `ztlab brings up a single-machine lab: a real etcd and kube-apiserver, deploy/
applied, each node a network namespace with its own zt-agent (its
ServiceAccount token, bpffs root and health port), each pod a network
namespace behind a host veth of its node with a server on every declared
TCP, UDP and SCTP port. It probes every ordered pod pair with real packets
and prints the reachability JSON of "ztctl reach -o json".

It needs root. State, logs and kubeconfigs live in --dir (default /run/ztlab);
everything created is removed by "ztlab down", on the way out of "ztlab run"
(also on failure and Ctrl-C), and by the next "ztlab up" after a crash.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&c.dir, "dir", lab.DefaultDir, "lab state folder")
	pf.BoolVarP(&c.quiet, "quiet", "q", false, "no progress lines on standard error")

	labFlags := func(cmd *cobra.Command) {
		f := cmd.Flags()
		f.IntVar(&c.nodes, "nodes", 1, "number of nodes (network namespaces, one zt-agent each)")
		f.StringVar(&c.name, "name", "ztlab", "lab name: agents pin under /sys/fs/bpf/<name>-<node>")
		f.StringVar(&c.agentBin, "agent-bin", "", "zt-agent binary (default: next to ztlab, _out/bin, $PATH, or go build)")
		f.StringVar(&c.binDir, "k8s-bin", "", "folder with the pinned etcd, kube-apiserver and kubectl (default: $ZT_K8S_BIN, next to ztlab, _out/bin)")
		f.StringArrayVar(&c.agentArg, "agent-arg", nil, "extra zt-agent flag (repeatable), e.g. --agent-arg=--cluster-default-deny")
	}
	var probe lab.ProbeOptions
	probeFlags := func(cmd *cobra.Command) {
		f := cmd.Flags()
		f.IntVar(&probe.Workers, "workers", 128, "probes in flight")
		f.DurationVar(&probe.Timeout, "probe-timeout", time.Second, "first attempt's wait for an answer (the retry waits twice as long)")
	}

	var bundles []string
	var output string
	run := &cobra.Command{
		Use:   "run --bundle FILE [--nodes N] [-o table|matrix|json]",
		Short: "Up with a bundle, probe every pod pair, print the reachability, tear down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := lab.CheckRoot(); err != nil {
				return err
			}
			b, err := bundle.Load(bundles...)
			if err != nil {
				return err
			}
			rep, err := lab.Run(cmd.Context(), c.config(false, cmd.ErrOrStderr()), b, lab.RunOptions{Probe: probe})
			if err != nil {
				return err
			}
			return write(cmd.OutOrStdout(), rep, output)
		},
	}
	run.Flags().StringSliceVarP(&bundles, "bundle", "f", nil, "bundle file; repeat or comma-separate to combine files")
	run.Flags().StringVarP(&output, "output", "o", "table", "output format: table (a grid per port), matrix (one grid) or json")
	_ = run.MarkFlagRequired("bundle")
	labFlags(run)
	probeFlags(run)

	var upBundles []string
	up := &cobra.Command{
		Use:   "up [--bundle FILE] [--nodes N]",
		Short: "Bring a lab up and leave it running (ztlab probe / apply / down)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.CheckRoot(); err != nil {
				return err
			}
			var b *bundle.Bundle
			if len(upBundles) > 0 {
				var err error
				if b, err = bundle.Load(upBundles...); err != nil {
					return err
				}
			}
			l, err := lab.Up(cmd.Context(), c.config(true, cmd.ErrOrStderr()), b)
			if err != nil {
				return err
			}
			l.Addresses(cmd.OutOrStdout())
			return nil
		},
	}
	up.Flags().StringSliceVarP(&upBundles, "bundle", "f", nil, "bundle file to apply once up")
	labFlags(up)

	var probeOut string
	probeCmd := &cobra.Command{
		Use:   "probe [-o table|matrix|json]",
		Short: "Probe every pod pair of the running lab with real packets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(probeOut); err != nil {
				return err
			}
			l, err := lab.Open(c.dir, logw(c, cmd))
			if err != nil {
				return err
			}
			rep, err := l.Probe(cmd.Context(), probe)
			if err != nil {
				return err
			}
			return write(cmd.OutOrStdout(), rep, probeOut)
		},
	}
	probeCmd.Flags().StringVarP(&probeOut, "output", "o", "table", "output format: table (a grid per port), matrix (one grid) or json")
	probeFlags(probeCmd)

	// withBundle runs fn on the running lab with the bundle of the args.
	withBundle := func(fn func(*lab.Lab, context.Context, *bundle.Bundle) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(c.dir, logw(c, cmd))
			if err != nil {
				return err
			}
			b, err := bundle.Load(args...)
			if err != nil {
				return err
			}
			return fn(l, cmd.Context(), b)
		}
	}
	apply := &cobra.Command{
		Use:   "apply FILE...",
		Short: "Add a bundle's namespaces, pods and policies to the running lab and wait for the agents",
		Args:  cobra.MinimumNArgs(1),
		RunE:  withBundle((*lab.Lab).Apply),
	}

	sync := &cobra.Command{
		Use:   "sync FILE...",
		Short: "Make the running lab's cluster exactly these bundles (deletes what they lack) and wait for the agents",
		Long: `sync makes the API server hold exactly the bundles' namespaces, pods and
NetworkPolicies: what apply does, plus deleting the policies, pods and
namespaces they lack (never the API server's own namespaces nor zt-system),
and labels replaced by theirs. A deleted pod keeps its network namespace in
the lab and can come back at the same addresses. It waits until every agent
reports the result realized in its kernel (GET /realized).`,
		Args: cobra.MinimumNArgs(1),
		RunE: withBundle((*lab.Lab).Sync),
	}

	down := &cobra.Command{
		Use:   "down",
		Short: "Remove the lab: processes, BPF pins, links, namespaces, state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.CheckRoot(); err != nil {
				return err
			}
			return lab.Down(c.dir, logw(c, cmd))
		},
	}

	serve := &cobra.Command{
		Use:                "serve",
		Short:              "(internal) the server run in every pod",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return lab.ServeMain(cmd.Context(), args)
		},
	}
	var try lab.TryOptions
	var expect string
	tryCmd := &cobra.Command{
		Use:   "try FROM TO PORT[/PROTOCOL] [--spoof-as POD|IP] [--expect blocked|passed]",
		Short: "One connection attempt between two pods, and which zt drop counters it moved",
		Long: `try connects from one lab pod to another on one port (TCP unless /UDP or
/SCTP is given) with real packets and says whether the destination answered,
and which of the agents' exact drop counters moved meanwhile (where zt
stopped it, and why).

With --spoof-as, it instead sends one packet whose source address is forged
(another pod's, or any IP) through a raw socket of FROM: no socket hook sees
it, only the pod's interface can stop it. --raw sends that packet with
FROM's own address.

Pods are NAMESPACE/NAME, or NAME when unique in the lab. With --expect, the
exit status is 1 when the outcome differs.`,
		Example: `  ztlab try shop/attacker data/db 5432
  ztlab try attacker api 8080/TCP --spoof-as frontend --expect blocked`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if expect != "" && expect != "blocked" && expect != "passed" {
				return fmt.Errorf("--expect %q: want blocked or passed", expect)
			}
			pp, err := bundle.ParsePortKey(args[2])
			if err != nil {
				return err
			}
			try.From, try.To, try.Port, try.Protocol = args[0], args[1], pp.Port, pp.Protocol
			l, err := lab.Open(c.dir, logw(c, cmd))
			if err != nil {
				return err
			}
			r, err := l.Try(cmd.Context(), try)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), r)
			switch {
			case expect == "blocked" && !r.Blocked():
				return fmt.Errorf("expected zt to block it: %s", r.Outcome)
			case expect == "passed" && !r.Passed:
				return fmt.Errorf("expected it to pass: %s", r.Outcome)
			}
			return nil
		},
	}
	tryCmd.Flags().StringVar(&try.SpoofAs, "spoof-as", "", "forge the source address: a pod's (NAMESPACE/NAME) or an IP")
	tryCmd.Flags().BoolVar(&try.Raw, "raw", false, "send one crafted packet with FROM's own address through a raw socket (skips the socket hooks)")
	tryCmd.Flags().DurationVar(&try.Timeout, "timeout", time.Second, "wait for an answer")
	tryCmd.Flags().StringVar(&expect, "expect", "", "blocked or passed: exit 1 when the outcome differs")

	env := &cobra.Command{
		Use:   "env",
		Short: "Shell lines pointing kubectl and ztctl at the running lab: eval \"$(ztlab env)\"",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(c.dir, logw(c, cmd))
			if err != nil {
				return err
			}
			l.Env(cmd.OutOrStdout())
			return nil
		},
	}
	root.AddCommand(run, up, probeCmd, apply, sync, tryCmd, env, down, serve)
	return root
}

func logw(c *common, cmd *cobra.Command) io.Writer {
	if c.quiet {
		return io.Discard
	}
	return cmd.ErrOrStderr()
}

func checkOutput(format string) error {
	switch format {
	case "table", "matrix", "json":
		return nil
	}
	return fmt.Errorf("unknown output format %q (want table, matrix or json)", format)
}

func write(w io.Writer, r reach.Report, format string) error {
	switch format {
	case "json":
		return r.WriteJSON(w)
	case "matrix":
		return r.WriteMatrix(w)
	}
	return r.WriteTable(w)
}
