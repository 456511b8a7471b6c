// Package e2e_test runs zt-agent end to end: a real etcd and kube-apiserver
// (internal/testenv), the manifests of deploy/ applied with kubectl, the
// agent as its own process holding only its ServiceAccount token, pods as
// network namespaces wired the way a routed CNI wires them (host-side veth
// in the root namespace, a /32 host route naming it), and real TCP and UDP
// packets between them.
//
// The tests need root and a kernel with tcx (6.6+); they never skip. They
// change net.ipv4.ip_forward in the root namespace for their duration and
// restore it. Every namespace, link, route and bpffs pin they make is
// unique per run and removed at cleanup, also on failure.
//
//	go test -count=1 -v ./test/e2e/                     # the scenario
//	ZT_E2E_PERF=1 go test -count=1 -v -run Perf -timeout 30m ./test/e2e/
package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// agentBin is the zt-agent binary built once by TestMain.
var agentBin string

// repoRoot is the module root (this package lives in test/e2e).
var repoRoot string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "test/e2e: must run as root (network namespaces, veths, BPF); it never skips")
		return 1
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/e2e:", err)
		return 1
	}
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	dir, err := os.MkdirTemp("", "zt-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	agentBin = filepath.Join(dir, "zt-agent")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-o", agentBin, "./cmd/zt-agent")
	cmd.Dir = repoRoot
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "test/e2e: go build ./cmd/zt-agent:", err)
		return 1
	}
	return m.Run()
}
