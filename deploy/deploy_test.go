package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/ztnet/zt/deploy"
	"github.com/ztnet/zt/internal/testenv"
)

const (
	namespace  = "zt-system"
	agentName  = "zt-agent"
	healthPort = 9876
)

// wantRules is the agent's whole authority: (apiGroup, resource, verb).
var wantRules = triples(
	rule([]string{""}, []string{"pods", "namespaces"}, "get", "list", "watch"),
	rule([]string{"networking.k8s.io"}, []string{"networkpolicies"}, "get", "list", "watch"),
	rule([]string{"networking.k8s.io"}, []string{"servicecidrs"}, "get", "list", "watch"),
	rule([]string{"", "events.k8s.io"}, []string{"events"}, "create", "patch"),
)

// wantCaps are the capabilities added to the agent; everything else is dropped.
var wantCaps = []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"}

// wantHostPaths are the only host folders the agent may see, with their type.
var wantHostPaths = map[string]corev1.HostPathType{
	"/sys/fs/bpf":    corev1.HostPathDirectoryOrCreate,
	"/sys/fs/cgroup": corev1.HostPathDirectory,
	"/run/netns":     corev1.HostPathDirectoryOrCreate,
	"/run/zt":        corev1.HostPathDirectoryOrCreate,
}

func deployDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// manifest is one decoded object and the file it came from.
type manifest struct {
	file string
	obj  runtime.Object
}

// readManifests decodes every resource of kustomization.yaml strictly
// (unknown or duplicate fields fail) with the client-go scheme.
func readManifests(t *testing.T) []manifest {
	t.Helper()
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var out []manifest
	for _, file := range kustomizationResources(t) {
		b, err := deploy.Manifests.ReadFile(file)
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", file, err)
		}
		r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if onlyComments(doc) {
				continue
			}
			obj, _, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: strict decode: %v", file, err)
			}
			out = append(out, manifest{file: file, obj: obj})
		}
	}
	return out
}

func onlyComments(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); l != "" && l != "---" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func kustomizationResources(t *testing.T) []string {
	t.Helper()
	b, err := deploy.Manifests.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096).Decode(&k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k.Resources
}

// TestKustomizationListsEveryManifest: a manifest missing from the list would
// silently not be installed.
func TestKustomizationListsEveryManifest(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(deployDir(t), "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := slices.Clone(kustomizationResources(t))
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources = %v, want every manifest of the folder %v", got, want)
	}
}

// TestManifests checks the objects as written, without a server: only the
// expected kinds, nothing privileged, least-privilege RBAC.
func TestManifests(t *testing.T) {
	for _, file := range kustomizationResources(t) {
		b, err := deploy.Manifests.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("privileged: true")) {
			t.Errorf("%s contains privileged: true", file)
		}
	}

	kinds := map[string]int{}
	for _, m := range readManifests(t) {
		gvk := m.obj.GetObjectKind().GroupVersionKind()
		kinds[gvk.Kind]++
		meta, err := metaOf(m.obj)
		if err != nil {
			t.Fatalf("%s: %v", m.file, err)
		}
		if meta.GetLabels()["app.kubernetes.io/part-of"] != "zt" {
			t.Errorf("%s: %s %s lacks label app.kubernetes.io/part-of=zt", m.file, gvk.Kind, meta.GetName())
		}
		switch o := m.obj.(type) {
		case *corev1.Namespace:
			if o.Name != namespace || o.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
				t.Errorf("%s: namespace %s labels %v, want %s with pod-security enforce=privileged", m.file, o.Name, o.Labels, namespace)
			}
		case *corev1.ServiceAccount:
			if o.Name != agentName || o.Namespace != namespace {
				t.Errorf("%s: ServiceAccount %s/%s, want %s/%s", m.file, o.Namespace, o.Name, namespace, agentName)
			}
		case *rbacv1.ClusterRole:
			checkClusterRole(t, o)
		case *rbacv1.ClusterRoleBinding:
			want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: agentName, Namespace: namespace}}
			if o.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: agentName}) ||
				!slices.Equal(o.Subjects, want) {
				t.Errorf("%s: binding %+v -> %+v, want ClusterRole %s -> %+v", m.file, o.RoleRef, o.Subjects, agentName, want)
			}
		case *rbacv1.Role:
			want := []rbacv1.PolicyRule{rule([]string{""}, []string{"pods"}, "get", "list"),
				rule([]string{""}, []string{"pods/portforward"}, "create")}
			if o.Name != "zt-flows-reader" || o.Namespace != namespace || !reflect.DeepEqual(o.Rules, want) {
				t.Errorf("%s: Role %s/%s rules %+v, want zt-flows-reader in %s with exactly %+v", m.file, o.Namespace, o.Name, o.Rules, namespace, want)
			}
		case *appsv1.DaemonSet:
			checkDaemonSet(t, o)
		default:
			t.Errorf("%s: unexpected %s %s", m.file, gvk.Kind, meta.GetName())
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "DaemonSet"} {
		if kinds[k] != 1 {
			t.Errorf("%d objects of kind %s, want 1", kinds[k], k)
		}
	}
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

