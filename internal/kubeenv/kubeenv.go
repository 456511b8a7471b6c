// Package kubeenv starts and stops a real etcd and kube-apiserver (RBAC, a
// static system:masters token, service-account tokens through the
// TokenRequest API) from the pinned builds in <repo>/_out/bin (or
// $ZT_K8S_BIN), built by hack/k8s-bins.sh.
//
// It has no dependency on package testing: internal/testenv wraps it for
// tests, and the lab (pkg/lab, cmd/ztlab) uses it directly, with Detach so
// the servers outlive `ztlab up`.
//
//	srv, err := kubeenv.Start(kubeenv.Options{Dir: dir})
//	defer srv.Stop()
//	cs := kubernetes.NewForConfigOrDie(srv.AdminConfig())
package kubeenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

	// DefaultStartTimeout bounds the start when Options.StartTimeout is 0.
	DefaultStartTimeout = 60 * time.Second
	stopGrace           = 15 * time.Second
	tailLines           = 40
	portAttempts        = 3
)

// ErrMissingBinaries is returned when etcd, kube-apiserver or kubectl is
// not in the binary folder; the message says how to build them.
var ErrMissingBinaries = errors.New("pinned Kubernetes binaries missing")

// Options says how to start the servers.
type Options struct {
	// Dir is the server's folder (certificates, tokens, logs, etcd data).
	// It must exist; Stop does not remove it.
	Dir string
	// BinDir holds etcd, kube-apiserver and kubectl ("" = BinDir()).
	BinDir string
	// StartTimeout bounds the time from starting etcd to the apiserver's
	// /readyz answering ok (0 = DefaultStartTimeout).
	StartTimeout time.Duration
	// ExtraArgs are appended to the kube-apiserver flags (a later flag
	// wins over the default of the same name).
	ExtraArgs []string
	// BindAddress is the one address the apiserver listens on and
	// advertises ("" = 127.0.0.1). It is added to the serving certificate.
	BindAddress net.IP
	// ExtraSANs are more IP addresses for the serving certificate.
	ExtraSANs []net.IP
	// Detach lets the processes outlive the caller: own session, no death
	// signal. Without it they get SIGKILL when the caller dies.
	Detach bool
	// Logf, if set, receives progress notes (port races and retries).
	Logf func(format string, args ...any)
}

// Server is a running kube-apiserver with its own etcd.
type Server struct {
	dir        string
	binDir     string
	bind       string
	url        string
	pki        *pki
	kubeconfig string
	etcd       *process
	apiserver  *process
}

// BinDir returns the folder with the pinned binaries: $ZT_K8S_BIN if set,
// else <repo root>/_out/bin (the repo found above the working directory).
// It does not check that the binaries exist.
func BinDir() (string, error) {
	if d := os.Getenv(EnvBinDir); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "_out", "bin"), nil
}

// RepoRoot walks up from the working directory to the go.mod of module
// github.com/ztnet/zt.
func RepoRoot() (string, error) {
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

// CheckBinaries reports which pinned binary is missing from binDir and how
// to build it.
func CheckBinaries(binDir string) error {
	for _, b := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if fi, err := os.Stat(filepath.Join(binDir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%w: %s not found in %s: run hack/k8s-bins.sh to build the pinned "+
				"etcd, kube-apiserver and kubectl (about 12 minutes the first time), or set %s", ErrMissingBinaries, b, binDir, EnvBinDir)
		}
	}
	return nil
}

