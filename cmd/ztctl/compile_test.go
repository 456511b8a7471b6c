package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCompileDeterministic(t *testing.T) {
	a, errA, code := ztctl(t, "compile", "-f", cluster, "-f", policies)
	if code != 0 {
		t.Fatal(errA)
	}
	// The same objects in another order compile to the same text.
	b, _, _ := ztctl(t, "compile", "-f", policies, "-f", cluster)
	if a != b {
		t.Errorf("output depends on input order:\n%s\n---\n%s", a, b)
	}
	for _, want := range []string{
		"pod shop/api (10.244.1.11, fd00:10:244:1::11)",
		"allow peer=259 TCP:8080 rule=2 (shop/api-from-frontend ingress[0])",
		"259    ns=shop app=frontend",
		"pod shop/attacker (10.244.1.66, fd00:10:244:1::66)\n  ingress: isolated by shop/default-deny\n  egress: isolated by shop/default-deny\n",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("output lacks %q:\n%s", want, a)
		}
	}
	js, _, code := ztctl(t, "compile", "-f", cluster, "-o", "json")
	var v compiled
	if code != 0 || json.Unmarshal([]byte(js), &v) != nil || len(v.Endpoints) != 4 || v.Endpoints[0].Ingress.Isolated {
		t.Errorf("json: exit %d, %+v", code, v)
	}
}
