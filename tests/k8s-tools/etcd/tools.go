//go:build tools

// Package tools pins the etcd main package scripts/k8s-tools builds, so that
// `go build go.etcd.io/etcd/server/v3` resolves inside this module.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
