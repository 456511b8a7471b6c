package lab_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ztnet/zt/pkg/flows"
	"github.com/ztnet/zt/pkg/lab"
)

// TestFlowsAllowedAudit: with --flows-allowed-sample=1 the real agent
// records allowed new connections too, so `ztctl flows --verdict allowed`
// audits who talked to whom, naming the rule that allowed it; drops keep
// their policy. (TestDemo shows the default: no allowed records.)
func TestFlowsAllowedAudit(t *testing.T) {
	e := newEnv(t)
	e.mustZtlab("up", "--nodes", "2", "-f", shop("cluster.yaml"), "-f", shop("policies.yaml"),
		"--agent-arg=--flows-allowed-sample=1")
	defer e.mustZtlab("down")
	e.mustZtlab("try", "shop/frontend", "shop/api", "8080", "--expect", "passed")
	e.mustZtlab("try", "shop/frontend", "data/db", "5432", "--expect", "blocked")

	st, err := lab.LoadState(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	var socks []string
	for _, n := range st.Nodes {
		socks = append(socks, n.FlowsSocket)
	}
	query := func(args ...string) []flows.Record {
		t.Helper()
		cmd := exec.Command(ztctlBin, append([]string{"flows", "-o", "json"}, args...)...)
		cmd.Env = append(os.Environ(), "ZT_FLOWS_SOCKET="+strings.Join(socks, ","), "KUBECONFIG=")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ztctl flows %v: %v", args, err)
		}
		var recs []flows.Record
		if err := json.Unmarshal(out, &recs); err != nil {
			t.Fatalf("ztctl flows %v: %v\n%s", args, err, out)
		}
		return recs
	}

	allowed := query("-A", "--verdict", "allowed", "--from", "shop/frontend", "--to", "shop/api", "--port", "8080")
	// The connection is new at the frontend's egress and at the api's
	// ingress: one record at each end (on one node or on two).
	byDir := map[string]flows.Record{}
	for _, r := range allowed {
		byDir[r.Direction] = r
	}
	if len(allowed) != 2 || len(byDir) != 2 {
		t.Fatalf("allowed records frontend -> api:8080: %+v, want one at egress and one at ingress", allowed)
	}
	if r := byDir["egress"]; r.Rule != "shop/frontend-to-api egress[0]" || r.Endpoint != "shop/frontend" {
		t.Errorf("egress allow: rule %q at %q, want shop/frontend-to-api egress[0] at shop/frontend", r.Rule, r.Endpoint)
	}
	if r := byDir["ingress"]; r.Rule != "shop/api-from-frontend ingress[0]" || r.Endpoint != "shop/api" {
		t.Errorf("ingress allow: rule %q at %q, want shop/api-from-frontend ingress[0] at shop/api", r.Rule, r.Endpoint)
	}

	dropped := query("-A", "--verdict", "dropped", "--from", "shop/frontend")
	if len(dropped) != 1 || dropped[0].Dst.Name() != "data/db" || dropped[0].Reason != "sock-denied" ||
		strings.Join(dropped[0].Policies, ",") != "shop/default-deny,shop/frontend-to-api" {
		t.Errorf("drops from the frontend: %+v, want one sock-denied to data/db isolated by shop/default-deny and shop/frontend-to-api", dropped)
	}
}
