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
// tails are printed when the test failed.
package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// EnvBinDir names a folder holding etcd, kube-apiserver and kubectl.
	EnvBinDir = "ZT_K8S_BIN"

	// AdminUser is the static-token user in group system:masters.
	AdminUser = "zt-testenv-admin"

	// ServiceAccountIssuer is the issuer of service-account tokens.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

	serviceCIDR = "10.96.0.0/16"
	serviceIP   = "10.96.0.1"

	defaultStartTimeout = 60 * time.Second
	stopGrace           = 15 * time.Second
	tailLines           = 40
	portAttempts        = 3
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
	dir        string
	binDir     string
	url        string
	pki        *pki
	kubeconfig string
	etcd       *process
	apiserver  *process
}

// BinDir returns the folder with the pinned binaries: $ZT_K8S_BIN if set,
// else <repo root>/_out/bin. It does not check that the binaries exist.
func BinDir() (string, error) {
	if d := os.Getenv(EnvBinDir); d != "" {
		return filepath.Abs(d)
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "_out", "bin"), nil
}

// repoRoot walks up from the working directory (a package folder under
// `go test`) to the go.mod of module github.com/ztnet/zt.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; {
		if f, err := os.Open(filepath.Join(d, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if fs := strings.Fields(sc.Text()); len(fs) == 2 && fs[0] == "module" {
					if fs[1] == "github.com/ztnet/zt" {
						f.Close()
						return d, nil
					}
					break
				}
			}
			f.Close()
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod of github.com/ztnet/zt above %s; set %s", dir, EnvBinDir)
		}
		d = parent
	}
}

// StartAPIServer starts etcd and kube-apiserver (RBAC, static admin token,
// service-account tokens) on loopback, waits until /readyz is ok, and stops
// both in t.Cleanup. It fails the test if the binaries are missing or the
// server is not ready within the start timeout.
func StartAPIServer(t testing.TB, opts ...Option) *APIServer {
	t.Helper()
	o := options{startTimeout: defaultStartTimeout}
	for _, opt := range opts {
		opt(&o)
	}

	binDir, err := BinDir()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if fi, err := os.Stat(filepath.Join(binDir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			t.Fatalf("testenv: %s not found in %s: run hack/k8s-bins.sh to build the pinned "+
				"etcd, kube-apiserver and kubectl (about 12 minutes the first time), or set %s", b, binDir, EnvBinDir)
		}
	}

	s := &APIServer{dir: t.TempDir(), binDir: binDir}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("testenv: %s", s.logTails())
		}
	})

	if s.pki, err = writePKI(s.dir); err != nil {
		t.Fatalf("testenv: generate certificates: %v", err)
	}
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", s.pki.adminToken, AdminUser, AdminUser)
	if err := os.WriteFile(filepath.Join(s.dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}

	deadline := time.Now().Add(o.startTimeout)
	for attempt := 1; ; attempt++ {
		err = s.start(attempt, deadline, o.extraArgs)
		if err == nil {
			break
		}
		s.stop()
		if errors.Is(err, errPortRace) && attempt < portAttempts && time.Now().Before(deadline) {
			t.Logf("testenv: attempt %d: %v; retrying with other ports", attempt, err)
			continue
		}
		t.Fatalf("testenv: start kube-apiserver (timeout %s): %v\n%s", o.startTimeout, err, s.logTails())
	}

	if err := s.writeKubeconfig(); err != nil {
		t.Fatalf("testenv: write kubeconfig: %v", err)
	}
	// No controller-manager runs, so nothing creates "default" service
	// accounts; ServiceAccount admission needs one for pods.
	s.ensureServiceAccount(t, metav1.NamespaceDefault, "default")
	return s
}

