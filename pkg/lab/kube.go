package lab

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ztnet/zt/deploy"
	"github.com/ztnet/zt/internal/kubeenv"
)

// Agent identity, as deploy/ creates it.
const (
	agentNamespace      = "zt-system"
	agentServiceAccount = "zt-agent"
	agentTokenTTL       = 48 * time.Hour
)

// applyDeploy writes the embedded deploy/ manifests into dir and applies
// them with the pinned kubectl (`kubectl apply -k`), as in a cluster.
func applyDeploy(ctx context.Context, kubectl, kubeconfig, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	err := fs.WalkDir(deploy.Manifests, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := deploy.Manifests.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, path), b, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("write deploy manifests: %w", err)
	}
	cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig="+kubeconfig,
		"--cache-dir="+filepath.Join(filepath.Dir(dir), "kubectl-cache"), "apply", "-k", dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl apply -k %s: %v: %s", dir, err, out)
	}
	return string(out), nil
}

// adminClient builds a clientset from a kubeconfig file.
func clientFromKubeconfig(path string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 200, 400
	return kubernetes.NewForConfig(rc)
}

// cleanMeta drops what the API server sets, so objects from `kubectl get
// -o yaml` can be created again.
func cleanMeta(m *metav1.ObjectMeta) {
	m.ResourceVersion = ""
	m.UID = ""
	m.CreationTimestamp = metav1.Time{}
	m.DeletionTimestamp = nil
	m.DeletionGracePeriodSeconds = nil
	m.Generation = 0
	m.ManagedFields = nil
	m.OwnerReferences = nil
	m.Finalizers = nil
	m.SelfLink = ""
}

// applyNamespace creates the namespace (or replaces its labels) and its
// "default" ServiceAccount.
func applyNamespace(ctx context.Context, cs kubernetes.Interface, in *corev1.Namespace) error {
	ns := in.DeepCopy()
	cleanMeta(&ns.ObjectMeta)
	ns.Spec = corev1.NamespaceSpec{}
	ns.Status = corev1.NamespaceStatus{}
	_, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := cs.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		cur.Labels = ns.Labels
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		cur.Labels[corev1.LabelMetadataName] = ns.Name
		_, err = cs.CoreV1().Namespaces().Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns.Name, err)
	}
	return kubeenv.EnsureServiceAccount(ctx, cs, ns.Name, "default")
}

// createPod creates the pod on node and reports it Running with its
// addresses through the status subresource, as a kubelet would. An
// existing pod gets the new labels (addresses and ports cannot change).
func createPod(ctx context.Context, cs kubernetes.Interface, in *corev1.Pod, node, hostIP string) error {
	p := in.DeepCopy()
	cleanMeta(&p.ObjectMeta)
	status := p.Status
	p.Status = corev1.PodStatus{}
	p.Spec.NodeName = node
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if err := kubeenv.EnsureServiceAccount(ctx, cs, p.Namespace, sa); err != nil {
		return err
	}
	if sa != "default" {
		if err := kubeenv.EnsureServiceAccount(ctx, cs, p.Namespace, "default"); err != nil {
			return err
		}
	}
	got, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := cs.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		cur.Labels = p.Labels
		_, err = cs.CoreV1().Pods(p.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	ips := status.PodIPs
	if len(ips) == 0 && status.PodIP != "" {
		ips = []corev1.PodIP{{IP: status.PodIP}}
	}
	got.Status = corev1.PodStatus{
		Phase:   corev1.PodRunning,
		HostIP:  hostIP,
		HostIPs: []corev1.HostIP{{IP: hostIP}},
		PodIPs:  ips,
		Conditions: []corev1.PodCondition{{
			Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
		}},
	}
	if len(ips) > 0 {
		got.Status.PodIP = ips[0].IP
	}
	if _, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// applyPolicy creates or replaces a NetworkPolicy.
func applyPolicy(ctx context.Context, cs kubernetes.Interface, in *networkingv1.NetworkPolicy) error {
	np := in.DeepCopy()
	cleanMeta(&np.ObjectMeta)
	_, err := cs.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := cs.NetworkingV1().NetworkPolicies(np.Namespace).Get(ctx, np.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		np.ResourceVersion = cur.ResourceVersion
		_, err = cs.NetworkingV1().NetworkPolicies(np.Namespace).Update(ctx, np, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("networkpolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	return nil
}

// isInvalid reports an API validation error (the object is skipped with a
// warning, as the agent skips invalid policies).
func isInvalid(err error) bool {
	return apierrors.IsInvalid(err) || strings.Contains(err.Error(), "is invalid")
}

// deletePod deletes a pod at once (grace period 0: no kubelet here to
// confirm it stopped). A pod already gone is no error.
func deletePod(ctx context.Context, cs kubernetes.Interface, namespace, name string) error {
	zero := int64(0)
	err := cs.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// deletePolicy deletes a NetworkPolicy; one already gone is no error.
func deletePolicy(ctx context.Context, cs kubernetes.Interface, namespace, name string) error {
	err := cs.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete networkpolicy %s/%s: %w", namespace, name, err)
	}
	return nil
}

// deleteNamespace deletes a namespace and what it holds, doing what the
// namespace controller (not running here) would: delete its pods,
// policies and ServiceAccounts, then clear the namespace's finalizers so
// it goes.
func deleteNamespace(ctx context.Context, cs kubernetes.Interface, name string) error {
	pods, err := cs.CoreV1().Pods(name).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("namespace %s: list pods: %w", name, err)
	}
	for _, p := range pods.Items {
		if err := deletePod(ctx, cs, name, p.Name); err != nil {
			return err
		}
	}
	nps, err := cs.NetworkingV1().NetworkPolicies(name).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("namespace %s: list networkpolicies: %w", name, err)
	}
	for _, np := range nps.Items {
		if err := deletePolicy(ctx, cs, name, np.Name); err != nil {
			return err
		}
	}
	if err := cs.CoreV1().ServiceAccounts(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("namespace %s: delete serviceaccounts: %w", name, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("delete namespace %s: %w", name, err)
		}
		ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("namespace %s: %w", name, err)
		}
		if len(ns.Spec.Finalizers) > 0 {
			ns.Spec.Finalizers = nil
			if _, err := cs.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("finalize namespace %s: %w", name, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s still exists after 30 s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// systemNamespaces are the API server's and deploy/'s: Sync never deletes
// them.
var systemNamespaces = map[string]bool{
	metav1.NamespaceDefault: true, metav1.NamespaceSystem: true, metav1.NamespacePublic: true,
	corev1.NamespaceNodeLease: true, agentNamespace: true,
}
