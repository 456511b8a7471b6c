package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	junit := filepath.Join(dir, "junit.xml")
	list := filepath.Join(dir, "list.txt")
	os.WriteFile(junit, []byte(`<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4"><testsuite name="Kubernetes e2e suite" tests="4">
<testcase name="[It] [sig-network] Netpol a [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="passed" time="12.51"></testcase>
<testcase name="[It] [sig-network] Netpol b [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="failed" time="3"><failure type="failed">[FAILED] reachability mismatch
more</failure></testcase>
<testcase name="[It] [sig-network] Netpol [Feature:SCTPConnectivity] c" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
<testcase name="[It] [sig-node] other" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
</testsuite></testsuites>`), 0o644)
	os.WriteFile(list, []byte("[sig-network] Netpol a [Feature:NetworkPolicy]\n[sig-network] Netpol b [Feature:NetworkPolicy]\n[sig-network] Netpol [Feature:SCTPConnectivity] c\n[sig-network] Netpol d\n"), 0o644)
	var b strings.Builder
	err := run(junit, list, "", skipList{{regexp.MustCompile(`SCTP`), "no SCTP"}}, &b)
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"**4 tests: 1 passed, 1 failed, 1 skipped, 1 not run.**",
		"| failed | [sig-network] Netpol b [Feature:NetworkPolicy] | 3 | [FAILED] reachability mismatch |",
		"| skipped | [sig-network] Netpol [Feature:SCTPConnectivity] c | 0 | no SCTP |",
		"| not run | [sig-network] Netpol d |  |  |",
		"| passed | [sig-network] Netpol a [Feature:NetworkPolicy] | 13 |  |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "sig-node") {
		t.Errorf("a test outside the list is reported:\n%s", out)
	}
}
