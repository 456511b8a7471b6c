// Package controlplane measures zt's control plane for tools/bench: policy
// propagation through a real kube-apiserver to the kernel, the pkg/policy
// compiler's full and incremental compile, and the agent's memory per pod.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Config selects what Run measures.
type Config struct {
	// Quick runs small pod counts and few repetitions (well under 2 minutes).
	Quick bool
	// K8sBin is the directory holding kube-apiserver, etcd and kubectl;
	// default <repo>/_out/bin.
	K8sBin string
	// Log receives progress lines; may be nil.
	Log io.Writer
}

// Report holds the raw figures of one run.
type Report struct {
	Quick bool `json:"quick"`
}

// Run measures the control plane.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	return nil, errors.New("controlplane: not implemented yet")
}

// Markdown writes a "## Control plane" section for docs/benchmarks.md.
func (r *Report) Markdown(w io.Writer) error {
	_, err := fmt.Fprintf(w, "## Control plane\n\n")
	return err
}
