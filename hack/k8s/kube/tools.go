//go:build tools

// Package k8sbinaries pins the Kubernetes commands (control plane, and the kubelet
// and kube-proxy of the real-node tier) that
// hack/k8s-binaries.sh builds for the test tiers; nothing here is shipped.
package k8sbinaries

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
