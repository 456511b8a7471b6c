package lab_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ztnet/zt/internal/kubeenv"
)

// Binaries built once by TestMain: the ztlab command under test, the
// zt-agent it runs on every node and ztctl (the demo reads flows with it).
var (
	ztlabBin string
	agentBin string
	ztctlBin string
	k8sBin   string
	repoRoot string
)

// The lab tests need root (namespaces, veths, bind mounts, BPF) and the
// pinned Kubernetes binaries; they never skip.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "pkg/lab: must run as root (network namespaces, veths, BPF); it never skips")
		return 1
	}
	var err error
	if repoRoot, err = kubeenv.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "pkg/lab:", err)
		return 1
	}
	if k8sBin, err = kubeenv.BinDir(); err != nil {
		fmt.Fprintln(os.Stderr, "pkg/lab:", err)
		return 1
	}
	if err := kubeenv.CheckBinaries(k8sBin); err != nil {
		fmt.Fprintln(os.Stderr, "pkg/lab:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "ztlab-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pkg/lab:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// TestNotRoot runs ztlab as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "pkg/lab:", err)
		return 1
	}
	ztlabBin = filepath.Join(dir, "ztlab")
	agentBin = filepath.Join(dir, "zt-agent")
	ztctlBin = filepath.Join(dir, "ztctl")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for bin, pkg := range map[string]string{ztlabBin: "./cmd/ztlab", agentBin: "./cmd/zt-agent", ztctlBin: "./cmd/ztctl"} {
		cmd := exec.Command(goBin, "build", "-o", bin, pkg)
		cmd.Dir = repoRoot
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "pkg/lab: go build %s: %v\n", pkg, err)
			return 1
		}
	}
	return m.Run()
}
