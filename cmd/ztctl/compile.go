package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/identity"
	"github.com/ztnet/zt/pkg/policy"
)

func newCompileCmd() *cobra.Command {
	var bundles []string
	var output string
	cmd := &cobra.Command{
		Use:   "compile -f FILE [-o text|json]",
		Short: "Print the compiled form of a bundle's NetworkPolicies: identities and per-pod rules",
		Long: `compile prints what the agent would write to the kernel, in a stable,
diffable order: every identity with the label set it stands for, every
address with its identity, and for each pod and direction whether it is
isolated, by which policies, and its allow rules (peer identity, protocol,
port range) with the policy rule each comes from.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("unknown output format %q (want text or json)", output)
			}
			b, err := bundle.Load(bundles...)
			if err != nil {
				return err
			}
			snap, err := b.Snapshot()
			if err != nil {
				return err
			}
			c := policy.Build(snap, policy.Options{})
			for _, p := range c.Problems() {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v (skipped)\n", p)
			}
			out := compiledView(c)
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			return out.writeText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringSliceVarP(&bundles, "bundle", "f", nil, "bundle file (- for standard input); repeat to combine")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	_ = cmd.MarkFlagRequired("bundle")
	return cmd
}

type compiled struct {
	Identities []identityView `json:"identities"`
	IPCache    []ipView       `json:"ipcache"`
	Endpoints  []endpointView `json:"endpoints"`
}

type identityView struct {
	ID     uint32 `json:"id"`
	Labels string `json:"labels"`
}

type ipView struct {
	Prefix   string `json:"prefix"`
	Identity uint32 `json:"identity"`
	// CIDRIdentity is an address's prefix identity (the rules of its
	// ipBlocks), when it has one.
	CIDRIdentity uint32 `json:"cidrIdentity,omitempty"`
}

type endpointView struct {
	Pod     string   `json:"pod"`
	Ingress dirView  `json:"ingress"`
	Egress  dirView  `json:"egress"`
	IPs     []string `json:"ips"`
}

type dirView struct {
	Isolated   bool     `json:"isolated"`
	IsolatedBy []string `json:"isolatedBy,omitempty"`
	Rules      []string `json:"rules,omitempty"`
}

func describe(l identity.Labels) string {
	var parts []string
	switch l.Kind {
	case identity.KindPod:
		parts = append(parts, "ns="+l.Namespace)
		for _, k := range slices.Sorted(maps.Keys(l.PodLabels)) {
			parts = append(parts, k+"="+l.PodLabels[k])
		}
		if len(l.NamespaceLabels) > 0 {
			var ns []string
			for _, k := range slices.Sorted(maps.Keys(l.NamespaceLabels)) {
				ns = append(ns, k+"="+l.NamespaceLabels[k])
			}
			parts = append(parts, "nslabels{"+strings.Join(ns, ",")+"}")
		}
	default:
		parts = append(parts, l.Kind.String())
	}
	for _, p := range l.CIDRs {
		parts = append(parts, "cidr:"+p.String())
	}
	for _, np := range l.NamedPorts {
		parts = append(parts, fmt.Sprintf("port:%s/%s=%d", np.Name, np.Protocol, np.Port))
	}
	return strings.Join(parts, " ")
}

func compiledView(c *policy.Compiler) compiled {
	var out compiled
	for _, id := range c.Identities() {
		out.Identities = append(out.Identities, identityView{ID: uint32(id.ID), Labels: describe(id.Labels)})
	}
	ipc := c.IPCache()
	for _, p := range ipc.Prefixes() {
		e, _ := ipc.Get(p)
		out.IPCache = append(out.IPCache, ipView{Prefix: p.String(), Identity: uint32(e.ID), CIDRIdentity: uint32(e.CIDR)})
	}
	for _, ep := range c.Endpoints() {
		v := endpointView{Pod: ep.Pod.String()}
		for _, ip := range ep.IPs {
			v.IPs = append(v.IPs, ip.String())
		}
		for d, dv := range map[policy.Direction]*dirView{policy.Ingress: &v.Ingress, policy.Egress: &v.Egress} {
			dp := ep.Dir(d)
			dv.Isolated = dp.Isolated
			for _, p := range dp.IsolatedBy {
				dv.IsolatedBy = append(dv.IsolatedBy, p.String())
			}
			for r := range dp.Rules.All() {
				s := r.String()
				if ref, ok := c.Rule(r.ID); ok {
					s += " (" + ref.String() + ")"
				}
				dv.Rules = append(dv.Rules, s)
			}
		}
		out.Endpoints = append(out.Endpoints, v)
	}
	return out
}

func (c compiled) writeText(w io.Writer) error {
	var b strings.Builder
	b.WriteString("identities:\n")
	for _, id := range c.Identities {
		fmt.Fprintf(&b, "  %-6d %s\n", id.ID, id.Labels)
	}
	b.WriteString("ipcache:\n")
	for _, e := range c.IPCache {
		if e.CIDRIdentity != 0 {
			fmt.Fprintf(&b, "  %-40s %d (ipBlocks as %d)\n", e.Prefix, e.Identity, e.CIDRIdentity)
		} else {
			fmt.Fprintf(&b, "  %-40s %d\n", e.Prefix, e.Identity)
		}
	}
	for _, ep := range c.Endpoints {
		fmt.Fprintf(&b, "pod %s (%s)\n", ep.Pod, strings.Join(ep.IPs, ", "))
		for _, d := range []struct {
			name string
			v    dirView
		}{{"ingress", ep.Ingress}, {"egress", ep.Egress}} {
			if !d.v.Isolated {
				fmt.Fprintf(&b, "  %s: not isolated\n", d.name)
				continue
			}
			fmt.Fprintf(&b, "  %s: isolated by %s\n", d.name, strings.Join(d.v.IsolatedBy, ", "))
			for _, r := range d.v.Rules {
				fmt.Fprintf(&b, "    allow %s\n", r)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
