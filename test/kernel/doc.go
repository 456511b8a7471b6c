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
// failing to load BPF is a failure. Namespaces are anonymous (held by file
// descriptors, never bind-mounted under /run/netns), so nothing of them
// outlives the test; links live inside them; bpffs pins go under a unique
// /sys/fs/bpf/zt-test-k-<rand> root removed at cleanup. The socket hooks,
// which are machine-wide, only act on the test's namespaces (by netns
// cookie) and are detached at cleanup. TestMain checks afterwards that no
// bpffs root or BPF link the run created is left.
//
// TestRestartKeepsEnforcing runs the loader as a separate process: the
// test binary re-executed with ZT_KERNEL_TEST_LOADER set (see loaderMain).
//
// TestKernelAgreesWithCompiler (differential_test.go, package kernel_test)
// needs no pods: it compiles seeded random worlds, writes them through
// mapsync into a Datapath under /sys/fs/bpf/zt-test-diff-<rand>, and runs
// crafted first packets (internal/pkttest) through zt_from_pod and
// zt_to_pod with BPF_PROG_RUN, each endpoint on its own interface of a
// scratch namespace. Verdict, counter slot and flow event must be what
// policy.Compiler.Evaluate says. -diff.seed (or ZT_DIFF_SEED) pins the
// seed, -diff.worlds the number of worlds, -diff.world one world alone. It
// checks its own leftovers (bpffs root, links) at cleanup.
package kernel
