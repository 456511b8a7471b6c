// Package reach holds the reachability report: the format `ztctl reach -o
// json` prints and the lab's probes print too, so the two can be diffed,
// and its computation from the compiler.
package reach

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/ztnet/zt/pkg/policy"
)

// Verdicts.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Result is one ordered pod pair on one (port, protocol) the destination
// declares.
type Result struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Verdict  string `json:"verdict"`
}

// Report is the reachability JSON of DESIGN.md.
type Report struct {
	Results []Result `json:"results"`
}

// Target is a pod and the ports it declares, in the order probes use.
type Target struct {
	Pod   policy.PodKey
	Ports []PortProto
}

// PortProto is a declared (port, protocol).
type PortProto struct {
	Port     uint16
	Protocol policy.Protocol
}

// Targets lists the pods of a snapshot with their distinct declared
// (port, protocol) pairs, sorted. Host-network pods are left out: they are
// the node, not endpoints of NetworkPolicy.
func Targets(pods []policy.Pod) []Target {
	var out []Target
	for _, p := range pods {
		if p.HostNetwork {
			continue
		}
		t := Target{Pod: p.Key()}
		for _, cp := range p.Ports {
			t.Ports = append(t.Ports, PortProto{cp.Port, cp.Protocol})
		}
		slices.SortFunc(t.Ports, comparePP)
		t.Ports = slices.Compact(t.Ports)
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Target) int { return strings.Compare(a.Pod.String(), b.Pod.String()) })
	return out
}

func comparePP(a, b PortProto) int {
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Protocol, b.Protocol)
}

// Compute evaluates every ordered pair of targets (self excluded) on every
// (port, protocol) the destination declares, with the compiler.
func Compute(c *policy.Compiler, targets []Target) (Report, error) {
	r := Report{Results: []Result{}}
	for _, src := range targets {
		for _, dst := range targets {
			if src.Pod == dst.Pod {
				continue
			}
			for _, pp := range dst.Ports {
				v, err := c.EvaluatePods(src.Pod, dst.Pod, pp.Protocol, pp.Port)
				if err != nil {
					return r, err
				}
				verdict := Deny
				if v.Allowed {
					verdict = Allow
				}
				r.Results = append(r.Results, Result{
					From: src.Pod.String(), To: dst.Pod.String(),
					Port: pp.Port, Protocol: pp.Protocol.String(), Verdict: verdict,
				})
			}
		}
	}
	r.Sort()
	return r, nil
}

// Sort orders results by from, to, port, protocol, so reports from
// different sources compare line by line.
func (r *Report) Sort() {
	slices.SortFunc(r.Results, func(a, b Result) int {
		return cmp.Or(strings.Compare(a.From, b.From), strings.Compare(a.To, b.To),
			cmp.Compare(a.Port, b.Port), strings.Compare(a.Protocol, b.Protocol))
	})
}

// WriteJSON prints the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable prints one matrix per (port, protocol): rows are sources,
// columns destinations (numbered, with a legend), "." allowed, "X" denied,
// "-" the pod itself, blank where the destination does not declare it.
func (r Report) WriteTable(w io.Writer) error {
	type pp struct {
		port  uint16
		proto string
	}
	pods := map[string]bool{}
	groups := map[pp]map[[2]string]string{}
	for _, res := range r.Results {
		pods[res.From], pods[res.To] = true, true
		k := pp{res.Port, res.Protocol}
		if groups[k] == nil {
			groups[k] = map[[2]string]string{}
		}
		groups[k][[2]string{res.From, res.To}] = res.Verdict
	}
	names := make([]string, 0, len(pods))
	for p := range pods {
		names = append(names, p)
	}
	slices.Sort(names)
	keys := make([]pp, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b pp) int { return cmp.Or(cmp.Compare(a.port, b.port), strings.Compare(a.proto, b.proto)) })
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	var b strings.Builder
	fmt.Fprintln(&b, "columns:")
	for i, n := range names {
		fmt.Fprintf(&b, "  %2d %s\n", i+1, n)
	}
	for _, k := range keys {
		g := groups[k]
		fmt.Fprintf(&b, "\n%d/%s  (. allow  X deny  - self)\n", k.port, k.proto)
		fmt.Fprintf(&b, "%-*s ", width, "from \\ to")
		for i := range names {
			fmt.Fprintf(&b, "%3d", i+1)
		}
		b.WriteByte('\n')
		for _, from := range names {
			fmt.Fprintf(&b, "%-*s ", width, from)
			for _, to := range names {
				cell := " "
				switch {
				case from == to:
					cell = "-"
				case g[[2]string{from, to}] == Allow:
					cell = "."
				case g[[2]string{from, to}] == Deny:
					cell = "X"
				}
				fmt.Fprintf(&b, "%3s", cell)
			}
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMatrix writes one grid for every port: a row per source, a column
// per destination (headed by the ports it declares), and in each cell
// "." when every port answered, "X" when none did, "~" when some did.
// A destination with more than two ports is headed by their number.
// Small bundles read best this way; WriteTable has a grid per port.
func (r Report) WriteMatrix(w io.Writer) error {
	pods := map[string]bool{}
	ports := map[string][]string{}     // destination -> "80/TCP", ...
	verdicts := map[[2]string][2]int{} // (from, to) -> allowed, denied
	seenPort := map[string]map[string]bool{}
	for _, res := range r.Results {
		pods[res.From], pods[res.To] = true, true
		pp := fmt.Sprintf("%d/%s", res.Port, res.Protocol)
		if seenPort[res.To] == nil {
			seenPort[res.To] = map[string]bool{}
		}
		if !seenPort[res.To][pp] {
			seenPort[res.To][pp] = true
			ports[res.To] = append(ports[res.To], pp)
		}
		v := verdicts[[2]string{res.From, res.To}]
		if res.Verdict == Allow {
			v[0]++
		} else {
			v[1]++
		}
		verdicts[[2]string{res.From, res.To}] = v
	}
	names := slices.Sorted(maps.Keys(pods))
	rowW := len("from \\ to")
	for _, n := range names {
		rowW = max(rowW, len(n))
	}
	colW := make([]int, len(names))
	sub := make([]string, len(names))
	for i, n := range names {
		sub[i] = strings.Join(ports[n], ",")
		if len(ports[n]) > 2 {
			sub[i] = fmt.Sprintf("%d ports", len(ports[n]))
		}
		colW[i] = max(len(n), len(sub[i]))
	}
	var b strings.Builder
	line := func(first string, cells []string) {
		var l strings.Builder
		fmt.Fprintf(&l, "%-*s", rowW, first)
		for i, c := range cells {
			fmt.Fprintf(&l, "  %-*s", colW[i], c)
		}
		b.WriteString(strings.TrimRight(l.String(), " ") + "\n")
	}
	line("from \\ to", names)
	line("", sub)
	for _, from := range names {
		cells := make([]string, len(names))
		for i, to := range names {
			v, ok := verdicts[[2]string{from, to}]
			switch {
			case from == to:
				cells[i] = "-"
			case !ok:
				cells[i] = ""
			case v[1] == 0:
				cells[i] = "."
			case v[0] == 0:
				cells[i] = "X"
			default:
				cells[i] = "~"
			}
		}
		line(from, cells)
	}
	b.WriteString("(. every port answered  X none  ~ some  - self)\n")
	_, err := io.WriteString(w, b.String())
	return err
}
