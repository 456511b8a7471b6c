package agent

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ztnet/zt/internal/benchworld"
	"github.com/ztnet/zt/pkg/flows"
	"github.com/ztnet/zt/pkg/k8swatch"
	"github.com/ztnet/zt/pkg/mapsync"
	"github.com/ztnet/zt/pkg/policy"
)

// memPod is a pod as the API server sends it (defaults, managed fields,
// a service account volume), on another node, like the control-plane
// benchmark's bulk pods.
func memPod(i int) *corev1.Pod {
	ns := fmt.Sprintf("bulk-%d", i%10)
	name := fmt.Sprintf("p-%d", i)
	ip := fmt.Sprintf("100.%d.%d.%d", 64+(i>>16)&63, (i>>8)&0xff, i&0xff)
	now := metav1.NewTime(time.Unix(1_800_000_000, 0))
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i)),
			ResourceVersion: strconv.Itoa(1000 + i), CreationTimestamp: now,
			Labels:        map[string]string{"tier": "bulk", "group": fmt.Sprintf("g%d", i%50)},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "bench", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &now}},
		},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("other-node-%d", i%20), ServiceAccountName: "default", DNSPolicy: corev1.DNSClusterFirst,
			RestartPolicy: corev1.RestartPolicyAlways, SchedulerName: "default-scheduler",
			Containers: []corev1.Container{{Name: "c", Image: "zt/probe", TerminationMessagePath: "/dev/termination-log",
				ImagePullPolicy: corev1.PullIfNotPresent}},
			Volumes: []corev1.Volume{{Name: "kube-api-access"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// TestMemoryPerPod measures the live heap the agent's pipeline (informer
// cache, compiler, realized tracker, flow resolver, desired map state)
// adds per API pod: the growth between two cluster sizes, after a GC. It
// bounds it so a regression shows; ZT_MEM_PODS sets the larger size and
// ZT_MEM_PROFILE writes a heap profile of the larger one.
func TestMemoryPerPod(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	large := 10000
	if v := os.Getenv("ZT_MEM_PODS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 2000 {
			t.Fatalf("ZT_MEM_PODS=%q: want a number above 2000", v)
		}
		large = n
	}
	small := 1000
	hs, _ := pipelineHeap(t, small, 0, "")
	hl, retained := pipelineHeap(t, large, 0, os.Getenv("ZT_MEM_PROFILE"))
	per := float64(hl-hs) / float64(large-small)
	t.Logf("live heap: %d pods %.1f MiB, %d pods %.1f MiB: %.0f bytes per pod", small, float64(hs)/(1<<20),
		large, float64(hl)/(1<<20), per)
	runtime.KeepAlive(retained)
	// The budget is 5 KiB of RSS per pod; the Go heap may grow to
	// twice the live heap between collections.
	if per > 2500 {
		t.Errorf("%.0f bytes of live heap per pod, want at most 2500", per)
	}
}

// TestMemoryPerPodWithPolicies: the same with the control-plane
// benchmark's 999 bulk policies (benchworld.BulkPolicy) in the pods'
// namespaces, as the lab's largest sizes have them. Their peers select
// groups of pods, every pod (egress) and ipBlocks over the pods'
// addresses, so the compiler's selections grow with the pods.
// ZT_MEM_PROFILE writes a heap profile of the larger size.
func TestMemoryPerPodWithPolicies(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const small, large, policies = 1000, 10000, 999
	hs, _ := pipelineHeap(t, small, policies, "")
	hl, retained := pipelineHeap(t, large, policies, os.Getenv("ZT_MEM_PROFILE"))
	per := float64(hl-hs) / float64(large-small)
	t.Logf("live heap with %d policies: %d pods %.1f MiB, %d pods %.1f MiB: %.0f bytes per pod", policies, small,
		float64(hs)/(1<<20), large, float64(hl)/(1<<20), per)
	runtime.KeepAlive(retained)
	if per > memPerPodWithPolicies {
		t.Errorf("%.0f bytes of live heap per pod, want at most %d", per, memPerPodWithPolicies)
	}
}

const memPerPodWithPolicies = 3000

// pipelineHeap runs the agent's sync steps (but the kernel writes) over n
// pods and the first policies bulk policies held by a fake API, and
// returns the live heap they added.
func pipelineHeap(t *testing.T, n, policies int, profile string) (uint64, any) {
	t.Helper()
	var objs []*corev1.Pod
	for i := range n {
		objs = append(objs, memPod(i))
	}
	client := fake.NewClientset()
	for i := range 10 {
		_ = client.Tracker().Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bulk-%d", i),
			Labels: map[string]string{"team": fmt.Sprintf("t%d", i%3)}}})
	}
	for i := range policies {
		np := benchworld.BulkPolicy(i, fmt.Sprintf("bulk-%d", i%10), map[string]string{"group": fmt.Sprintf("g%d", i%50)}, 50)
		if err := client.Tracker().Add(np); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range objs {
		if err := client.Tracker().Add(p); err != nil {
			t.Fatal(err)
		}
	}
	objs = nil
	before := liveHeap()

	ctx, cancel := context.WithCancel(context.Background())
	w, err := k8swatch.New(client, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Start(ctx)
	if !w.WaitForSync(ctx) {
		t.Fatal("caches not synced")
	}
	a := &Agent{log: zap.NewNop(), watch: w, compiler: policy.New(policy.Options{NodeName: "node1"}), metrics: newMetrics(nil),
		bound: map[policy.PodKey]binding{}, missing: map[policy.PodKey]string{}, problems: map[policy.PolicyKey]string{},
		flows: &flowState{resolver: flows.NewTableResolver(flows.NewPodTable(0, 0))}}
	deadline := time.Now().Add(time.Minute)
	var desired mapsync.State
	for {
		ch, _ := w.Drain()
		a.applyChanges(ch)
		a.compiler.Sync()
		a.flowsRefresh(ch)
		desired, err = mapsync.Desired(a.compiler, nil, mapsync.Options{})
		if err != nil {
			t.Fatal(err)
		}
		a.realized.publish(len(desired.Endpoints), 0)
		if len(desired.IPCache) >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ipcache entries for %d pods after a minute", len(desired.IPCache), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	after := liveHeap()
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	cancel()
	w.Shutdown()
	// desired stands for the syncer's realized copy the agent keeps.
	return after - before, []any{a, desired, client}
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
