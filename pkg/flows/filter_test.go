package flows

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestFilter(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	web := Peer{IP: ipWeb, Port: 40000, Namespace: "shop", Pod: "web", Labels: webLbls}
	db := Peer{IP: ipDB, Port: 5432, Namespace: "data", Pod: "db", Labels: dbLbls}
	world := Peer{IP: ipWorld, Port: 443, Reserved: "world"}
	recs := map[string]Record{
		"web>db":    {Time: t0, Node: "n1", Src: web, Dst: db, Protocol: "TCP", Verdict: "drop", Reason: "policy-denied"},
		"world>web": {Time: t0.Add(time.Hour), Node: "n2", Src: world, Dst: Peer{IP: ipWeb, Port: 80, Namespace: "shop", Pod: "web", Labels: webLbls}, Protocol: "UDP", Verdict: "allow", Reason: "allowed"},
		"web>world": {Time: t0.Add(2 * time.Hour), Node: "n1", Src: web, Dst: world, Protocol: "TCP", Verdict: "audit", Reason: "policy-denied"},
		"summary":   {Time: t0.Add(3 * time.Hour), Node: "n1", Src: web, Verdict: "drop", Reason: ReasonSuppressed, Suppressed: 5},
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want string // matching record names, sorted
	}{
		{"zero", Filter{}, "summary web>db web>world world>web"},
		{"namespace either side", Filter{Namespace: "data"}, "web>db"},
		{"namespace source side", Filter{Namespace: "shop"}, "summary web>db web>world world>web"},
		{"all namespaces wins", Filter{Namespace: "data", AllNamespaces: true}, "summary web>db web>world world>web"},
		{"pod ns/name", Filter{Pod: "data/db"}, "web>db"},
		{"pod bare name scoped", Filter{Namespace: "data", Pod: "web"}, ""},
		{"pod bare name", Filter{Namespace: "shop", Pod: "web"}, "summary web>db web>world world>web"},
		{"from pod", Filter{From: "shop/web"}, "summary web>db web>world"},
		{"to pod", Filter{To: "shop/web"}, "world>web"},
		{"from selector", Filter{From: "app=web"}, "summary web>db web>world"},
		{"to selector set", Filter{To: "tier in (data,x)"}, "web>db"},
		{"to selector scoped by namespace", Filter{Namespace: "shop", To: "app=db"}, ""},
		{"from world", Filter{From: "world"}, "world>web"},
		{"to cidr", Filter{To: "203.0.113.0/24"}, "web>world"},
		{"from ip", Filter{From: "10.1.0.10"}, "summary web>db web>world"},
		{"verdict dropped", Filter{Verdict: "dropped"}, "summary web>db"},
		{"verdict allowed", Filter{Verdict: "allowed"}, "world>web"},
		{"verdict audit", Filter{Verdict: "audit"}, "web>world"},
		{"reason", Filter{Reason: "policy-denied"}, "web>db web>world"},
		{"reason suppressed", Filter{Reason: "suppressed"}, "summary"},
		{"port", Filter{Port: 5432}, "web>db"},
		{"protocol", Filter{Protocol: "udp"}, "world>web"},
		{"since", Filter{Since: t0.Add(90 * time.Minute)}, "summary web>world"},
		{"until", Filter{Until: t0.Add(time.Hour)}, "web>db world>web"},
		{"node", Filter{Node: "n2"}, "world>web"},
		{"combined", Filter{Namespace: "shop", Verdict: "drop", Reason: "policy-denied", Port: 5432, Protocol: "TCP"}, "web>db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			if err := f.Compile(); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, name := range []string{"summary", "web>db", "web>world", "world>web"} {
				r := recs[name]
				if f.Match(&r) {
					got = append(got, name)
				}
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Errorf("got %q, want %q", g, tc.want)
			}
			// The URL form carries the same filter.
			f2, err := ParseFilter(f.Values(), t0)
			if err != nil {
				t.Fatalf("round trip %v: %v", f.Values(), err)
			}
			for name, r := range recs {
				if f.Match(&r) != f2.Match(&r) {
					t.Errorf("%s: URL form %v decides differently", name, f.Values())
				}
			}
		})
	}
}

func TestFilterErrors(t *testing.T) {
	for _, tc := range []struct {
		f    Filter
		want string
	}{
		{Filter{Verdict: "maybe"}, "want dropped, allowed or audit"},
		{Filter{Reason: "bad"}, "policy-denied"},
		{Filter{From: "app in (x"}, "label selector"},
		{Filter{To: "a/b/c"}, "want namespace/pod"},
		{Filter{Pod: "app=x"}, "want namespace/pod or pod"},
		{Filter{Last: -1}, "last -1"},
		{Filter{Since: time.Unix(10, 0), Until: time.Unix(5, 0)}, "is before since"},
	} {
		err := tc.f.Compile()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.f, err, tc.want)
		}
		r := Record{Src: Peer{IP: netip.MustParseAddr("1.2.3.4")}}
		if tc.f.Match(&r) {
			t.Errorf("invalid filter %+v matches", tc.f)
		}
	}
	now := time.Unix(100000, 0)
	for q, want := range map[string]string{
		"port=0": "port", "port=x": "port", "since=yesterday": "since", "last=x": "last", "until=-5m": "until",
	} {
		k, v, _ := strings.Cut(q, "=")
		if _, err := ParseFilter(map[string][]string{k: {v}}, now); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", q, err)
		}
	}
	f, err := ParseFilter(map[string][]string{"since": {"24h"}, "follow": {"1"}}, now)
	if err != nil || !f.Since.Equal(now.Add(-24*time.Hour)) || !f.Follow || !f.AllNamespaces {
		t.Errorf("%+v %v", f, err)
	}
}
