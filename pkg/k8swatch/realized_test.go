package k8swatch

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func pod(name, uid, rv string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name, UID: types.UID(uid), ResourceVersion: rv}}
}

func TestFingerprint(t *testing.T) {
	a, b, c := pod("a", "u1", "10"), pod("b", "u2", "11"), pod("c", "u3", "12")
	f1 := FingerprintOf([]*corev1.Pod{a, b, c})
	if f2 := FingerprintOf([]*corev1.Pod{c, a, b}); f1 != f2 {
		t.Errorf("order changes the fingerprint: %s vs %s", f1, f2)
	}
	if f1.Count != 3 {
		t.Errorf("count %d, want 3", f1.Count)
	}
	if FingerprintItems([]corev1.Pod{*c, *b, *a}) != f1 {
		t.Error("FingerprintItems differs from FingerprintOf")
	}
	if FingerprintOf([]*corev1.Pod{}) != (Fingerprint{}) {
		t.Error("the empty set is not the zero fingerprint")
	}
	for name, other := range map[string][]*corev1.Pod{
		"one removed":         {a, b},
		"new resourceVersion": {a, b, pod("c", "u3", "13")},
		"new UID":             {a, b, pod("c", "u4", "12")},
		"uid/rv boundary":     {a, b, pod("c", "u31", "2")},
	} {
		if FingerprintOf(other) == f1 {
			t.Errorf("%s: same fingerprint", name)
		}
	}

	// A tracker fed Set/Delete in any order ends where FingerprintOf of the
	// final set is.
	var tr Tracker
	tr.Set("a/a", pod("a", "u1", "1"))
	tr.Set("a/b", b)
	tr.Set("a/x", pod("x", "u9", "3"))
	tr.Set("a/a", a) // replaced
	tr.Delete("a/x")
	tr.Delete("a/none")
	tr.Set("a/c", c)
	if got := tr.Fingerprint(); got != f1 {
		t.Errorf("tracker %s, want %s", got, f1)
	}

	// JSON round trip, in the documented form.
	r := Realized{Pods: f1, Namespaces: FingerprintOf([]*corev1.Pod{a})}
	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		t.Fatal(err)
	}
	if m["pods"]["count"] != float64(3) || len(m["pods"]["fingerprint"].(string)) != 16 || m["networkpolicies"] == nil {
		t.Errorf("JSON form: %s", j)
	}
	var back Realized
	if err := json.Unmarshal(j, &back); err != nil {
		t.Fatal(err)
	}
	if back != r {
		t.Errorf("round trip: %+v, want %+v", back, r)
	}
	if d := back.Diff(r); d != "" {
		t.Errorf("equal states differ: %s", d)
	}
	if d := (Realized{}).Diff(r); d == "" {
		t.Error("different states do not differ")
	}
}

// The fingerprint reads UID and resourceVersion: the pod transform must
// keep them.
func TestTrimPodKeepsVersion(t *testing.T) {
	out, err := TrimPod(pod("p", "u1", "42"))
	if err != nil {
		t.Fatal(err)
	}
	p := out.(*Pod)
	if p.UID != "u1" || p.ResourceVersion != "42" {
		t.Errorf("UID %q resourceVersion %q", p.UID, p.ResourceVersion)
	}
	// A Tracker fed the cached pod agrees with a client's listing.
	var tr Tracker
	tr.Set(p.Key(), p)
	if tr.Fingerprint() != FingerprintOf([]*corev1.Pod{pod("p", "u1", "42")}) {
		t.Error("the cached pod's fingerprint differs from the API object's")
	}
}
