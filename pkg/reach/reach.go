// Package reach holds the reachability report: the format `ztctl reach -o
// json` prints and the lab's probes print too, so the two can be diffed,
// and its computation from the compiler.
package reach

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
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
