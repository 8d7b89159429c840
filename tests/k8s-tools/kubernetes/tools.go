//go:build tools

// Package tools pins the main packages scripts/k8s-tools builds, so that
// `go build k8s.io/kubernetes/cmd/kube-apiserver` resolves inside this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
