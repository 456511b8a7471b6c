// Package deploy holds the Kubernetes manifests that install zt: the
// zt-system namespace, the zt-agent ServiceAccount and its least-privilege
// ClusterRole, the zt-agent DaemonSet, and the zt-flows-reader Role that
// lets people read dropped connections with `ztctl flows` from off the
// nodes. Install them with
//
//	kubectl apply -k deploy/
//
// The tests in this folder apply them to a real kube-apiserver and check
// what the agent's token may and may not do. Manifests holds the same files
// for tests elsewhere that need the agent's RBAC.
package deploy

import "embed"

// Manifests are the YAML files of this folder, kustomization.yaml included.
//
//go:embed *.yaml
var Manifests embed.FS
