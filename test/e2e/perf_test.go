package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ztnet/zt/tools/bench/controlplane"
)

// TestAgentPerf runs the control-plane benchmark of tools/bench in full
// (package tools/bench/controlplane): policy propagation, kubectl apply or
// delete and client-go create or delete to the first real packet whose
// verdict changed, at 100, 1,000 and 10,000 pods (1,000 policies at the
// last size), the agent's own figure for each change, the agent's memory
// up to 100,000 pods, a hole watch while pods are added, and the
// compiler's full and incremental compile on one core. Not part of the
// default run:
//
//	ZT_E2E_PERF=1 go test -count=1 -v -run Perf -timeout 90m ./test/e2e/
func TestAgentPerf(t *testing.T) {
	if os.Getenv("ZT_E2E_PERF") != "1" {
		t.Skip("set ZT_E2E_PERF=1 to run the performance test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()
	r, err := controlplane.Run(ctx, controlplane.Config{Log: perfLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	if err := r.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("results:\n%s\n%s", md.String(), js)
	for _, tg := range r.Targets {
		if !tg.Measured {
			t.Errorf("target %q not measured by a full run", tg.Name)
		}
	}
}

type perfLog struct{ t *testing.T }

func (l perfLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
