package k8swatch

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Fingerprint is an order-independent digest of a set of API objects:
// how many there are and the XOR of a 64-bit hash of each one's (UID,
// resourceVersion). Two sets of the same objects at the same versions
// have the same fingerprint, whatever their order; an object added,
// removed, replaced (new UID) or changed (new resourceVersion) changes it
// (but for a 2^-64 collision). It is how a client tells that an agent has
// realized exactly the API state it lists itself (GET /realized).
type Fingerprint struct {
	Count int
	Sum   uint64
}

// ObjectHash is one object's contribution to a Fingerprint: FNV-1a 64 of
// its UID and resourceVersion.
func ObjectHash(uid, resourceVersion string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(uid))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(resourceVersion))
	return h.Sum64()
}

// Add adds one object's hash.
func (f *Fingerprint) Add(hash uint64) { f.Count++; f.Sum ^= hash }

// Remove removes one object's hash (added before).
func (f *Fingerprint) Remove(hash uint64) { f.Count--; f.Sum ^= hash }

// String is "count/hex".
func (f Fingerprint) String() string { return fmt.Sprintf("%d/%016x", f.Count, f.Sum) }

type fingerprintJSON struct {
	Count       int    `json:"count"`
	Fingerprint string `json:"fingerprint"`
}

// MarshalJSON writes {"count":N,"fingerprint":"16 hex digits"}.
func (f Fingerprint) MarshalJSON() ([]byte, error) {
	return json.Marshal(fingerprintJSON{Count: f.Count, Fingerprint: fmt.Sprintf("%016x", f.Sum)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (f *Fingerprint) UnmarshalJSON(b []byte) error {
	var j fingerprintJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	sum, err := strconv.ParseUint(j.Fingerprint, 16, 64)
	if err != nil {
		return fmt.Errorf("fingerprint %q: %w", j.Fingerprint, err)
	}
	*f = Fingerprint{Count: j.Count, Sum: sum}
	return nil
}

// FingerprintOf digests objects as an agent that consumed exactly them
// reports them.
func FingerprintOf[T metav1.Object](objs []T) Fingerprint {
	var f Fingerprint
	for _, o := range objs {
		f.Add(ObjectHash(string(o.GetUID()), o.GetResourceVersion()))
	}
	return f
}

// FingerprintItems is FingerprintOf the Items of a List (values, not
// pointers): FingerprintItems(podList.Items).
func FingerprintItems[T any, P interface {
	*T
	metav1.Object
}](items []T) Fingerprint {
	var f Fingerprint
	for i := range items {
		o := P(&items[i])
		f.Add(ObjectHash(string(o.GetUID()), o.GetResourceVersion()))
	}
	return f
}

// Realized is the API state an agent has realized in the kernel: per
// watched kind, the fingerprint of the objects (at the versions) its
// compiler consumed, published only after the map writes of the sync
// that consumed them succeeded.
type Realized struct {
	Namespaces      Fingerprint `json:"namespaces"`
	Pods            Fingerprint `json:"pods"`
	NetworkPolicies Fingerprint `json:"networkpolicies"`
}

// Diff names the kinds on which two states differ ("" when equal), as
// "pods: agent 9/..., API 10/...".
func (r Realized) Diff(api Realized) string {
	var out string
	for _, k := range []struct {
		name     string
		got, api Fingerprint
	}{
		{"namespaces", r.Namespaces, api.Namespaces},
		{"pods", r.Pods, api.Pods},
		{"networkpolicies", r.NetworkPolicies, api.NetworkPolicies},
	} {
		if k.got != k.api {
			if out != "" {
				out += "; "
			}
			out += fmt.Sprintf("%s: agent %s, API %s", k.name, k.got, k.api)
		}
	}
	return out
}

// Tracker keeps the fingerprint of a changing set of objects by key: Set
// replaces the key's object, Delete removes it.
type Tracker struct {
	hashes map[string]uint64
	fp     Fingerprint
}

// Versioned is an object version: a metav1.Object, or a cached *Pod.
type Versioned interface {
	GetUID() types.UID
	GetResourceVersion() string
}

// Set records obj as key's current object.
func (t *Tracker) Set(key string, obj Versioned) {
	if t.hashes == nil {
		t.hashes = map[string]uint64{}
	}
	if old, ok := t.hashes[key]; ok {
		t.fp.Remove(old)
	}
	h := ObjectHash(string(obj.GetUID()), obj.GetResourceVersion())
	t.hashes[key] = h
	t.fp.Add(h)
}

// Delete forgets key.
func (t *Tracker) Delete(key string) {
	if old, ok := t.hashes[key]; ok {
		t.fp.Remove(old)
		delete(t.hashes, key)
	}
}

// Fingerprint is the current set's.
func (t *Tracker) Fingerprint() Fingerprint { return t.fp }
