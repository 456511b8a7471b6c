// Package deploy holds the Kubernetes manifests that install zt: the
// zt-system namespace, the zt-agent ServiceAccount and its least-privilege
// ClusterRole, and the zt-agent DaemonSet. Install them with
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
