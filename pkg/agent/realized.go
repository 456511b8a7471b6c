package agent

import (
	"encoding/json"
	"net/http"
	"sync/atomic"

	"github.com/ztnet/zt/pkg/k8swatch"
)

// RealizedStatus is what GET /realized answers: the API state this agent
// has realized in the kernel (see k8swatch.Realized: per kind, the count
// and fingerprint of the objects, at their resourceVersions, its compiler
// consumed), published only after the map writes of the sync that
// consumed them succeeded. A client that lists the same kinds from the
// API server and computes k8swatch.FingerprintOf knows the agent enforces
// that state when the two are equal (and Unbound is 0: every local pod's
// interface was found and its programs attached).
type RealizedStatus struct {
	k8swatch.Realized
	// Endpoints is the number of local pods enforced (endpoint entries).
	Endpoints int `json:"endpoints"`
	// Unbound is the number of local pods not enforced yet (interface not
	// found or attach failed; retried).
	Unbound int `json:"unbound"`
	// Syncs counts the syncs realized since the agent started.
	Syncs uint64 `json:"syncs"`
}

// realizedState tracks what the compiler consumed (owned by the sync
// loop) and what was last realized (read by the health server).
type realizedState struct {
	consumed  [3]k8swatch.Tracker // by k8swatch.Kind
	syncs     uint64
	published atomic.Pointer[RealizedStatus]
}

// consume records that the compiler read obj (nil: the object is gone).
func (r *realizedState) consume(kind k8swatch.Kind, key string, obj k8swatch.Versioned) {
	if obj == nil {
		r.consumed[kind].Delete(key)
		return
	}
	r.consumed[kind].Set(key, obj)
}

// publish makes what was consumed so far the realized state: called after
// a sync's map writes succeeded.
func (r *realizedState) publish(endpoints, unbound int) {
	r.syncs++
	r.published.Store(&RealizedStatus{
		Realized: k8swatch.Realized{
			Namespaces:      r.consumed[k8swatch.KindNamespace].Fingerprint(),
			Pods:            r.consumed[k8swatch.KindPod].Fingerprint(),
			NetworkPolicies: r.consumed[k8swatch.KindNetworkPolicy].Fingerprint(),
		},
		Endpoints: endpoints, Unbound: unbound, Syncs: r.syncs,
	})
}

// Realized returns the last realized state (nil before the first sync).
func (a *Agent) Realized() *RealizedStatus { return a.realized.published.Load() }

// serveRealized answers GET /realized: 503 until a first sync is realized.
func (a *Agent) serveRealized(w http.ResponseWriter, _ *http.Request) {
	st := a.Realized()
	if st == nil {
		http.Error(w, "nothing realized yet: caches not synced or first sync not realized", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}
