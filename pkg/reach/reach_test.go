package reach_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ztnet/zt/pkg/bundle"
	"github.com/ztnet/zt/pkg/policy"
	"github.com/ztnet/zt/pkg/reach"
)

func shop(t *testing.T, files ...string) (reach.Report, *policy.Compiler) {
	t.Helper()
	var paths []string
	for _, f := range files {
		paths = append(paths, "../../examples/shop/"+f)
	}
	b, err := bundle.Load(paths...)
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	c := policy.Build(s, policy.Options{})
	if p := c.Problems(); len(p) != 0 {
		t.Fatalf("problems: %v", p)
	}
	r, err := reach.Compute(c, reach.Targets(s.Pods))
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

func allowed(r reach.Report) []string {
	var out []string
	for _, res := range r.Results {
		if res.Verdict == reach.Allow {
			out = append(out, res.From+">"+res.To+":"+res.Protocol)
		}
	}
	return out
}

func TestShopReachability(t *testing.T) {
	open, _ := shop(t, "cluster.yaml")
	// 4 pods, each declaring one port: 4 destinations x 3 sources.
	if len(open.Results) != 12 {
		t.Fatalf("%d results, want 12", len(open.Results))
	}
	if n := len(allowed(open)); n != 12 {
		t.Errorf("without policies %d of 12 allowed, want all", n)
	}
	closed, _ := shop(t, "cluster.yaml", "policies.yaml")
	got := strings.Join(allowed(closed), " ")
	want := "shop/api>data/db:TCP shop/frontend>shop/api:TCP"
	if got != want {
		t.Errorf("allowed = %s\nwant      %s", got, want)
	}
}

func TestReportJSONShape(t *testing.T) {
	r, _ := shop(t, "cluster.yaml", "policies.yaml")
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	// Exactly the documented shape: {"results":[{from,to,port,protocol,verdict}]}.
	var generic map[string][]map[string]any
	if err := json.Unmarshal(buf.Bytes(), &generic); err != nil {
		t.Fatal(err)
	}
	if len(generic) != 1 || generic["results"] == nil {
		t.Fatalf("top level keys: %v", generic)
	}
	first := generic["results"][0]
	if len(first) != 5 {
		t.Errorf("row has keys %v, want from,to,port,protocol,verdict", first)
	}
	want := map[string]any{"from": "data/db", "to": "shop/api", "port": float64(8080), "protocol": "TCP", "verdict": "deny"}
	for k, v := range want {
		if first[k] != v {
			t.Errorf("first row %s = %v, want %v", k, first[k], v)
		}
	}
}

func TestTable(t *testing.T) {
	r, _ := shop(t, "cluster.yaml", "policies.yaml")
	var buf bytes.Buffer
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	// The 8080/TCP matrix: only the frontend row has an allow, in the api column (2).
	i := strings.Index(out, "8080/TCP")
	if i < 0 {
		t.Fatalf("no 8080/TCP matrix:\n%s", out)
	}
	lines := strings.Split(out[i:], "\n")
	// Cells are 3 wide after the name column (width of the longest name + 1).
	cells := func(l string) string {
		var c []byte
		for j := len("shop/frontend") + 1 + 2; j < len(l); j += 3 {
			c = append(c, l[j])
		}
		return string(c)
	}
	wantRows := map[string]string{ // columns: data/db shop/api shop/attacker shop/frontend
		"data/db":       "-X  ",
		"shop/api":      " -  ",
		"shop/attacker": " X- ",
		"shop/frontend": " . -",
	}
	for _, l := range lines[2:6] {
		name := strings.Fields(l)[0]
		if got := cells(l); got != wantRows[name] {
			t.Errorf("row %s: cells %q, want %q", name, got, wantRows[name])
		}
	}
	for _, l := range lines {
		if len(l) > 80 {
			t.Errorf("line wider than 80 columns: %q", l)
		}
	}
}

func TestMatrix(t *testing.T) {
	r, _ := shop(t, "cluster.yaml", "policies.yaml")
	var buf bytes.Buffer
	if err := r.WriteMatrix(&buf); err != nil {
		t.Fatal(err)
	}
	want := `from \ to      data/db   shop/api  shop/attacker  shop/frontend
               5432/TCP  8080/TCP  4444/TCP       80/TCP
data/db        -         X         X              X
shop/api       .         -         X              X
shop/attacker  X         X         -              X
shop/frontend  X         .         X              -
(. every port answered  X none  ~ some  - self)
`
	if buf.String() != want {
		t.Errorf("matrix:\n%s\nwant\n%s", buf.String(), want)
	}

	// Some ports of a destination answer: "~"; more than two ports are
	// counted in the header.
	mixed := reach.Report{Results: []reach.Result{
		{From: "a", To: "b", Port: 80, Protocol: "TCP", Verdict: reach.Allow},
		{From: "a", To: "b", Port: 81, Protocol: "TCP", Verdict: reach.Deny},
		{From: "a", To: "b", Port: 82, Protocol: "UDP", Verdict: reach.Deny},
		{From: "b", To: "a", Port: 9, Protocol: "UDP", Verdict: reach.Deny},
	}}
	buf.Reset()
	if err := mixed.WriteMatrix(&buf); err != nil {
		t.Fatal(err)
	}
	want = `from \ to  a      b
           9/UDP  3 ports
a          -      ~
b          X      -
(. every port answered  X none  ~ some  - self)
`
	if buf.String() != want {
		t.Errorf("matrix:\n%s\nwant\n%s", buf.String(), want)
	}
}
