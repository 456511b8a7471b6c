package k8swatch

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestTrimPod(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	in := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "p", Namespace: "a", Labels: map[string]string{"app": "x"},
			Annotations:   map[string]string{"big": "value"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "n1",
			Containers: []corev1.Container{
				{Name: "web", Image: "nginx", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}},
				{Name: "noports", Image: "busybox"},
			},
			InitContainers: []corev1.Container{
				{Name: "setup", Ports: []corev1.ContainerPort{{ContainerPort: 1}}},
				{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000}}},
			},
			Volumes: []corev1.Volume{{Name: "v"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	out, err := TrimPod(in)
	if err != nil {
		t.Fatal(err)
	}
	p := out.(*corev1.Pod)
	if p.Annotations != nil || p.ManagedFields != nil || p.Spec.Volumes != nil || p.Status.Conditions != nil {
		t.Errorf("not trimmed: %+v", p)
	}
	if len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Image != "" || p.Spec.Containers[0].Env != nil || p.Spec.Containers[0].Ports[0].Name != "http" {
		t.Errorf("containers: %+v", p.Spec.Containers)
	}
	if len(p.Spec.InitContainers) != 1 || p.Spec.InitContainers[0].Name != "sidecar" {
		t.Errorf("only restartable init containers keep their ports: %+v", p.Spec.InitContainers)
	}
	if p.Labels["app"] != "x" || p.Spec.NodeName != "n1" || p.Status.PodIPs[0].IP != "10.0.0.1" || p.Status.Phase != corev1.PodRunning {
		t.Errorf("lost what the compiler reads: %+v", p)
	}
}

func TestChangesCoalesce(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "a"}},
	)
	w, err := New(client, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Shutdown() }()
	w.Start(ctx)
	if !w.WaitForSync(ctx) {
		t.Fatal("no sync")
	}
	wait := func() Changes {
		t.Helper()
		select {
		case <-w.Signal():
		case <-time.After(5 * time.Second):
			t.Fatal("no signal")
		}
		time.Sleep(50 * time.Millisecond) // let the rest of a burst arrive
		c, first := w.Drain()
		if first.IsZero() {
			t.Error("no time for the first pending change")
		}
		return c
	}
	c := wait()
	if !slices.Equal(c.Namespaces, []string{"a"}) || !slices.Equal(c.Pods, []string{"a/p"}) {
		t.Fatalf("initial list: %+v", c)
	}
	// A burst of updates to one pod is one key; a deleted policy is a key
	// the lister no longer has.
	for i := range 5 {
		pod, _ := client.CoreV1().Pods("a").Get(ctx, "p", metav1.GetOptions{})
		pod.Labels = map[string]string{"v": string(rune('a' + i))}
		if _, err := client.CoreV1().Pods("a").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np", Namespace: "a"}}
	if _, err := client.NetworkingV1().NetworkPolicies("a").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.NetworkingV1().NetworkPolicies("a").Delete(ctx, "np", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got := Changes{}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (len(got.Pods) == 0 || len(got.Policies) == 0) {
		c := wait()
		got.Pods = append(got.Pods, c.Pods...)
		got.Policies = append(got.Policies, c.Policies...)
	}
	if !slices.Equal(slices.Compact(got.Pods), []string{"a/p"}) || !slices.Equal(slices.Compact(got.Policies), []string{"a/np"}) {
		t.Fatalf("changes: %+v", got)
	}
	if _, err := w.Policies.NetworkPolicies("a").Get("np"); err == nil {
		t.Error("the deleted policy is still in the lister")
	}
	if p, err := w.Pods.Pods("a").Get("p"); err != nil || p.Labels["v"] != "e" {
		t.Errorf("lister has %+v, %v; want the last update", p, err)
	}
}
