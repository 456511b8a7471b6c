// Package cluster holds the tests that run against a real single-node
// Kubernetes cluster on this machine (hack/cluster.sh), built with the
// `cluster` tag so that `go test ./...` never starts one:
//
//	go test -tags cluster -count=1 -timeout 30m ./test/cluster/
//
// TestMain brings one cluster up for the whole package (building the images
// first), runs the tests, tears it down and fails when the host is not left
// exactly as it was found. Tests use the package-level fixture C:
//
//	out, err := C.Kubectl("get", "pods", "-A")
//	ns := C.Namespace(t, "mytest")         // unique, deleted after the test
//	C.Apply(t, yaml)                        // kubectl apply -f -
//	out, err = C.Exec(ns, pod, "/ztnettest", "connect", "10.217.0.5:8080")
//
// Environment: ZT_CLUSTER_CNI (ptp, the default, or bridge); ZT_CLUSTER_DIR
// (default _out/cluster-test, so a cluster of `make cluster-up` in
// _out/cluster is never touched: up refuses while another one runs).
//
// The images available in the cluster: zt.local/zt-agent:dev (the DaemonSet
// of hack/cluster/zt) and zt.local/ztnettest:dev (ServerImage: `serve
// [-listen :8080]` answers each TCP connection with its hostname; `connect
// [-timeout 3s] HOST:PORT` prints it or exits 1).
package cluster
