package k8swatch

import (
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unique"
	"weak"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"
)

// Pod is what the pod informer keeps of a Pod: all the pods of the
// cluster are held on every node, so only what the compiler and the agent
// read, in about a sixth of a *corev1.Pod's memory. Label sets are shared
// between pods that have the same labels (pods of one ReplicaSet), and
// namespace, node and phase strings are interned. A Pod in the cache is
// never modified (an update replaces it), and neither are its labels.
type Pod struct {
	Namespace, Name string
	UID             types.UID
	ResourceVersion string
	// Deleting: the pod has a deletionTimestamp (it is terminating).
	Deleting    bool
	HostNetwork bool
	NodeName    string
	Phase       corev1.PodPhase
	// IPs are status.podIPs, or status.podIP when podIPs is empty.
	IPs []corev1.PodIP
	// Containers are the containers that declare ports (restartable init
	// containers, the sidecars, after the others), with only their name
	// and ports.
	Containers []ContainerPorts

	labels *labelSet
}

// ContainerPorts are one container's declared ports.
type ContainerPorts struct {
	Name  string
	Ports []corev1.ContainerPort
}

// Labels are the pod's labels, shared: never modify them.
func (p *Pod) Labels() map[string]string {
	if p.labels == nil {
		return nil
	}
	return p.labels.m
}

// Terminated reports whether the pod no longer holds its addresses (see
// the function Terminated).
func (p *Pod) Terminated() bool {
	return p.Phase == corev1.PodSucceeded || p.Phase == corev1.PodFailed
}

// Key is "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// API returns a new *corev1.Pod with what p holds: what
// policy.PodFromAPI reads, and enough to name the pod in an Event.
func (p *Pod) API() *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: *p.objectMeta(),
		Spec:       corev1.PodSpec{NodeName: p.NodeName, HostNetwork: p.HostNetwork},
		Status:     corev1.PodStatus{Phase: p.Phase, PodIPs: p.IPs},
	}
	if len(p.IPs) > 0 {
		out.Status.PodIP = p.IPs[0].IP
	}
	for _, c := range p.Containers {
		out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
	}
	return out
}

func (p *Pod) objectMeta() *metav1.ObjectMeta {
	m := &metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID, ResourceVersion: p.ResourceVersion, Labels: p.Labels()}
	if p.Deleting {
		// The informers only compare it with nil.
		m.DeletionTimestamp = &metav1.Time{}
	}
	return m
}

// GetObjectMeta makes Pod a metav1.ObjectMetaAccessor, which is how the
// informer machinery reads its key and resourceVersion.
func (p *Pod) GetObjectMeta() metav1.Object { return p.objectMeta() }

// GetUID and GetResourceVersion identify the version (Tracker.Set).
func (p *Pod) GetUID() types.UID { return p.UID }

// GetResourceVersion is the pod's resourceVersion.
func (p *Pod) GetResourceVersion() string { return p.ResourceVersion }

// GetObjectKind implements runtime.Object.
func (p *Pod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object (labels stay shared: they are
// never modified).
func (p *Pod) DeepCopyObject() k8sruntime.Object {
	c := *p
	c.IPs = slices.Clone(p.IPs)
	c.Containers = slices.Clone(p.Containers)
	for i := range c.Containers {
		c.Containers[i].Ports = slices.Clone(c.Containers[i].Ports)
	}
	return &c
}

// TrimPod turns a *corev1.Pod into the *Pod the informer keeps; anything
// else (a tombstone, a *Pod already) is returned as it is.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &Pod{
		Namespace: intern(pod.Namespace), Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
		Deleting: pod.DeletionTimestamp != nil, HostNetwork: pod.Spec.HostNetwork,
		NodeName: intern(pod.Spec.NodeName), Phase: corev1.PodPhase(intern(string(pod.Status.Phase))),
		IPs:    pod.Status.PodIPs,
		labels: internLabels(pod.Labels),
	}
	if len(out.IPs) == 0 && pod.Status.PodIP != "" {
		out.IPs = []corev1.PodIP{{IP: pod.Status.PodIP}}
	}
	for _, c := range pod.Spec.Containers {
		if len(c.Ports) > 0 {
			out.Containers = append(out.Containers, ContainerPorts{Name: c.Name, Ports: c.Ports})
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if len(c.Ports) > 0 && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			out.Containers = append(out.Containers, ContainerPorts{Name: c.Name, Ports: c.Ports})
		}
	}
	return out, nil
}

// intern returns the one copy of s the process keeps while it is in use.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// labelSet is a shared, read-only label map.
type labelSet struct{ m map[string]string }

// labelSets maps a label set's canonical form to the live labelSet that
// holds it; an entry goes when no pod holds its labelSet any more.
var labelSets = struct {
	sync.Mutex
	m map[string]weak.Pointer[labelSet]
}{m: map[string]weak.Pointer[labelSet]{}}

// internLabels returns the shared labelSet equal to m (nil for no labels).
func internLabels(m map[string]string) *labelSet {
	if len(m) == 0 {
		return nil
	}
	key := canonicalLabels(m)
	labelSets.Lock()
	defer labelSets.Unlock()
	if ls := labelSets.m[key].Value(); ls != nil {
		return ls
	}
	own := make(map[string]string, len(m))
	for k, v := range m {
		own[intern(k)] = intern(v)
	}
	ls := &labelSet{m: own}
	labelSets.m[key] = weak.Make(ls)
	runtime.AddCleanup(ls, forgetLabels, key)
	return ls
}

// forgetLabels drops a collected label set's entry, unless a live one
// replaced it meanwhile.
func forgetLabels(key string) {
	labelSets.Lock()
	defer labelSets.Unlock()
	if wp, ok := labelSets.m[key]; ok && wp.Value() == nil {
		delete(labelSets.m, key)
	}
}

// canonicalLabels encodes m unambiguously, keys sorted.
func canonicalLabels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	n := 0
	for k, v := range m {
		keys = append(keys, k)
		n += len(k) + len(v) + 8
	}
	slices.Sort(keys)
	var b strings.Builder
	b.Grow(n)
	for _, k := range keys {
		v := m[k]
		b.WriteString(strconv.Itoa(len(k)))
		b.WriteByte(':')
		b.WriteString(k)
		b.WriteString(strconv.Itoa(len(v)))
		b.WriteByte(':')
		b.WriteString(v)
	}
	return b.String()
}

// liveLabelSets is how many label sets are interned (for tests).
func liveLabelSets() int {
	labelSets.Lock()
	defer labelSets.Unlock()
	return len(labelSets.m)
}

// PodLister reads the pod informer's cache.
type PodLister struct{ store cache.Store }

// Get returns the pod namespace/name, or a NotFound error.
func (l PodLister) Get(namespace, name string) (*Pod, error) {
	obj, ok, err := l.store.GetByKey(namespace + "/" + name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, apierrors.NewNotFound(corev1.Resource("pods"), name)
	}
	p, ok := obj.(*Pod)
	if !ok {
		return nil, apierrors.NewNotFound(corev1.Resource("pods"), name)
	}
	return p, nil
}

// List returns every pod in the cache.
func (l PodLister) List() []*Pod {
	objs := l.store.List()
	out := make([]*Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*Pod); ok {
			out = append(out, p)
		}
	}
	return out
}