// start runs etcd and kube-apiserver on fresh ports and waits for readiness.
func (s *APIServer) start(attempt int, deadline time.Time, extra []string) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	clientURL := "http://" + hostPort(ports[0])
	peerURL := "http://" + hostPort(ports[1])
	s.url = "https://" + hostPort(ports[2])

	etcdDir := filepath.Join(s.dir, fmt.Sprintf("etcd-%d", attempt))
	s.etcd, err = startProcess("etcd", filepath.Join(s.binDir, "etcd"),
		filepath.Join(s.dir, fmt.Sprintf("etcd-%d.log", attempt)),
		"--name=testenv",
		"--data-dir="+etcdDir,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=testenv="+peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	httpc := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(deadline, s.etcd, func() bool {
		resp, err := httpc.Get(clientURL + "/health")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`)
	}); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	args := []string{
		"--etcd-servers=" + clientURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[2]),
		"--tls-cert-file=" + s.pki.certFile,
		"--tls-private-key-file=" + s.pki.keyFile,
		"--client-ca-file=" + s.pki.caFile,
		"--token-auth-file=" + filepath.Join(s.dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + s.pki.saPubFile,
		"--service-account-signing-key-file=" + s.pki.saKeyFile,
		"--service-cluster-ip-range=" + serviceCIDR,
		// No endpoints for the "kubernetes" Service: loopback addresses are
		// not valid endpoints, and nothing here routes to it.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--cert-dir=" + filepath.Join(s.dir, "certs"),
		"--profiling=false",
	}
	args = append(args, extra...)
	s.apiserver, err = startProcess("kube-apiserver", filepath.Join(s.binDir, "kube-apiserver"),
		filepath.Join(s.dir, fmt.Sprintf("kube-apiserver-%d.log", attempt)), args...)
	if err != nil {
		return err
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.pki.caPEM)
	tlsc := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer tlsc.CloseIdleConnections()
	if err := waitFor(deadline, s.apiserver, func() bool {
		req, _ := http.NewRequest(http.MethodGet, s.url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.pki.adminToken)
		resp, err := tlsc.Do(req)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return nil
}

// waitFor polls ok until it is true, p exits, or deadline passes.
func waitFor(deadline time.Time, p *process, ok func() bool) error {
	for {
		if p.exited() {
			if p.portInUse() {
				return fmt.Errorf("exited (%v): %w", p.err, errPortRace)
			}
			return fmt.Errorf("exited early: %v (log %s)", p.err, p.logPath)
		}
		if ok() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready before the start timeout (log %s)", p.logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *APIServer) stop() {
	// The apiserver first, so it does not log storms of etcd errors.
	s.apiserver.stop(stopGrace)
	s.etcd.stop(stopGrace)
}

func (s *APIServer) logTails() string {
	var b strings.Builder
	for _, p := range []*process{s.etcd, s.apiserver} {
		if p == nil {
			continue
		}
		fmt.Fprintf(&b, "--- last %d lines of %s (%s) ---\n%s\n", tailLines, p.name, p.logPath, p.tail(tailLines))
	}
	return b.String()
}

func (s *APIServer) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testenv"] = &clientcmdapi.Cluster{Server: s.url, CertificateAuthorityData: s.pki.caPEM}
	cfg.AuthInfos[AdminUser] = &clientcmdapi.AuthInfo{Token: s.pki.adminToken}
	cfg.Contexts["testenv"] = &clientcmdapi.Context{Cluster: "testenv", AuthInfo: AdminUser}
	cfg.CurrentContext = "testenv"
	s.kubeconfig = filepath.Join(s.dir, "admin.kubeconfig")
	return clientcmd.WriteToFile(*cfg, s.kubeconfig)
}

// URL is the apiserver's base URL, https://127.0.0.1:PORT.
func (s *APIServer) URL() string { return s.url }

// Dir is the server's temp folder (certificates, logs, etcd data).
func (s *APIServer) Dir() string { return s.dir }

// CACert is the PEM of the CA that signed the serving certificate.
func (s *APIServer) CACert() []byte { return append([]byte(nil), s.pki.caPEM...) }

// AdminConfig is a fresh client config for a system:masters user.
func (s *APIServer) AdminConfig() *rest.Config { return s.ConfigForToken(s.pki.adminToken) }

// ConfigForToken is a fresh client config that authenticates with token.
func (s *APIServer) ConfigForToken(token string) *rest.Config {
	return &rest.Config{
		Host:            s.url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CACert()},
		QPS:             100,
		Burst:           200,
	}
}

// AdminClient is a clientset for AdminConfig.
func (s *APIServer) AdminClient(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(s.AdminConfig())
	if err != nil {
		t.Fatalf("testenv: admin client: %v", err)
	}
	return cs
}

// Kubeconfig is the path of an admin kubeconfig file for kubectl.
func (s *APIServer) Kubeconfig() string { return s.kubeconfig }

// KubectlPath is the path of the pinned kubectl binary.
func (s *APIServer) KubectlPath() string { return filepath.Join(s.binDir, "kubectl") }

// KubectlCmd is a kubectl command with the admin kubeconfig and a discovery
// cache inside the server's temp folder (not in $HOME).
func (s *APIServer) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--kubeconfig=" + s.kubeconfig, "--cache-dir=" + filepath.Join(s.dir, "kubectl-cache")}, args...)
	return exec.CommandContext(ctx, s.KubectlPath(), all...)
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
	cs := s.AdminClient(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("testenv: create namespace %s: %v", name, err)
	}
	s.ensureServiceAccount(t, name, "default")
}

// ensureServiceAccount creates the namespace (if missing) and the
// ServiceAccount (if missing).
func (s *APIServer) ensureServiceAccount(t testing.TB, namespace, name string) {
	t.Helper()
	ctx := context.Background()
	cs := s.AdminClient(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("testenv: create namespace %s: %v", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("testenv: create service account %s/%s: %v", namespace, name, err)
	}
}

// TokenFor returns a one-hour token for the ServiceAccount namespace/name,
// minted through the TokenRequest API. The namespace and ServiceAccount are
// created if missing; no RBAC is granted.
func (s *APIServer) TokenFor(t testing.TB, namespace, serviceAccount string) string {
	t.Helper()
	s.ensureServiceAccount(t, namespace, serviceAccount)
	exp := int64(3600)
	tr, err := s.AdminClient(t).CoreV1().ServiceAccounts(namespace).CreateToken(context.Background(), serviceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("testenv: token for %s/%s: %v", namespace, serviceAccount, err)
	}
	return tr.Status.Token
}