type triple struct{ group, resource, verb string }

func (t triple) String() string { return t.verb + " " + t.resource + "." + t.group }

func rule(groups, resources []string, verbs ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{APIGroups: groups, Resources: resources, Verbs: verbs}
}

func triples(rules ...rbacv1.PolicyRule) map[triple]bool {
	out := map[triple]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out[triple{g, res, v}] = true
				}
			}
		}
	}
	return out
}

func diffTriples(got, want map[triple]bool) (extra, missing []string) {
	for k := range got {
		if !want[k] {
			extra = append(extra, k.String())
		}
	}
	for k := range want {
		if !got[k] {
			missing = append(missing, k.String())
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	return extra, missing
}

func checkClusterRole(t *testing.T, cr *rbacv1.ClusterRole) {
	t.Helper()
	if cr.Name != agentName || cr.AggregationRule != nil {
		t.Errorf("ClusterRole %s (aggregation %v), want %s without aggregation", cr.Name, cr.AggregationRule, agentName)
	}
	for _, r := range cr.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: unexpected resourceNames or nonResourceURLs", r)
		}
		for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs) {
			if strings.Contains(s, "*") {
				t.Errorf("rule %+v has a wildcard", r)
			}
		}
	}
	if extra, missing := diffTriples(triples(cr.Rules...), wantRules); len(extra)+len(missing) > 0 {
		t.Errorf("ClusterRole rules: extra %v, missing %v", extra, missing)
	}
}

