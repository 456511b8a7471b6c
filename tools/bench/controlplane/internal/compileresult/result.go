// Package compileresult is the JSON that the compilebench child prints and
// the controlplane bench reads: one type for both sides.
package compileresult

// Result is what one run measured.
type Result struct {
	Pods       int    `json:"pods"`
	Policies   int    `json:"policies"`
	View       string `json:"view"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// FullNs is the time of policy.Build over the whole snapshot.
	FullNs int64 `json:"full_ns"`
	// InputHeapBytes is the live heap holding the generated snapshot;
	// CompilerHeapBytes is what the built compiler adds to it (after GC).
	InputHeapBytes    uint64 `json:"input_heap_bytes"`
	CompilerHeapBytes uint64 `json:"compiler_heap_bytes"`
	Endpoints         int    `json:"endpoints"`
	Identities        int    `json:"identities"`
	Problems          int    `json:"problems"`
	// RelabelNs: SetPod (a label change of one pod) + Sync, each update.
	RelabelNs []int64 `json:"relabel_ns"`
	// PolicyNs: SetPolicy (a new policy) or DeletePolicy + Sync, each update.
	PolicyNs []int64 `json:"policy_ns"`
	// ReferenceNs: the same with benchworld.ReferencePolicy, whose ipBlock
	// no other policy references (a CIDR identity made or dropped, and the
	// prefix identity of the pod addresses in it changed).
	ReferenceNs []int64 `json:"reference_ns"`
}
