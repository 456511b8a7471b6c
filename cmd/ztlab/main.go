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
		Use:   "run --bundle FILE [--nodes N] [-o table|json]",
		Short: "Up with a bundle, probe every pod pair, print the reachability, tear down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("unknown output format %q (want table or json)", output)
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
	run.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
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
		Use:   "probe [-o table|json]",
		Short: "Probe every pod pair of the running lab with real packets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if probeOut != "table" && probeOut != "json" {
				return fmt.Errorf("unknown output format %q (want table or json)", probeOut)
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
	probeCmd.Flags().StringVarP(&probeOut, "output", "o", "table", "output format: table or json")
	probeFlags(probeCmd)

	apply := &cobra.Command{
		Use:   "apply FILE...",
		Short: "Add a bundle's namespaces, pods and policies to the running lab and wait for the agents",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(c.dir, logw(c, cmd))
			if err != nil {
				return err
			}
			b, err := bundle.Load(args...)
			if err != nil {
				return err
			}
			return l.Apply(cmd.Context(), b)
		},
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
	root.AddCommand(run, up, probeCmd, apply, down, serve)
	return root
}

func logw(c *common, cmd *cobra.Command) io.Writer {
	if c.quiet {
		return io.Discard
	}
	return cmd.ErrOrStderr()
}

func write(w io.Writer, r reach.Report, format string) error {
	if format == "json" {
		return r.WriteJSON(w)
	}
	return r.WriteTable(w)
}