// checkDaemonSet checks the agent's DaemonSet, as written or as read back.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	if ds.Name != agentName || ds.Namespace != namespace {
		t.Errorf("DaemonSet %s/%s, want %s/%s", ds.Namespace, ds.Name, namespace, agentName)
	}
	for _, l := range []map[string]string{ds.Labels, ds.Spec.Template.Labels} {
		if l["app.kubernetes.io/name"] != agentName || l["app.kubernetes.io/part-of"] != "zt" {
			t.Errorf("labels %v lack app.kubernetes.io/name=%s, app.kubernetes.io/part-of=zt", l, agentName)
		}
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) ||
		(us.RollingUpdate.MaxSurge != nil && us.RollingUpdate.MaxSurge.IntValue() != 0) {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1 and no surge", us)
	}

	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != agentName {
		t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, agentName)
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v dnsPolicy %q, want true and ClusterFirstWithHostNet", spec.HostNetwork, spec.DNSPolicy)
	}
	if spec.HostPID || spec.HostIPC {
		t.Errorf("hostPID %v hostIPC %v, want neither", spec.HostPID, spec.HostIPC)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !slices.Equal(spec.Tolerations, want) {
		t.Errorf("tolerations %+v, want %+v (every taint)", spec.Tolerations, want)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
		t.Errorf("terminationGracePeriodSeconds %v, want 30", g)
	}
	if sc := spec.SecurityContext; sc != nil && sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeUnconfined {
		t.Errorf("pod seccomp profile is Unconfined")
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.HostPath == nil {
			continue
		}
		want, ok := wantHostPaths[v.HostPath.Path]
		if !ok {
			t.Errorf("volume %s mounts unexpected host path %s", v.Name, v.HostPath.Path)
		} else if v.HostPath.Type == nil || *v.HostPath.Type != want {
			t.Errorf("volume %s: host path %s type %v, want %s", v.Name, v.HostPath.Path, v.HostPath.Type, want)
		}
	}

	if len(spec.InitContainers) > 0 || len(spec.EphemeralContainers) > 0 {
		t.Errorf("unexpected init or ephemeral containers")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	for _, c := range spec.Containers {
		checkContainer(t, c, volumes)
	}
}

func checkContainer(t *testing.T, c corev1.Container, volumes map[string]corev1.Volume) {
	t.Helper()
	if c.Image != "ghcr.io/ztnet/zt-agent:dev" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q pull %q, want ghcr.io/ztnet/zt-agent:dev IfNotPresent", c.Image, c.ImagePullPolicy)
	}
	if !slices.Equal(c.Command, []string{"/zt-agent"}) {
		t.Errorf("command %q, want [/zt-agent]", c.Command)
	}
	for _, a := range []string{"--node-name=$(NODE_NAME)", "--bpffs-root=/sys/fs/bpf/zt",
		fmt.Sprintf("--health-addr=:%d", healthPort), "--log-format=json"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("args %q lack %q", c.Args, a)
		}
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" {
			nodeName = e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}
	}
	if !nodeName {
		t.Errorf("env %+v: NODE_NAME does not come from the downward API (fieldRef spec.nodeName)", c.Env)
	}

	// Resources: requests for scheduling, a memory limit against runaway growth.
	req, lim := c.Resources.Requests, c.Resources.Limits
	if !req.Cpu().Equal(resource.MustParse("50m")) || !req.Memory().Equal(resource.MustParse("128Mi")) ||
		!lim.Memory().Equal(resource.MustParse("512Mi")) {
		t.Errorf("resources %+v, want requests cpu 50m memory 128Mi, limits memory 512Mi", c.Resources)
	}

	// Probes on the health port.
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe %+v, want httpGet %s", p.name, p.probe, p.path)
			continue
		}
		if g := p.probe.HTTPGet; g.Path != p.path || portNumber(c, g.Port) != healthPort || g.Host != "" {
			t.Errorf("%s probe httpGet %+v, want %s on port %d", p.name, g, p.path, healthPort)
		}
		if p.probe.PeriodSeconds < 2 || p.probe.TimeoutSeconds < 1 || p.probe.FailureThreshold < 3 {
			t.Errorf("%s probe period %ds timeout %ds failures %d: too eager", p.name,
				p.probe.PeriodSeconds, p.probe.TimeoutSeconds, p.probe.FailureThreshold)
		}
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no container securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("privileged %s, want explicitly false", show(sc.Privileged))
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation %s, want false", show(sc.AllowPrivilegeEscalation))
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem %s, want true", show(sc.ReadOnlyRootFilesystem))
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("runAsUser %s, want 0", show(sc.RunAsUser))
	}
	if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
		t.Errorf("procMount %v", *sc.ProcMount)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile %+v, want RuntimeDefault", sc.SeccompProfile)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities %+v: want drop [ALL]", sc.Capabilities)
	} else {
		add := slices.Clone(sc.Capabilities.Add)
		slices.Sort(add)
		if !slices.Equal(add, wantCaps) {
			t.Errorf("added capabilities %v, want exactly %v", sc.Capabilities.Add, wantCaps)
		}
	}

	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("mount %s: Bidirectional propagation (needs a privileged container)", m.MountPath)
		}
		v, ok := volumes[m.Name]
		if !ok {
			t.Errorf("mount %s of unknown volume %s", m.MountPath, m.Name)
			continue
		}
		if v.HostPath != nil {
			mounts[v.HostPath.Path] = m
		}
	}
	hostToContainer := corev1.MountPropagationHostToContainer
	for _, want := range []struct {
		host, path string
		readOnly   bool
		prop       *corev1.MountPropagationMode
	}{
		{"/sys/fs/bpf", "/sys/fs/bpf", false, &hostToContainer},
		{"/sys/fs/cgroup", "/sys/fs/cgroup", true, &hostToContainer},
		{"/run/netns", "/run/netns", true, &hostToContainer},
		{"/run/zt", "/run/zt", false, nil},
	} {
		m, ok := mounts[want.host]
		if !ok {
			t.Errorf("host path %s is not mounted", want.host)
			continue
		}
		prop := corev1.MountPropagationNone
		if m.MountPropagation != nil {
			prop = *m.MountPropagation
		}
		wantProp := corev1.MountPropagationNone
		if want.prop != nil {
			wantProp = *want.prop
		}
		if m.MountPath != want.path || m.ReadOnly != want.readOnly || prop != wantProp {
			t.Errorf("mount of %s: at %s readOnly %v propagation %s, want at %s readOnly %v propagation %s",
				want.host, m.MountPath, m.ReadOnly, prop, want.path, want.readOnly, wantProp)
		}
	}
}

