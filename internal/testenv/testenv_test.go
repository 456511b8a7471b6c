package testenv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztnet/zt/internal/testenv"
)

func TestAPIServer(t *testing.T) {
	t.Parallel()
	start := time.Now()
	srv := testenv.StartAPIServer(t)
	t.Logf("apiserver at %s ready in %s", srv.URL(), time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	admin := srv.AdminClient(t)

	v, err := admin.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("server gitVersion = %q, want v1.37.2 (built without hack/k8s-bins.sh ldflags?)", v.GitVersion)
	}

	const ns = "zt-test"
	srv.CreateNamespace(t, ns, map[string]string{"team": "zt"})

	t.Run("kubectl", func(t *testing.T) {
		out := srv.Kubectl(t, "get", "ns", "-o", "name")
		for _, want := range []string{"namespace/default", "namespace/kube-system", "namespace/" + ns} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl get ns: missing %s in\n%s", want, out)
			}
		}
		if out := srv.Kubectl(t, "version", "-o", "json"); !strings.Contains(out, `"gitVersion": "v1.37.2"`) {
			t.Errorf("kubectl version does not report v1.37.2 for client and server:\n%s", out)
		}
	})

	t.Run("pod without controller-manager", func(t *testing.T) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "web", Image: "example.invalid/web",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}},
			}}},
		}
		got, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		if got.Spec.ServiceAccountName != "default" {
			t.Errorf("pod serviceAccountName = %q, want default (ServiceAccount admission)", got.Spec.ServiceAccountName)
		}
	})

	t.Run("service account RBAC", func(t *testing.T) {
		tok := srv.TokenFor(t, ns, "agent")
		sa, err := kubernetes.NewForConfig(srv.ConfigForToken(tok))
		if err != nil {
			t.Fatal(err)
		}

		_, err = sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("list pods without RBAC: err = %v, want Forbidden", err)
		}
		if !strings.Contains(err.Error(), "system:serviceaccount:"+ns+":agent") {
			t.Errorf("Forbidden error does not name the service account: %v", err)
		}

		role := &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: ns},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
		}
		if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "agent-pod-reader", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "agent", Namespace: ns}},
		}
		if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}

		// The RBAC authorizer reads roles through an informer: allow a moment.
		deadline := time.Now().Add(10 * time.Second)
		for {
			pods, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err == nil {
				t.Logf("service account lists %d pod(s) after the RoleBinding", len(pods.Items))
				break
			}
			if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
				t.Fatalf("list pods with RoleBinding: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}

		// Still namespaced: other namespaces stay forbidden.
		if _, err := sa.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list pods in default: err = %v, want Forbidden", err)
		}
	})
}

// TestTwoServers checks that servers in one process are independent
// (distinct ports, folders and tokens).
func TestTwoServers(t *testing.T) {
	t.Parallel()
	a := testenv.StartAPIServer(t)
	b := testenv.StartAPIServer(t)
	if a.URL() == b.URL() || a.Dir() == b.Dir() {
		t.Fatalf("servers share URL or folder: %s %s", a.URL(), b.URL())
	}
	tok := a.TokenFor(t, "default", "x")
	if _, err := kubernetes.NewForConfigOrDie(b.ConfigForToken(tok)).CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("token of server A on server B: err = %v, want Unauthorized", err)
	}
}
