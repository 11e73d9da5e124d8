//go:build tools

// Package node pins what the testbed's node runs besides the kubelet: containerd 2.x
// (containerd, its runc shim, ctr) and runc 1.5.x. testbed/build.sh builds them from the
// module cache: go build github.com/containerd/containerd/v2/cmd/containerd ... .
package node

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/opencontainers/runc"
)
