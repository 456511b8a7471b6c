package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ztnet/zt/internal/kubeenv"
	"github.com/ztnet/zt/tools/bench/controlplane/internal/compileresult"
)

// binaries are built from the repository for each run, so the figures are
// those of the code at hand.
type binaries struct {
	dir, agent, ztlab, compilebench string
}

func buildBinaries(ctx context.Context) (binaries, error) {
	root, err := kubeenv.RepoRoot()
	if err != nil {
		return binaries{}, err
	}
	dir, err := os.MkdirTemp("", "zt-bench-bin-")
	if err != nil {
		return binaries{}, err
	}
	b := binaries{dir: dir, agent: filepath.Join(dir, "zt-agent"), ztlab: filepath.Join(dir, "ztlab"),
		compilebench: filepath.Join(dir, "compilebench")}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/zt-agent", "./cmd/ztlab", "./tools/bench/controlplane/internal/compilebench")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return binaries{}, fmt.Errorf("go build: %w: %s", err, out)
	}
	return b, nil
}

// runCompile runs one compilebench child on one core and reads its peak
// RSS from rusage.
func runCompile(ctx context.Context, bin string, c compileCase, updates int) (CompileRow, error) {
	cmd := exec.CommandContext(ctx, bin, "-pods", strconv.Itoa(c.pods), "-policies", strconv.Itoa(c.policies),
		"-view", c.view, "-updates", strconv.Itoa(updates))
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return CompileRow{}, fmt.Errorf("compilebench %d pods %d policies %s view: %w: %s", c.pods, c.policies, c.view, err, stderr.Bytes())
	}
	var r compileresult.Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return CompileRow{}, fmt.Errorf("compilebench output: %w", err)
	}
	if r.GOMAXPROCS != 1 {
		return CompileRow{}, fmt.Errorf("compilebench ran with GOMAXPROCS=%d, want 1", r.GOMAXPROCS)
	}
	row := CompileRow{
		Pods: r.Pods, Policies: r.Policies, View: r.View, FullMs: float64(r.FullNs) / 1e6,
		CompilerHeapBytes: r.CompilerHeapBytes, InputHeapBytes: r.InputHeapBytes,
		Endpoints: r.Endpoints, Identities: r.Identities, Problems: r.Problems,
		ChildSeconds: time.Since(start).Seconds(),
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		row.MaxRSSKiB = ru.Maxrss // KiB on Linux
	}
	row.RelabelMs, row.Relabel = msSeries(r.RelabelNs)
	row.PolicyMs, row.Policy = msSeries(r.PolicyNs)
	row.ReferenceMs, row.Reference = msSeries(r.ReferenceNs)
	return row, nil
}

// msSeries converts samples in ns to ms and summarizes them.
func msSeries(ns []int64) ([]float64, Stats) {
	var out []float64
	for _, v := range ns {
		out = append(out, float64(v)/1e6)
	}
	return out, summarize(out)
}