// Start starts etcd and kube-apiserver, waits until /readyz is ok, writes
// an admin kubeconfig and creates the "default" ServiceAccount of the
// default namespace. On error everything started is stopped again and the
// error carries the tails of the logs.
func Start(o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("kubeenv: Options.Dir is required")
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	binDir := o.BinDir
	if binDir == "" {
		var err error
		if binDir, err = BinDir(); err != nil {
			return nil, err
		}
	}
	if err := CheckBinaries(binDir); err != nil {
		return nil, err
	}
	s := &Server{dir: o.Dir, binDir: binDir, bind: "127.0.0.1"}
	sans := o.ExtraSANs
	if o.BindAddress != nil {
		s.bind = o.BindAddress.String()
		sans = append([]net.IP{o.BindAddress}, sans...)
	}
	var err error
	if s.pki, err = writePKI(s.dir, sans); err != nil {
		return nil, fmt.Errorf("generate certificates: %w", err)
	}
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", s.pki.adminToken, AdminUser, AdminUser)
	if err := os.WriteFile(filepath.Join(s.dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return nil, err
	}

	deadline := time.Now().Add(o.StartTimeout)
	for attempt := 1; ; attempt++ {
		err = s.start(attempt, deadline, o)
		if err == nil {
			break
		}
		tails := s.LogTails()
		s.Stop()
		if errors.Is(err, errPortRace) && attempt < portAttempts && time.Now().Before(deadline) {
			logf("kubeenv: attempt %d: %v; retrying with other ports", attempt, err)
			continue
		}
		return nil, fmt.Errorf("start kube-apiserver (timeout %s): %v\n%s", o.StartTimeout, err, tails)
	}

	if err := s.writeKubeconfig(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("write kubeconfig: %w", err)
	}
	// No controller-manager runs, so nothing creates "default" service
	// accounts; ServiceAccount admission needs one for pods.
	if err := s.EnsureServiceAccount(context.Background(), metav1.NamespaceDefault, "default"); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// start runs etcd and kube-apiserver on fresh ports and waits for readiness.
func (s *Server) start(attempt int, deadline time.Time, o Options) error {
	ports, err := freePorts("127.0.0.1", 2)
	if err != nil {
		return err
	}
	apiPort, err := freePorts(s.bind, 1)
	if err != nil {
		return err
	}
	clientURL := "http://" + hostPort("127.0.0.1", ports[0])
	peerURL := "http://" + hostPort("127.0.0.1", ports[1])
	s.url = "https://" + hostPort(s.bind, apiPort[0])

	etcdDir := filepath.Join(s.dir, fmt.Sprintf("etcd-%d", attempt))
	s.etcd, err = startProcess(o.Detach, "etcd", filepath.Join(s.binDir, "etcd"),
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
		"--bind-address=" + s.bind,
		"--advertise-address=" + s.bind,
		fmt.Sprintf("--secure-port=%d", apiPort[0]),
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
	args = append(args, o.ExtraArgs...)
	s.apiserver, err = startProcess(o.Detach, "kube-apiserver", filepath.Join(s.binDir, "kube-apiserver"),
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

// Stop stops kube-apiserver, then etcd (SIGTERM, SIGKILL after a grace
// period). It leaves Dir in place.
func (s *Server) Stop() {
	// The apiserver first, so it does not log storms of etcd errors.
	s.apiserver.stop(stopGrace)
	s.etcd.stop(stopGrace)
}

// Pids are the process ids of etcd and kube-apiserver.
func (s *Server) Pids() (etcd, apiserver int) { return s.etcd.Pid(), s.apiserver.Pid() }

// LogTails returns the last lines of both logs.
func (s *Server) LogTails() string {
	var b strings.Builder
	for _, p := range []*process{s.etcd, s.apiserver} {
		if p == nil {
			continue
		}
		fmt.Fprintf(&b, "--- last %d lines of %s (%s) ---\n%s\n", tailLines, p.name, p.logPath, p.tail(tailLines))
	}
	return b.String()
}

func (s *Server) writeKubeconfig() error {
	s.kubeconfig = filepath.Join(s.dir, "admin.kubeconfig")
	return WriteKubeconfig(s.kubeconfig, s.url, s.pki.caPEM, AdminUser, s.pki.adminToken)
}

// WriteKubeconfig writes a kubeconfig for server with one token user.
func WriteKubeconfig(path, server string, caPEM []byte, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["zt"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["zt"] = &clientcmdapi.Context{Cluster: "zt", AuthInfo: user}
	cfg.CurrentContext = "zt"
	return clientcmd.WriteToFile(*cfg, path)
}

// URL is the apiserver's base URL, https://BIND:PORT.
func (s *Server) URL() string { return s.url }

// Dir is the server's folder (certificates, logs, etcd data).
func (s *Server) Dir() string { return s.dir }

// BinDir is the folder of the pinned binaries.
func (s *Server) BinDir() string { return s.binDir }

// CACert is the PEM of the CA that signed the serving certificate.
func (s *Server) CACert() []byte { return append([]byte(nil), s.pki.caPEM...) }

// AdminToken is the static system:masters token.
func (s *Server) AdminToken() string { return s.pki.adminToken }

// AdminConfig is a fresh client config for a system:masters user.
func (s *Server) AdminConfig() *rest.Config { return s.ConfigForToken(s.pki.adminToken) }

// ConfigForToken is a fresh client config that authenticates with token.
func (s *Server) ConfigForToken(token string) *rest.Config {
	return &rest.Config{
		Host:            s.url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CACert()},
		QPS:             100,
		Burst:           200,
	}
}

// AdminClient is a clientset for AdminConfig.
func (s *Server) AdminClient() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(s.AdminConfig())
}

// Kubeconfig is the path of an admin kubeconfig file for kubectl.
func (s *Server) Kubeconfig() string { return s.kubeconfig }

// KubectlPath is the path of the pinned kubectl binary.
func (s *Server) KubectlPath() string { return filepath.Join(s.binDir, "kubectl") }

// KubectlCmd is a kubectl command with the admin kubeconfig and a discovery
// cache inside the server's folder (not in $HOME).
func (s *Server) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--kubeconfig=" + s.kubeconfig, "--cache-dir=" + filepath.Join(s.dir, "kubectl-cache")}, args...)
	return exec.CommandContext(ctx, s.KubectlPath(), all...)
}

// CreateNamespace creates a namespace and its "default" ServiceAccount (which
// a controller-manager would create), so pods can be created in it.
func (s *Server) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	cs, err := s.AdminClient()
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return s.EnsureServiceAccount(ctx, name, "default")
}

// EnsureServiceAccount creates the namespace (if missing) and the
// ServiceAccount (if missing).
func (s *Server) EnsureServiceAccount(ctx context.Context, namespace, name string) error {
	cs, err := s.AdminClient()
	if err != nil {
		return err
	}
	return EnsureServiceAccount(ctx, cs, namespace, name)
}

// EnsureServiceAccount creates the namespace (if missing) and the
// ServiceAccount (if missing) through cs.
func EnsureServiceAccount(ctx context.Context, cs kubernetes.Interface, namespace, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s/%s: %w", namespace, name, err)
	}
	return nil
}

// TokenFor returns a token for the ServiceAccount namespace/name, minted
// through the TokenRequest API, valid for ttl. The namespace and
// ServiceAccount are created if missing; no RBAC is granted.
func (s *Server) TokenFor(ctx context.Context, namespace, serviceAccount string, ttl time.Duration) (string, error) {
	if err := s.EnsureServiceAccount(ctx, namespace, serviceAccount); err != nil {
		return "", err
	}
	cs, err := s.AdminClient()
	if err != nil {
		return "", err
	}
	exp := int64(ttl / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}},
		metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, serviceAccount, err)
	}
	return tr.Status.Token, nil
}