// show prints an optional field.
func show[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// portNumber resolves a probe port, by number or by container port name.
func portNumber(c corev1.Container, p intstr.IntOrString) int {
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	return -1
}

// TestImageOverride: the README's way of choosing the image works.
func TestImageOverride(t *testing.T) {
	bin, err := testenv.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: ghcr.io/ztnet/zt-agent
    newName: registry.example.com/zt-agent
    newTag: v0.1.0
`, rel)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(bin, "kubectl"), "kustomize", overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("image: registry.example.com/zt-agent:v0.1.0")) || bytes.Contains(out, []byte("zt-agent:dev")) {
		t.Errorf("overlay output does not carry the overridden image:\n%s", out)
	}
}

// TestAPIServer applies the manifests to a real kube-apiserver and checks
// what the agent's ServiceAccount token may and may not do.
func TestAPIServer(t *testing.T) {
	s := testenv.StartAPIServer(t)
	admin := s.AdminClient(t)
	dir := deployDir(t)
	ctx := context.Background()

	t.Run("apply", func(t *testing.T) {
		out, stderr := kubectl(t, s, "apply", "-k", dir)
		t.Logf("kubectl apply -k:\n%s", out)
		// A PodSecurity "would violate" warning would mean the namespace
		// label does not cover the agent.
		if strings.Contains(stderr, "Warning") {
			t.Errorf("kubectl apply warned:\n%s", stderr)
		}
		for _, want := range []string{"namespace/zt-system", "serviceaccount/zt-agent",
			"clusterrole.rbac.authorization.k8s.io/zt-agent", "clusterrolebinding.rbac.authorization.k8s.io/zt-agent",
			"daemonset.apps/zt-agent"} {
			if !strings.Contains(out, want+" created") {
				t.Errorf("apply output lacks %q created", want)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("apply again is a no-op", func(t *testing.T) {
		before := resourceVersions(t, s)
		out, _ := kubectl(t, s, "apply", "-k", dir)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasSuffix(line, " unchanged") {
				t.Errorf("second apply changed something: %q", line)
			}
		}
		if after := resourceVersions(t, s); after != before {
			t.Errorf("resourceVersions changed by a second apply:\n%s\n->\n%s", before, after)
		}
	})

	t.Run("server dry-run of the DaemonSet", func(t *testing.T) {
		out, _ := kubectl(t, s, "apply", "--dry-run=server", "--validate=strict", "-f", filepath.Join(dir, "daemonset.yaml"))
		if !strings.Contains(out, "daemonset.apps/zt-agent") {
			t.Errorf("dry-run output: %q", out)
		}
	})

	ds, err := admin.AppsV1().DaemonSets(namespace).Get(ctx, agentName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read back DaemonSet: %v", err)
	}
	t.Run("DaemonSet read back", func(t *testing.T) { checkDaemonSet(t, ds) })

	// No controller-manager runs here, so the DaemonSet makes no pods; create
	// its pod by hand (dry run) to pass the pod-level admission: validation,
	// PodSecurity (enforced on pods, not on DaemonSets) and Priority.
	podFromTemplate := func(ns string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "zt-agent-", Namespace: ns, Labels: ds.Spec.Template.Labels},
			Spec:       *ds.Spec.Template.Spec.DeepCopy(),
		}
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}

	t.Run("agent pod admitted in zt-system", func(t *testing.T) {
		pod, err := admin.CoreV1().Pods(namespace).Create(ctx, podFromTemplate(namespace), dryRun)
		if err != nil {
			t.Fatalf("dry-run create of the agent pod: %v", err)
		}
		if pod.Spec.Priority == nil || *pod.Spec.Priority < 2000000000 {
			t.Errorf("priority %v, want system-node-critical's", pod.Spec.Priority)
		}
	})

	t.Run("agent pod refused by baseline Pod Security", func(t *testing.T) {
		// The namespace label is what admits the agent.
		s.CreateNamespace(t, "zt-baseline", map[string]string{"pod-security.kubernetes.io/enforce": "baseline"})
		if _, err := admin.CoreV1().ServiceAccounts("zt-baseline").Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: agentName}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := admin.CoreV1().Pods("zt-baseline").Create(ctx, podFromTemplate("zt-baseline"), dryRun)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "PodSecurity") {
			t.Errorf("agent pod in a baseline namespace: %v, want a PodSecurity refusal", err)
		}
	})

	t.Run("Bidirectional propagation needs privileged", func(t *testing.T) {
		// Why /sys/fs/bpf is HostToContainer: Bidirectional, which would let
		// the agent's own bpffs mount reach the host, is refused for a
		// non-privileged container.
		bidi := ds.DeepCopy()
		bidi.ResourceVersion = ""
		bidi.Name = "zt-agent-bidi"
		prop := corev1.MountPropagationBidirectional
		c := &bidi.Spec.Template.Spec.Containers[0]
		for i := range c.VolumeMounts {
			if c.VolumeMounts[i].MountPath == "/sys/fs/bpf" {
				c.VolumeMounts[i].MountPropagation = &prop
			}
		}
		_, err := admin.AppsV1().DaemonSets(namespace).Create(ctx, bidi, dryRun)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "only to privileged containers") {
			t.Errorf("Bidirectional in a non-privileged container: %v, want Invalid", err)
		}
	})

	t.Run("RBAC", func(t *testing.T) { testRBAC(t, s, admin) })
}

// kubectl runs kubectl with the admin kubeconfig and returns stdout and stderr.
func kubectl(t *testing.T, s *testenv.APIServer, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := s.KubectlCmd(ctx, args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String(), e.String()
}

func resourceVersions(t *testing.T, s *testenv.APIServer) string {
	t.Helper()
	out := s.Kubectl(t, "get", "namespace/zt-system", "serviceaccount/zt-agent", "clusterrole/zt-agent",
		"clusterrolebinding/zt-agent", "daemonset/zt-agent", "-n", namespace,
		"-o", `jsonpath={range .items[*]}{.kind}/{.metadata.name} {.metadata.resourceVersion}{"\n"}{end}`)
	if n := strings.Count(out, "\n"); n != 5 {
		t.Fatalf("resource versions of %d objects, want 5:\n%s", n, out)
	}
	return out
}

const rbacNS = "zt-rbac"

func testRBAC(t *testing.T, s *testenv.APIServer, admin kubernetes.Interface) {
	ctx := context.Background()

	// Objects for the agent to see (or be refused).
	s.CreateNamespace(t, rbacNS, map[string]string{"team": "a"})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: rbacNS, Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example.invalid/web:1"}}},
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-all", Namespace: rbacNS},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: rbacNS}, StringData: map[string]string{"k": "v"}}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "conf", Namespace: rbacNS}}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.CoreV1().Pods(rbacNS).Create(ctx, pod, metav1.CreateOptions{}))
	must(admin.NetworkingV1().NetworkPolicies(rbacNS).Create(ctx, np, metav1.CreateOptions{}))
	must(admin.CoreV1().Secrets(rbacNS).Create(ctx, secret, metav1.CreateOptions{}))
	must(admin.CoreV1().ConfigMaps(rbacNS).Create(ctx, cm, metav1.CreateOptions{}))

	// The token a kubelet would project into the agent's pod.
	agent, err := kubernetes.NewForConfig(s.ConfigForToken(s.TokenFor(t, namespace, agentName)))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("allowed", func(t *testing.T) {
		all := metav1.ListOptions{}
		check := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		}
		pods, err := agent.CoreV1().Pods("").List(ctx, all)
		check("list pods in all namespaces", err)
		if err == nil && len(pods.Items) != 1 {
			t.Errorf("listed %d pods, want 1", len(pods.Items))
		}
		_, err = agent.CoreV1().Pods(rbacNS).Get(ctx, "web", metav1.GetOptions{})
		check("get pod", err)
		_, err = agent.CoreV1().Namespaces().List(ctx, all)
		check("list namespaces", err)
		_, err = agent.CoreV1().Namespaces().Get(ctx, rbacNS, metav1.GetOptions{})
		check("get namespace", err)
		_, err = agent.NetworkingV1().NetworkPolicies("").List(ctx, all)
		check("list networkpolicies in all namespaces", err)
		_, err = agent.NetworkingV1().NetworkPolicies(rbacNS).Get(ctx, "deny-all", metav1.GetOptions{})
		check("get networkpolicy", err)
		cidrs, err := agent.NetworkingV1().ServiceCIDRs().List(ctx, all)
		check("list servicecidrs", err)
		if err == nil && len(cidrs.Items) == 0 {
			t.Error("listed no ServiceCIDR: the API server creates one from --service-cluster-ip-range")
		}

		// Watches start with synthetic ADDED events for what exists.
		watchFor(t, "pods", func(o metav1.ListOptions) (watch.Interface, error) {
			return agent.CoreV1().Pods("").Watch(ctx, o)
		}, "web")
		watchFor(t, "namespaces", func(o metav1.ListOptions) (watch.Interface, error) {
			return agent.CoreV1().Namespaces().Watch(ctx, o)
		}, rbacNS)
		watchFor(t, "networkpolicies", func(o metav1.ListOptions) (watch.Interface, error) {
			return agent.NetworkingV1().NetworkPolicies("").Watch(ctx, o)
		}, "deny-all")
		if err == nil && len(cidrs.Items) > 0 {
			watchFor(t, "servicecidrs", func(o metav1.ListOptions) (watch.Interface, error) {
				return agent.NetworkingV1().ServiceCIDRs().Watch(ctx, o)
			}, cidrs.Items[0].Name)
		}

		ref := corev1.ObjectReference{Kind: "NetworkPolicy", APIVersion: "networking.k8s.io/v1", Namespace: rbacNS, Name: "deny-all"}
		now := metav1.Now()
		ev, err := agent.CoreV1().Events(rbacNS).Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: "deny-all.zt-core", Namespace: rbacNS},
			InvolvedObject: ref, Reason: "PolicyUnsupported", Message: "test event", Type: corev1.EventTypeWarning,
			Source: corev1.EventSource{Component: agentName, Host: "node-a"}, FirstTimestamp: now, LastTimestamp: now, Count: 1,
		}, metav1.CreateOptions{})
		check("create core/v1 Event", err)
		if err == nil {
			_, err = agent.CoreV1().Events(rbacNS).Patch(ctx, ev.Name, types.StrategicMergePatchType,
				[]byte(`{"count":2,"message":"test event, again"}`), metav1.PatchOptions{})
			check("patch core/v1 Event", err)
		}
		nev, err := agent.EventsV1().Events(rbacNS).Create(ctx, &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Name: "deny-all.zt-new", Namespace: rbacNS},
			EventTime:  metav1.NowMicro(), ReportingController: "ztnet.io/zt-agent", ReportingInstance: "zt-agent-node-a",
			Action: "Compile", Reason: "PolicyUnsupported", Regarding: ref, Note: "test event", Type: corev1.EventTypeWarning,
		}, metav1.CreateOptions{})
		check("create events.k8s.io/v1 Event", err)
		if err == nil {
			// What the recorder does for a repeat: count it in the series.
			series, _ := json.Marshal(map[string]any{"series": eventsv1.EventSeries{Count: 2, LastObservedTime: metav1.NowMicro()}})
			_, err = agent.EventsV1().Events(rbacNS).Patch(ctx, nev.Name, types.MergePatchType, series, metav1.PatchOptions{})
			check("patch events.k8s.io/v1 Event", err)
		}
	})

	t.Run("forbidden", func(t *testing.T) {
		np, err := admin.NetworkingV1().NetworkPolicies(rbacNS).Get(ctx, "deny-all", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		np.Labels = map[string]string{"changed": "by-agent"}
		for _, c := range []struct {
			what string
			do   func() error
		}{
			{"get secret", func() error {
				_, err := agent.CoreV1().Secrets(rbacNS).Get(ctx, "creds", metav1.GetOptions{})
				return err
			}},
			{"list secrets in all namespaces", func() error {
				_, err := agent.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
				return err
			}},
			{"list configmaps", func() error {
				_, err := agent.CoreV1().ConfigMaps(rbacNS).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"create pod", func() error {
				p := pod.DeepCopy()
				p.Name, p.ResourceVersion = "evil", ""
				_, err := agent.CoreV1().Pods(rbacNS).Create(ctx, p, metav1.CreateOptions{})
				return err
			}},
			{"patch pod", func() error {
				_, err := agent.CoreV1().Pods(rbacNS).Patch(ctx, "web", types.MergePatchType,
					[]byte(`{"metadata":{"labels":{"app":"db"}}}`), metav1.PatchOptions{})
				return err
			}},
			{"delete pod", func() error {
				return agent.CoreV1().Pods(rbacNS).Delete(ctx, "web", metav1.DeleteOptions{})
			}},
			{"update networkpolicy", func() error {
				_, err := agent.NetworkingV1().NetworkPolicies(rbacNS).Update(ctx, np, metav1.UpdateOptions{})
				return err
			}},
			{"delete networkpolicy", func() error {
				return agent.NetworkingV1().NetworkPolicies(rbacNS).Delete(ctx, "deny-all", metav1.DeleteOptions{})
			}},
			{"update namespace", func() error {
				_, err := agent.CoreV1().Namespaces().Patch(ctx, rbacNS, types.MergePatchType,
					[]byte(`{"metadata":{"labels":{"team":"b"}}}`), metav1.PatchOptions{})
				return err
			}},
			{"get node", func() error {
				_, err := agent.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
				return err
			}},
			{"list services", func() error {
				_, err := agent.CoreV1().Services("").List(ctx, metav1.ListOptions{})
				return err
			}},
			{"list events", func() error {
				_, err := agent.CoreV1().Events(rbacNS).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"create a token for its ServiceAccount", func() error {
				_, err := agent.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, agentName, nil, metav1.CreateOptions{})
				return err
			}},
		} {
			if err := c.do(); !apierrors.IsForbidden(err) {
				t.Errorf("%s: got %v, want Forbidden", c.what, err)
			}
		}
	})

	// The complete list the API server derives, so a right granted by
	// accident (a wildcard, another binding) shows up. What every
	// authenticated user may do (ask who it is, read cluster trust bundles,
	// ...) is measured with a ServiceAccount bound to nothing and left out.
	t.Run("nothing more", func(t *testing.T) {
		nobody, err := kubernetes.NewForConfig(s.ConfigForToken(s.TokenFor(t, namespace, "zt-nobody")))
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{rbacNS, namespace} {
			base := rulesOf(t, nobody, ns)
			got := map[triple]bool{}
			for k := range rulesOf(t, agent, ns) {
				if !base[k] {
					got[k] = true
				}
			}
			if extra, missing := diffTriples(got, wantRules); len(extra)+len(missing) > 0 {
				t.Errorf("rights in %s beyond every user's: extra %v, missing %v", ns, extra, missing)
			}
		}
	})
}

// rulesOf returns the resource rights of the client's user in ns.
func rulesOf(t *testing.T, cs kubernetes.Interface, ns string) map[triple]bool {
	t.Helper()
	rev, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(context.Background(),
		&authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rev.Status.Incomplete {
		t.Errorf("rules review for %s incomplete: %s", ns, rev.Status.EvaluationError)
	}
	out := map[triple]bool{}
	for _, r := range rev.Status.ResourceRules {
		for k := range triples(rule(r.APIGroups, r.Resources, r.Verbs...)) {
			out[k] = true
		}
	}
	return out
}

// watchFor opens a watch and waits for an ADDED event of the named object.
func watchFor(t *testing.T, what string, open func(metav1.ListOptions) (watch.Interface, error), name string) {
	t.Helper()
	timeout := int64(10)
	w, err := open(metav1.ListOptions{TimeoutSeconds: &timeout})
	if err != nil {
		t.Errorf("watch %s: %v", what, err)
		return
	}
	defer w.Stop()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Errorf("watch %s closed before %s was seen", what, name)
				return
			}
			if ev.Type == watch.Error {
				t.Errorf("watch %s: %v", what, apierrors.FromObject(ev.Object))
				return
			}
			if m, err := metaOf(ev.Object); err == nil && ev.Type == watch.Added && m.GetName() == name {
				return
			}
		case <-deadline:
			t.Errorf("watch %s: no ADDED event for %s", what, name)
			return
		}
	}
}
