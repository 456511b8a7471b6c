#!/usr/bin/env bash
# The whole test suite. Kernel tests need root; in CI (CI=true) they must run,
# so a non-root CI run is an error rather than a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = "true" ]; then echo "test: CI must run as root (kernel tests never skip there)"; exit 1; fi
  echo "test: not root: kernel tests will fail; run as root (sudo make test)"
fi
# The end-to-end tests start a real kube-apiserver and etcd built from pinned
# modules (tools/k8s); this is a no-op when they are up to date.
hack/k8s-bins.sh
# pkg/lab runs every conformance scenario with real packets on four labs
# (about 4 of its 6-7 minutes): above go test's default 10 m under load.
go test -count=1 -race -timeout 30m ./...
# A real single-node Kubernetes (hack/cluster.sh): zt installed with
# `kubectl apply -k hack/cluster/zt`, NetworkPolicies enforced on real
# pods; it brings the cluster up and down itself and checks the host is left
# as it was. After the main suite: it needs the whole machine's root state.
go test -tags cluster -count=1 -timeout 30m ./test/cluster/
# The upstream NetworkPolicy conformance suite (Netpol minus SCTP) on a
# cluster of its own, every test must pass: the cold build of e2e.test and
# agnhost took 39 min on this machine (Go's build cache makes it minutes),
# the run 5 min. ZT_SKIP_CONFORMANCE=1 leaves it out of a local run.
if [ "${ZT_SKIP_CONFORMANCE:-}" != 1 ]; then
  ZT_CONF_STRICT=1 ZT_CONF_PROCS=3 ZT_CONF_DOC= hack/conformance.sh cluster-run
fi
