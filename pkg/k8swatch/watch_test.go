package k8swatch

import (
	"context"
	"maps"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/ztnet/zt/pkg/policy"
)

func TestTrimPod(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	deleted := metav1.Now()
	in := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "p", Namespace: "a", UID: "uid-p", ResourceVersion: "42", Labels: map[string]string{"app": "x", "tier": "web"},
			Annotations:       map[string]string{"big": "value"},
			ManagedFields:     []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			DeletionTimestamp: &deleted,
		},
		Spec: corev1.PodSpec{
			NodeName:    "n1",
			HostNetwork: true,
			Containers: []corev1.Container{
				{Name: "web", Image: "nginx", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}, Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 80}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
				{Name: "noports", Image: "busybox"},
			},
			InitContainers: []corev1.Container{
				{Name: "setup", Ports: []corev1.ContainerPort{{ContainerPort: 1}}},
				{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000}}},
			},
			Volumes: []corev1.Volume{{Name: "v"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	out, err := TrimPod(in.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	p := out.(*Pod)
	if p.Namespace != "a" || p.Name != "p" || p.UID != "uid-p" || p.ResourceVersion != "42" || p.NodeName != "n1" ||
		!p.HostNetwork || !p.Deleting || p.Phase != corev1.PodRunning || p.Key() != "a/p" {
		t.Errorf("lost what the agent reads: %+v", p)
	}
	if !maps.Equal(p.Labels(), in.Labels) {
		t.Errorf("labels %v, want %v", p.Labels(), in.Labels)
	}
	if !slices.Equal(p.IPs, in.Status.PodIPs) {
		t.Errorf("IPs %v", p.IPs)
	}
	want := []ContainerPorts{{"web", in.Spec.Containers[0].Ports}, {"sidecar", in.Spec.InitContainers[1].Ports}}
	if !reflect.DeepEqual(p.Containers, want) {
		t.Errorf("containers %+v, want %+v (only ports, restartable init containers after the others)", p.Containers, want)
	}
	// The compiler's view of it is the same as of the full pod.
	full, ferr := policy.PodFromAPI(in)
	trimmed, terr := policy.PodFromAPI(p.API())
	if ferr != nil || terr != nil || !reflect.DeepEqual(full, trimmed) {
		t.Errorf("policy.PodFromAPI differs:\nfull    %+v (%v)\ntrimmed %+v (%v)", full, ferr, trimmed, terr)
	}
	api := p.API()
	if api.Namespace != "a" || api.Name != "p" || api.UID != "uid-p" || api.Kind != "Pod" || api.DeletionTimestamp == nil {
		t.Errorf("API() cannot name the pod: %+v", api.ObjectMeta)
	}
	// Idempotent, and tombstones pass through.
	if again, _ := TrimPod(p); again != p {
		t.Error("TrimPod of a trimmed pod is not itself")
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "a/p", Obj: p}
	if got, _ := TrimPod(tomb); got != tomb {
		t.Error("tombstone changed")
	}
	// A deep copy is equal and shares only the read-only labels.
	cp := p.DeepCopyObject().(*Pod)
	if !reflect.DeepEqual(cp, p) || &cp.IPs[0] == &p.IPs[0] {
		t.Errorf("DeepCopyObject: %+v", cp)
	}
	// The informer machinery reads the key through GetObjectMeta.
	if key, err := cache.MetaNamespaceKeyFunc(p); err != nil || key != "a/p" {
		t.Errorf("key %q, %v", key, err)
	}
}

// Old API servers set status.podIP only.
func TestTrimPodIPFallback(t *testing.T) {
	out, _ := TrimPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "a"}, Status: corev1.PodStatus{PodIP: "10.0.0.2"}})
	p := out.(*Pod)
	if len(p.IPs) != 1 || p.IPs[0].IP != "10.0.0.2" || p.Labels() != nil || p.Containers != nil {
		t.Errorf("%+v", p)
	}
	if got, err := policy.PodFromAPI(p.API()); err != nil || len(got.IPs) != 1 || got.IPs[0].String() != "10.0.0.2" {
		t.Errorf("PodFromAPI: %+v %v", got, err)
	}
}

// Pods with the same labels share one map; a label set no pod holds is
// forgotten.
func TestLabelsShared(t *testing.T) {
	mk := func(name string, labels map[string]string) *Pod {
		out, _ := TrimPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "a", Labels: labels}})
		return out.(*Pod)
	}
	a := mk("a", map[string]string{"app": "shared-test", "v": "1"})
	b := mk("b", map[string]string{"v": "1", "app": "shared-test"})
	c := mk("c", map[string]string{"app": "shared-test", "v": "2"})
	// Not confused by separators inside keys and values.
	d := mk("d", map[string]string{"app": "shared-test1:v", "": ""})
	if a.labels != b.labels {
		t.Error("equal label sets not shared")
	}
	if a.labels == c.labels || a.labels == d.labels || c.labels == d.labels {
		t.Error("different label sets shared")
	}
	before := liveLabelSets()
	a, b, c, d = nil, nil, nil, nil
	deadline := time.Now().Add(5 * time.Second)
	for liveLabelSets() > before-3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d label sets interned, want at most %d once no pod holds them", liveLabelSets(), before-3)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(a)
}

func TestPodListerNotFound(t *testing.T) {
	client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "a", Labels: map[string]string{"k": "v"}}})
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
	if p, err := w.Pods.Get("a", "p"); err != nil || p.Labels()["k"] != "v" {
		t.Errorf("Get a/p: %+v, %v", p, err)
	}
	if _, err := w.Pods.Get("a", "q"); !apierrors.IsNotFound(err) {
		t.Errorf("Get a/q: %v, want NotFound", err)
	}
	if l := w.Pods.List(); len(l) != 1 || l[0].Name != "p" {
		t.Errorf("List: %+v", l)
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
	if p, err := w.Pods.Get("a", "p"); err != nil || p.Labels()["v"] != "e" {
		t.Errorf("lister has %+v, %v; want the last update", p, err)
	}
}
