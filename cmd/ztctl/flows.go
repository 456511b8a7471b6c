package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ztnet/zt/pkg/flows"
)

type flowsOptions struct {
	namespace  string
	all        bool
	pod        string
	from, to   string
	verdict    string
	reason     string
	port       uint16
	protocol   string
	since      string
	until      string
	last       int
	follow     bool
	output     string
	socket     string
	server     string
	node       string
	kubeconfig string
	context    string
	// warn reports what the user should know but does not stop the
	// command (an agent left out); standard error.
	warn func(string)
}

// flowSource is where records come from: one agent (its unix socket or a
// direct address) or, through the API server, several.
type flowSource interface {
	// Query passes the records f selects to fn, oldest first; with
	// f.Follow it continues until ctx ends.
	Query(ctx context.Context, f flows.Filter, fn func(*flows.Record) error) error
}

func newFlowsCmd() *cobra.Command {
	o := &flowsOptions{}
	cmd := &cobra.Command{
		Use:   "flows [-n NS | -A] [--from X] [--to Y] [--verdict dropped] [--since 1h] [-f]",
		Short: "Show dropped (and optionally allowed) connections: pods, reason and the policy behind each",
		Long: `flows reads the flow records of a zt-agent: every dropped packet the kernel
reported, with both pods, the drop reason and, for default-deny drops, the
NetworkPolicies that isolate the pod (for explicit rules, the rule).

The agent is reached through its unix socket (default /run/zt/flows.sock, on
the node), a direct address (--server http://127.0.0.1:9877, e.g. after
kubectl port-forward), or, when neither is given and the socket is missing,
through the API server: ztctl port-forwards to every zt-agent pod (or the one
on --node) and merges their records by time.

--from, --to and --pod take NAMESPACE/POD or POD (in -n), --from and --to also
a label selector ("app=web", "tier in (a,b)"), world, host, an IP or a CIDR.

Records are rate limited per source; a record with reason "suppressed" says
how many were not kept. Exact drop counts come from the kernel counters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.warn = func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s) }
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "", "records with a pod of this namespace on either side (default: the kubeconfig's namespace)")
	f.BoolVarP(&o.all, "all-namespaces", "A", false, "records of every namespace")
	f.StringVar(&o.pod, "pod", "", "records with this pod on either side (NAMESPACE/POD or POD)")
	f.StringVar(&o.from, "from", "", "source: NAMESPACE/POD, POD, label selector, world, host, IP or CIDR")
	f.StringVar(&o.to, "to", "", "destination: NAMESPACE/POD, POD, label selector, world, host, IP or CIDR")
	f.StringVar(&o.verdict, "verdict", "", "dropped, allowed or audit")
	f.StringVar(&o.reason, "reason", "", "drop reason, e.g. policy-denied, deny-rule, spoofed, sock-denied, suppressed")
	f.Uint16Var(&o.port, "port", 0, "destination port")
	f.StringVar(&o.protocol, "protocol", "", "TCP, UDP, SCTP, ICMP")
	f.StringVar(&o.since, "since", "", "only records newer than a duration (1h) or an RFC 3339 time")
	f.StringVar(&o.until, "until", "", "only records older than a duration or an RFC 3339 time")
	f.IntVar(&o.last, "last", 0, "only the last N matching records")
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing new records")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table, wide, json or jsonl")
	socket := flows.DefaultSocket
	if env := os.Getenv("ZT_FLOWS_SOCKET"); env != "" {
		socket = env // eval "$(ztlab env)" points ztctl at a lab
	}
	f.StringVar(&o.socket, "socket", socket, "the agent's unix socket ($ZT_FLOWS_SOCKET); several, comma-separated (a lab's nodes), are merged by time")
	f.StringVar(&o.server, "server", "", "the agent's API address, e.g. http://127.0.0.1:9877 (instead of the socket)")
	f.StringVar(&o.node, "node", "", "only records of this node (through the API server: only its agent)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.context, "context", "", "kubeconfig context")
	return cmd
}

func (o *flowsOptions) filter(now time.Time) (flows.Filter, error) {
	f := flows.Filter{
		Namespace: o.namespace, AllNamespaces: o.all, Pod: o.pod, From: o.from, To: o.to,
		Verdict: o.verdict, Reason: o.reason, Port: o.port, Protocol: o.protocol,
		Last: o.last, Follow: o.follow, Node: o.node,
	}
	if f.Namespace == "" && !f.AllNamespaces {
		f.Namespace = o.defaultNamespace()
	}
	var err error
	if o.since != "" {
		if f.Since, err = flows.ParseTime(o.since, now); err != nil {
			return f, fmt.Errorf("--since %w", err)
		}
	}
	if o.until != "" {
		if f.Until, err = flows.ParseTime(o.until, now); err != nil {
			return f, fmt.Errorf("--until %w", err)
		}
	}
	if err := f.Compile(); err != nil {
		return f, fmt.Errorf("filter: %w", err)
	}
	return f, nil
}

// defaultNamespace is the kubeconfig context's namespace, else "default".
func (o *flowsOptions) defaultNamespace() string {
	cc := o.clientConfig()
	if ns, _, err := cc.Namespace(); err == nil && ns != "" {
		return ns
	}
	return "default"
}

func (o *flowsOptions) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.kubeconfig != "" {
		rules.ExplicitPath = o.kubeconfig
	}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context})
}

// source picks the transport: --server, else the socket if it exists,
// else the API server.
func (o *flowsOptions) source(ctx context.Context) (flowSource, func(), error) {
	if o.server != "" {
		c := flows.NewHTTPClient(o.server)
		return c, func() {}, checkAgent(ctx, c)
	}
	if paths := strings.Split(o.socket, ","); len(paths) > 1 {
		// Several agents' sockets (a lab's nodes): every one must answer.
		var m mergeSource
		for _, p := range paths {
			c := flows.NewSocketClient(p)
			if err := checkAgent(ctx, c); err != nil {
				return nil, nil, err
			}
			m = append(m, c)
		}
		return m, func() {}, nil
	}
	if _, err := os.Stat(o.socket); err == nil {
		c := flows.NewSocketClient(o.socket)
		return c, func() {}, checkAgent(ctx, c)
	}
	if _, err := o.clientConfig().ClientConfig(); err != nil {
		return nil, nil, fmt.Errorf("%w: %s not found and no kubeconfig (%v): is zt-agent running on this node? use --server or run with kubeconfig access",
			flows.ErrUnreachable, o.socket, err)
	}
	return newForwardSource(ctx, o)
}

func checkAgent(ctx context.Context, c *flows.Client) error {
	v, err := c.Version(ctx)
	if errors.Is(err, flows.ErrUnreachable) {
		return fmt.Errorf("%w: is zt-agent running on this node? use --server or run with kubeconfig access", err)
	}
	if err != nil {
		return err
	}
	return flows.CheckVersion(v)
}

func (o *flowsOptions) run(ctx context.Context, stdout io.Writer) error {
	switch o.output {
	case "table", "wide", "json", "jsonl":
	default:
		return fmt.Errorf("unknown output format %q (want table, wide, json or jsonl)", o.output)
	}
	f, err := o.filter(time.Now())
	if err != nil {
		return err
	}
	src, closeSrc, err := o.source(ctx)
	if err != nil {
		return err
	}
	defer closeSrc()
	p := newFlowPrinter(stdout, o.output, o.follow, f.Namespace)
	err = src.Query(ctx, f, p.add)
	if ferr := p.flush(); err == nil {
		err = ferr
	}
	if errors.Is(err, context.Canceled) {
		return nil // Ctrl-C ends a follow
	}
	return err
}

// flowPrinter prints records as they come (follow, jsonl) or at the end
// (aligned tables, JSON arrays).
type flowPrinter struct {
	w         io.Writer
	output    string
	stream    bool
	namespace string
	rows      []*flows.Record
	header    bool
}

func newFlowPrinter(w io.Writer, output string, follow bool, namespace string) *flowPrinter {
	return &flowPrinter{w: w, output: output, stream: follow || output == "jsonl", namespace: namespace}
}

func (p *flowPrinter) add(r *flows.Record) error {
	if !p.stream {
		c := *r
		p.rows = append(p.rows, &c)
		return nil
	}
	switch p.output {
	case "json", "jsonl":
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	// Streaming: fixed widths, so rows line up without seeing the next.
	widths := []int{8, 16, 16, 9, 7, 13, 0}
	if p.output == "wide" {
		widths = []int{23, 24, 24, 9, 7, 13, 7, 7, 8, 12, 24, 24, 0}
	}
	if !p.header {
		p.header = true
		if err := writeRow(p.w, p.headerCols(), widths, 1); err != nil {
			return err
		}
	}
	return writeRow(p.w, p.rowCols(r), widths, 1)
}

// writeRow writes cells padded (and cut with "…") to widths; 0 = as is.
func writeRow(w io.Writer, cells []string, widths []int, gap int) error {
	var b strings.Builder
	for i, c := range cells {
		last := i == len(cells)-1
		wd := 0
		if i < len(widths) {
			wd = widths[i]
		}
		if wd > 0 {
			c = cut(c, wd)
		}
		b.WriteString(c)
		if !last {
			b.WriteString(strings.Repeat(" ", max(0, wd-utf8.RuneCountInString(c))+gap))
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// tableWidth is what the default table fits in.
const tableWidth = 80

// fit returns column widths for rows: natural widths, then (table only)
// the widest of SOURCE, DESTINATION and POLICY shrunk until the row fits
// tableWidth.
func fit(rows [][]string, gap int, shrink bool) []int {
	w := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			w[i] = max(w[i], utf8.RuneCountInString(c))
		}
	}
	if !shrink {
		return w
	}
	total := func() int {
		t := gap * (len(w) - 1)
		for _, x := range w {
			t += x
		}
		return t
	}
	shrinkable := []int{1, 2, 6} // SOURCE, DESTINATION, POLICY
	minWidth := func(i int) int { return max(10, utf8.RuneCountInString(rows[0][i])) }
	for total() > tableWidth {
		best := -1
		for _, i := range shrinkable {
			if w[i] > minWidth(i) && (best < 0 || w[i] > w[best]) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		w[best]--
	}
	return w
}

func (p *flowPrinter) flush() error {
	if p.stream {
		return nil
	}
	switch p.output {
	case "json":
		if p.rows == nil {
			p.rows = []*flows.Record{}
		}
		enc := json.NewEncoder(p.w)
		enc.SetIndent("", "  ")
		return enc.Encode(p.rows)
	}
	if len(p.rows) == 0 {
		_, err := fmt.Fprintln(p.w, "No flow records found.")
		return err
	}
	rows := [][]string{p.headerCols()}
	for _, r := range p.rows {
		rows = append(rows, p.rowCols(r))
	}
	gap := 2
	if p.output == "table" {
		gap = 1 // seven columns in 80
	}
	widths := fit(rows, gap, p.output == "table")
	widths[len(widths)-1] = 0 // the last column is never padded
	if p.output == "table" {
		// ...but cut to what is left of the line.
		used := gap * (len(widths) - 1)
		for _, x := range widths[:len(widths)-1] {
			used += x
		}
		widths[len(widths)-1] = max(10, tableWidth-used)
	}
	for _, r := range rows {
		if err := writeRow(p.w, r, widths, gap); err != nil {
			return err
		}
	}
	return nil
}

func (p *flowPrinter) headerCols() []string {
	cols := []string{"TIME", "SOURCE", "DESTINATION", "PORT", "VERDICT", "REASON", "POLICY"}
	if p.output == "wide" {
		cols = []string{"TIME", "SOURCE", "DESTINATION", "PORT", "VERDICT", "REASON",
			"DIR", "FLAGS", "IDENTITY", "NODE", "SOURCE LABELS", "DESTINATION LABELS", "POLICY"}
	}
	return cols
}

// peerName shortens pods of the namespace being looked at to their name,
// as kubectl does, and very long names to 24 characters.
func (p *flowPrinter) peerName(pr flows.Peer) string {
	s := pr.Name()
	switch {
	case pr.Pod != "" && pr.Namespace == p.namespace:
		s = pr.Pod
	case p.output == "wide":
	case pr.Pod == "" && pr.Reserved != "host" && pr.IP.IsValid():
		s = pr.IP.String() // world or a CIDR: the address says more
	}
	if pr.Deleted {
		s += "(deleted)"
	}
	return s
}

func (p *flowPrinter) rowCols(r *flows.Record) []string {
	ts := r.Time.Local().Format("15:04:05")
	if p.output == "wide" {
		ts = r.Time.Local().Format("2006-01-02T15:04:05.000")
	}
	src, dst := p.peerName(r.Src), p.peerName(r.Dst)
	port := "-"
	if r.Protocol != "" {
		port = r.Protocol
		if r.Dst.Port != 0 && r.Protocol != "ICMP" && r.Protocol != "ICMPv6" {
			port = fmt.Sprintf("%d/%s", r.Dst.Port, r.Protocol)
		}
	}
	policy := policyColumn(r, p.output == "wide")
	if r.IsSummary() {
		dst = "-"
		policy = fmt.Sprintf("(%d events)", r.Suppressed)
		if src == "-" {
			src = "(many sources)"
		}
	}
	if r.Claimed != "" && policy == "-" {
		// A forged source: SOURCE is the sender, this whose address it
		// claimed.
		claimed := r.Claimed
		if ns, name, ok := strings.Cut(claimed, "/"); ok && ns == p.namespace {
			claimed = name
		}
		policy = "as " + claimed
	}
	cols := []string{ts, src, dst, port, strings.ToUpper(r.Verdict), r.Reason, policy}
	if p.output == "wide" {
		cols = append(cols, orDash(r.Direction), orDash(r.TCPFlags), identityName(r), orDash(r.Node),
			labelString(r.Src.Labels), labelString(r.Dst.Labels))
		// POLICY moves to the end in wide: it is the longest.
		cols = append(append(cols[:6:6], cols[7:]...), cols[6])
	}
	return cols
}

// policyColumn: the deciding rule, else the isolating policies ("a +1"
// in the table, all of them in wide). The table leaves out their
// namespace: a NetworkPolicy only isolates pods of its own namespace, the
// endpoint's.
func policyColumn(r *flows.Record, wide bool) string {
	short := func(s string) string {
		if wide {
			return s
		}
		_, name, ok := strings.Cut(s, "/")
		if !ok {
			return s
		}
		return name
	}
	switch {
	case r.Rule != "":
		return short(r.Rule)
	case len(r.Policies) == 0:
		return "-"
	case wide:
		return strings.Join(r.Policies, ",")
	case len(r.Policies) == 1:
		return short(r.Policies[0])
	}
	return fmt.Sprintf("%s +%d", short(r.Policies[0]), len(r.Policies)-1)
}

func identityName(r *flows.Record) string {
	if r.PeerIdentity == 0 {
		return "-"
	}
	return fmt.Sprint(r.PeerIdentity)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func labelString(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}
