//go:build tools

// The commands testbed/build.sh builds from this module besides the cluster binary and
// ./coredns: containerd 2.x (the release whose k8s.io libraries are the control plane's own,
// v0.36), its runc shim and ctr, and helm v3. Pinned here so go.mod keeps them; one `go build`
// compiles the packages they share with the control plane once.
package main

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "helm.sh/helm/v3/cmd/helm"
)
