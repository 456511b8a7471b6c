package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/policy"
	"github.com/ztnet/zt/pkg/reach"
)

type reachOptions struct {
	bundles      []string
	output       string
	from, to     string
	port         string
	defaultDeny  bool
	exemptions   string
	denyFromHost bool
}

func newReachCmd() *cobra.Command {
	o := &reachOptions{}
	cmd := &cobra.Command{
		Use:   "reach --bundle FILE [-o table|matrix|json] [--from NS/POD --to NS/POD --port PORT[/PROTO]]",
		Short: "Show which pods may reach which, from NetworkPolicies, offline",
		Long: `reach compiles the NetworkPolicies of a bundle with the same compiler the
agent uses and prints who may reach whom.

A bundle is a multi-document YAML (or a v1 List) of Namespaces, Pods and
NetworkPolicies; "kubectl get ns,pods,netpol -A -o yaml" prints one.

Without --from/--to it prints the reachability matrix: one row per ordered pod
pair (a pod to itself excluded) per (port, protocol) the destination declares.
With --from, --to and --port it prints one verdict and the policies behind it.

Traffic between a pod and itself is never subject to NetworkPolicy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.OutOrStdout(), cmd.ErrOrStderr()) },
	}
	f := cmd.Flags()
	f.StringSliceVarP(&o.bundles, "bundle", "f", nil, "bundle file (- for standard input); repeat or comma-separate to combine files")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table (a grid per port), matrix (one grid) or json")
	f.StringVar(&o.from, "from", "", "source pod (namespace/name)")
	f.StringVar(&o.to, "to", "", "destination pod (namespace/name)")
	f.StringVar(&o.port, "port", "", "destination port and protocol, e.g. 80/TCP (default protocol TCP)")
	f.BoolVar(&o.defaultDeny, "cluster-default-deny", false, "isolate every pod both ways unless allowed (zt's zero-trust option)")
	f.StringVar(&o.exemptions, "default-deny-exemptions", "", "YAML file with the cluster-default-deny exemptions (default: kube-system exempt, DNS allowed)")
	f.BoolVar(&o.denyFromHost, "deny-from-host", false, "do not allow traffic from the node to its pods (kubelet probes) by default")
	_ = cmd.MarkFlagRequired("bundle")
	return cmd
}

func (o *reachOptions) run(stdout, stderr io.Writer) error {
	if o.output != "table" && o.output != "json" && o.output != "matrix" {
		return fmt.Errorf("unknown output format %q (want table, matrix or json)", o.output)
	}
	single := o.from != "" || o.to != "" || o.port != ""
	if single && (o.from == "" || o.to == "" || o.port == "") {
		return fmt.Errorf("--from, --to and --port go together")
	}
	opts := policy.Options{DenyFromHost: o.denyFromHost}
	if o.defaultDeny || o.exemptions != "" {
		dd, err := loadExemptions(o.exemptions)
		if err != nil {
			return err
		}
		opts.ClusterDefaultDeny = dd
	}
	b, err := bundle.Load(o.bundles...)
	if err != nil {
		return err
	}
	snap, err := b.Snapshot()
	if err != nil {
		return err
	}
	c := policy.Build(snap, opts)
	for _, p := range c.Problems() {
		fmt.Fprintf(stderr, "warning: %v (skipped; every other policy is in force)\n", p)
	}
	if single {
		return o.one(stdout, c)
	}
	rep, err := reach.Compute(c, reach.Targets(snap.Pods))
	if err != nil {
		return err
	}
	switch o.output {
	case "json":
		return rep.WriteJSON(stdout)
	case "matrix":
		return rep.WriteMatrix(stdout)
	}
	return rep.WriteTable(stdout)
}

func loadExemptions(path string) (*policy.DefaultDeny, error) {
	if path == "" {
		return policy.DefaultExemptions(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dd := &policy.DefaultDeny{}
	if err := yaml.UnmarshalStrict(data, dd); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := dd.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return dd, nil
}

func parsePodKey(flag, s string) (policy.PodKey, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return policy.PodKey{}, fmt.Errorf("--%s %q: want namespace/name", flag, s)
	}
	return policy.PodKey{Namespace: ns, Name: name}, nil
}

// explained is the JSON form of one verdict.
type explained struct {
	reach.Result
	Reason  policy.Reason `json:"reason"`
	Egress  *side         `json:"egress,omitempty"`
	Ingress *side         `json:"ingress,omitempty"`
}

type side struct {
	Pod        string   `json:"pod"`
	Isolated   bool     `json:"isolated"`
	IsolatedBy []string `json:"isolatedBy,omitempty"`
	AllowedBy  []string `json:"allowedBy,omitempty"`
	FromHost   bool     `json:"fromHost,omitempty"`
	Allowed    bool     `json:"allowed"`
}

func (o *reachOptions) one(w io.Writer, c *policy.Compiler) error {
	from, err := parsePodKey("from", o.from)
	if err != nil {
		return err
	}
	to, err := parsePodKey("to", o.to)
	if err != nil {
		return err
	}
	pk, err := bundle.ParsePortKey(o.port)
	if err != nil {
		return fmt.Errorf("--port: %w", err)
	}
	v, err := c.EvaluatePods(from, to, pk.Protocol, pk.Port)
	if err != nil {
		return err
	}
	e := explained{
		Result: reach.Result{From: from.String(), To: to.String(), Port: pk.Port, Protocol: pk.Protocol.String(), Verdict: reach.Deny},
		Reason: v.Reason,
	}
	if v.Allowed {
		e.Verdict = reach.Allow
	}
	toSide := func(d *policy.DirVerdict) *side {
		if d == nil {
			return nil
		}
		s := &side{Pod: d.Endpoint.String(), Isolated: d.Isolated, Allowed: d.Allowed, FromHost: d.FromHost}
		for _, p := range d.IsolatedBy {
			s.IsolatedBy = append(s.IsolatedBy, p.String())
		}
		for _, r := range d.AllowedBy {
			s.AllowedBy = append(s.AllowedBy, r.String())
		}
		return s
	}
	e.Egress, e.Ingress = toSide(v.Egress), toSide(v.Ingress)
	if o.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	}
	fmt.Fprintf(w, "%s  %s -> %s  %s  (%s)\n", strings.ToUpper(e.Verdict), e.From, e.To, pk, e.Reason)
	if v.Reason == policy.ReasonSelf {
		fmt.Fprintln(w, "  traffic between a pod and itself is not subject to NetworkPolicy")
		return nil
	}
	for _, s := range []struct {
		dir string
		s   *side
	}{{"egress", e.Egress}, {"ingress", e.Ingress}} {
		if s.s == nil {
			continue
		}
		fmt.Fprintf(w, "  %-7s of %s: ", s.dir, s.s.Pod)
		switch {
		case !s.s.Isolated:
			fmt.Fprintln(w, "not isolated (no policy of this direction selects the pod): allowed")
			continue
		case s.s.FromHost:
			fmt.Fprintf(w, "isolated by %s; allowed because the source is the node (kubelet probes)\n", strings.Join(s.s.IsolatedBy, ", "))
			continue
		case s.s.Allowed:
			fmt.Fprintf(w, "isolated by %s; allowed by %s\n", strings.Join(s.s.IsolatedBy, ", "), strings.Join(s.s.AllowedBy, ", "))
		default:
			fmt.Fprintf(w, "isolated by %s; no rule allows it: denied\n", strings.Join(s.s.IsolatedBy, ", "))
		}
	}
	return nil
}
