package kubeenv_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztnet/zt/internal/kubeenv"
)

// TestBindAddressSANsDetach: the apiserver listens on (and advertises) the
// bind address only, its certificate carries it and the extra SANs, and a
// detached server runs in its own session (it outlives its starter).
func TestBindAddressSANsDetach(t *testing.T) {
	bind := net.IPv4(127, 0, 0, 2)
	extra := net.ParseIP("fd00:77::1")
	s, err := kubeenv.Start(kubeenv.Options{Dir: t.TempDir(), BindAddress: bind, ExtraSANs: []net.IP{extra}, Detach: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if !strings.HasPrefix(s.URL(), "https://127.0.0.2:") {
		t.Errorf("URL %s, want the bind address", s.URL())
	}
	cs, err := kubernetes.NewForConfig(s.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("admin client over the bind address (certificate verified): %v", err)
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.URL(), "https://"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	cert := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	var have []string
	for _, ip := range cert.IPAddresses {
		have = append(have, ip.String())
	}
	for _, want := range []string{"127.0.0.2", "fd00:77::1", "127.0.0.1"} {
		if !strings.Contains(" "+strings.Join(have, " ")+" ", " "+want+" ") {
			t.Errorf("serving certificate IP SANs %v lack %s", have, want)
		}
	}
	etcd, api := s.Pids()
	for _, pid := range []int{etcd, api} {
		if sid, err := unix.Getsid(pid); err != nil || sid != pid {
			t.Errorf("detached process %d: session %d (%v), want its own", pid, sid, err)
		}
	}
}
