// Package testenv starts a real etcd and kube-apiserver on loopback for tests.
//
// The binaries come from the pinned tools/k8s module and are built once by
// hack/k8s-bins.sh into <repo>/_out/bin (or the folder named by ZT_K8S_BIN).
// A missing binary fails the test: it is never skipped.
//
//	srv := testenv.StartAPIServer(t)
//	cs := kubernetes.NewForConfigOrDie(srv.AdminConfig())
//	tok := srv.TokenFor(t, "zt-system", "zt-agent")
//	agentCfg := srv.ConfigForToken(tok)
//
// Every server has its own ports, temp folder, CA and tokens, so tests in
// different packages (separate processes) can run at the same time. Both
// processes are stopped and their folder removed in t.Cleanup; their logs'
// tails are printed when the test failed. It is a thin wrapper of
// internal/kubeenv, which does the same without package testing.
package testenv

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ztnet/zt/internal/kubeenv"
)

const (
	// EnvBinDir names a folder holding etcd, kube-apiserver and kubectl.
	EnvBinDir = kubeenv.EnvBinDir

	// AdminUser is the static-token user in group system:masters.
	AdminUser = kubeenv.AdminUser

	// ServiceAccountIssuer is the issuer of service-account tokens.
	ServiceAccountIssuer = kubeenv.ServiceAccountIssuer
)

type options struct {
	startTimeout time.Duration
	extraArgs    []string
}

// Option changes how StartAPIServer starts the server.
type Option func(*options)

// WithStartTimeout bounds the time from starting etcd to the apiserver's
// /readyz answering ok (default 60 s).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// WithAPIServerArgs appends kube-apiserver flags (a later flag wins over the
// default of the same name), e.g. "--enable-admission-plugins=NodeRestriction".
func WithAPIServerArgs(args ...string) Option {
	return func(o *options) { o.extraArgs = append(o.extraArgs, args...) }
}

// APIServer is a running kube-apiserver with its own etcd.
type APIServer struct {
	s *kubeenv.Server
}

// BinDir returns the folder with the pinned binaries: $ZT_K8S_BIN if set,
// else <repo root>/_out/bin. It does not check that the binaries exist.
func BinDir() (string, error) { return kubeenv.BinDir() }

// StartAPIServer starts etcd and kube-apiserver (RBAC, static admin token,
// service-account tokens) on loopback, waits until /readyz is ok, and stops
// both in t.Cleanup. It fails the test if the binaries are missing or the
// server is not ready within the start timeout.
func StartAPIServer(t testing.TB, opts ...Option) *APIServer {
	t.Helper()
	o := options{startTimeout: kubeenv.DefaultStartTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	s, err := kubeenv.Start(kubeenv.Options{
		Dir:          t.TempDir(),
		StartTimeout: o.startTimeout,
		ExtraArgs:    o.extraArgs,
		Logf:         t.Logf,
	})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("testenv: %s", s.LogTails())
		}
	})
	return &APIServer{s: s}
}

// URL is the apiserver's base URL, https://127.0.0.1:PORT.
func (s *APIServer) URL() string { return s.s.URL() }

// Dir is the server's temp folder (certificates, logs, etcd data).
func (s *APIServer) Dir() string { return s.s.Dir() }

// CACert is the PEM of the CA that signed the serving certificate.
func (s *APIServer) CACert() []byte { return s.s.CACert() }

// AdminConfig is a fresh client config for a system:masters user.
func (s *APIServer) AdminConfig() *rest.Config { return s.s.AdminConfig() }

// ConfigForToken is a fresh client config that authenticates with token.
func (s *APIServer) ConfigForToken(token string) *rest.Config { return s.s.ConfigForToken(token) }

// AdminClient is a clientset for AdminConfig.
func (s *APIServer) AdminClient(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := s.s.AdminClient()
	if err != nil {
		t.Fatalf("testenv: admin client: %v", err)
	}
	return cs
}

// Kubeconfig is the path of an admin kubeconfig file for kubectl.
func (s *APIServer) Kubeconfig() string { return s.s.Kubeconfig() }

// KubectlPath is the path of the pinned kubectl binary.
func (s *APIServer) KubectlPath() string { return s.s.KubectlPath() }

// KubectlCmd is a kubectl command with the admin kubeconfig and a discovery
// cache inside the server's temp folder (not in $HOME).
func (s *APIServer) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return s.s.KubectlCmd(ctx, args...)
}

// Kubectl runs kubectl (see KubectlCmd) and returns its stdout; it fails
// the test with kubectl's stderr if kubectl fails.
func (s *APIServer) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := s.KubectlCmd(ctx, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// CreateNamespace creates a namespace and its "default" ServiceAccount (which
// a controller-manager would create), so pods can be created in it.
func (s *APIServer) CreateNamespace(t testing.TB, name string, labels map[string]string) {
	t.Helper()
	if err := s.s.CreateNamespace(context.Background(), name, labels); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// TokenFor returns a one-hour token for the ServiceAccount namespace/name,
// minted through the TokenRequest API. The namespace and ServiceAccount are
// created if missing; no RBAC is granted.
func (s *APIServer) TokenFor(t testing.TB, namespace, serviceAccount string) string {
	t.Helper()
	tok, err := s.s.TokenFor(context.Background(), namespace, serviceAccount, time.Hour)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return tok
}
