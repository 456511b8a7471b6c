# zt — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := _out/bin

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## install what building and testing needs (Debian packages, Go modules), idempotently
	@hack/setup.sh

.PHONY: generate
generate: ## regenerate the bpf2go Go bindings and objects with clang-19
	$(GO) generate ./...

.PHONY: check-generated
check-generated: generate ## fail when the committed generated files are stale
	@git diff --exit-code --stat -- 'pkg/datapath/*_bpfel.go' 'pkg/datapath/*_bpfel.o' || { echo "generated files are stale: run 'make generate' and commit"; exit 1; }

.PHONY: k8s-bins
k8s-bins: ## build the pinned kube-apiserver, kubectl and etcd for tests into _out/bin (once; ~15 min cold)
	hack/k8s-bins.sh

.PHONY: conformance
conformance: ## upstream Kubernetes v1.37.2 NetworkPolicy e2e tests (Netpol, minus SCTP) against KUBECONFIG with zt installed; writes docs/conformance.md
	hack/conformance.sh run

.PHONY: verify
verify: ## load every BPF program through the kernel verifier (root)
	$(GO) test -count=1 -run 'TestVerifier' -v ./pkg/datapath

.PHONY: build
build: ## build ztctl into _out/bin
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt would change: $$out"; exit 1; }
	$(GO) vet ./...

.PHONY: test
test: setup lint check-generated ## the whole test suite: unit, kernel (as root) and end-to-end
	hack/test.sh

.PHONY: bench
bench: ## (root) zt vs none/iptables/ipset/nftables at 10..100k rules + control plane; writes docs/benchmarks.md, .json, .png (~15 min)
	$(GO) run ./tools/bench --doc docs/benchmarks.md $(BENCH_FLAGS)

.PHONY: bench-quick
bench-quick: ## (root) the same in quick mode, printed only (~3 min)
	$(GO) run ./tools/bench --quick $(BENCH_FLAGS)

.PHONY: bench-micro
bench-micro: ## the Go micro-benchmarks (compiler build vs incremental update, map lookups)
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

.PHONY: fuzz
fuzz: ## run the fuzzers for a minute each
	$(GO) test -run '^$$' -fuzz FuzzCompile -fuzztime 60s ./pkg/policy
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./pkg/bundle

.PHONY: demo
demo: setup build k8s-bins ## the zero-trust shop on a one-machine lab, real packets (ZT_DEMO_KEEP=1 leaves it up)
	@ZT_DEMO_BIN=$(BIN) hack/demo.sh

CNI ?= ptp

.PHONY: images
images: build k8s-bins ## the local images (zt-agent, ztnettest, pause) into _out/images, without docker
	hack/cluster.sh images

.PHONY: cluster-up
cluster-up: images ## a real single-node Kubernetes v1.37.2 on this machine (root; CNI=ptp|bridge)
	hack/cluster.sh up --cni $(CNI)

.PHONY: cluster-down
cluster-down: ## tear the cluster down and restore the host exactly
	hack/cluster.sh down
