package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztnet/zt/pkg/reach"
)

const (
	cluster  = "../../examples/shop/cluster.yaml"
	policies = "../../examples/shop/policies.yaml"
)

func ztctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func TestReachJSON(t *testing.T) {
	out, errOut, code := ztctl(t, "reach", "-f", cluster, "--bundle", policies, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r reach.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("output is not the reachability JSON: %v\n%s", err, out)
	}
	var allowed []string
	for _, res := range r.Results {
		if res.Verdict == reach.Allow {
			allowed = append(allowed, res.From+">"+res.To)
		}
	}
	if got := strings.Join(allowed, " "); got != "shop/api>data/db shop/frontend>shop/api" {
		t.Errorf("allowed %s", got)
	}
}

func TestReachOne(t *testing.T) {
	out, _, code := ztctl(t, "reach", "-f", cluster+","+policies, "--from", "shop/attacker", "--to", "data/db", "--port", "5432/TCP")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"DENY  shop/attacker -> data/db  5432/TCP", "isolated by shop/default-deny; no rule allows it", "isolated by data/db-from-api, data/default-deny"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = ztctl(t, "reach", "-f", cluster+","+policies, "--from", "shop/api", "--to", "data/db", "--port", "5432", "-o", "json")
	var e struct {
		Verdict string
		Ingress struct{ AllowedBy []string }
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatal(err)
	}
	if e.Verdict != "allow" || len(e.Ingress.AllowedBy) != 1 || e.Ingress.AllowedBy[0] != "data/db-from-api ingress[0]" {
		t.Errorf("verdict %+v from %s", e, out)
	}
	out, _, _ = ztctl(t, "reach", "-f", cluster, "--from", "shop/api", "--to", "shop/api", "--port", "8080")
	if !strings.Contains(out, "ALLOW") || !strings.Contains(out, "itself is not subject to NetworkPolicy") {
		t.Errorf("self traffic: %s", out)
	}
}

func TestReachErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"reach"}, `required flag(s) "bundle" not set`},
		{[]string{"reach", "-f", filepath.Join(dir, "missing.yaml")}, "no such file"},
		{[]string{"reach", "-f", bad}, "bad.yaml: document 2: unsupported kind ConfigMap"},
		{[]string{"reach", "-f", cluster, "-f", cluster}, "duplicate Namespace shop"},
		{[]string{"reach", "-f", cluster, "-o", "yaml"}, `unknown output format "yaml"`},
		{[]string{"reach", "-f", cluster, "--from", "shop/api"}, "--from, --to and --port go together"},
		{[]string{"reach", "-f", cluster, "--from", "api", "--to", "shop/api", "--port", "80"}, "want namespace/name"},
		{[]string{"reach", "-f", cluster, "--from", "shop/nope", "--to", "shop/api", "--port", "80"}, "pod shop/nope not found"},
		{[]string{"reach", "-f", cluster, "--from", "shop/api", "--to", "shop/frontend", "--port", "http"}, "--port: invalid port"},
	} {
		_, errOut, code := ztctl(t, tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("ztctl %v: exit %d, stderr %q; want non-zero and %q", tc.args, code, errOut, tc.want)
		}
	}
}

func TestReachInvalidPolicyIsSkipped(t *testing.T) {
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.yaml")
	if err := os.WriteFile(extra, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: broken}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := ztctl(t, "reach", "-f", cluster, "-f", policies, "-f", extra, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "networkpolicy shop/broken") || !strings.Contains(errOut, "spec.ingress[0].from[0].ipBlock.except[0]") {
		t.Errorf("warning does not name the policy and field: %q", errOut)
	}
	if !strings.Contains(out, `"verdict": "allow"`) {
		t.Errorf("the valid policies must still be in force: %s", out)
	}
}

func TestReachClusterDefaultDeny(t *testing.T) {
	out, _, code := ztctl(t, "reach", "-f", cluster, "--cluster-default-deny", "-o", "json")
	if code != 0 {
		t.Fatal("exit", code)
	}
	if strings.Contains(out, `"verdict": "allow"`) {
		t.Errorf("with cluster-default-deny and no policy nothing may pass:\n%s", out)
	}
	dir := t.TempDir()
	ex := filepath.Join(dir, "ex.yaml")
	if err := os.WriteFile(ex, []byte("exemptNamespaces: [data]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := ztctl(t, "reach", "-f", cluster, "--default-deny-exemptions", ex, "--from", "data/db", "--to", "shop/api", "--port", "8080")
	if code != 0 {
		t.Fatal(errOut)
	}
	// db is exempt (egress allowed) but api is isolated by the default deny.
	if !strings.Contains(out, "DENY") || !strings.Contains(out, "isolated by shop/zt:cluster-default-deny") {
		t.Errorf("got %s", out)
	}
	if err := os.WriteFile(ex, []byte("exemptNamespace: [data]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := ztctl(t, "reach", "-f", cluster, "--default-deny-exemptions", ex); code == 0 || !strings.Contains(errOut, "exemptNamespace") {
		t.Errorf("a misspelt exemptions file must be refused: %d %s", code, errOut)
	}
}
