//go:build tools

// Package node pins runc 1.5.x, the one node binary built with cgo (-tags seccomp against
// Debian's libseccomp-dev). containerd and its shim come from testbed/cluster.
package node

import (
	_ "github.com/opencontainers/runc"
)
