// Package kernel holds the kernel tests of the whole enforcement path with
// real packets: pods are network namespaces joined by veth pairs to a
// per-test "node" namespace that routes between them (the routed model of
// kindnet and Calico: /32 and /128 host routes, no address on the host-side
// veth, a link-local gateway with static neighbours in the pod). A
// policy.Compiler over the test's pods and NetworkPolicies feeds
// mapsync.Desired, a mapsync.Syncer writes the pinned maps, and the tc
// programs are attached to the host-side veths inside the node namespace,
// as the agent does.
//
// The tests need root and a kernel with tcx (6.6+). They never skip:
// failing to load BPF is a failure. Every namespace, link and bpffs pin is
// unique per test and removed at cleanup; the socket hooks, which are
// machine-wide, only act on the test's namespaces (by netns cookie) and are
// detached at cleanup.
package kernel
