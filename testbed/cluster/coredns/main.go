// Command coredns is the testbed's cluster DNS: CoreDNS from its Go module with only the
// plugins the kube-system Corefile uses (testbed/manifests/coredns.yaml), so the first build
// compiles the kubernetes plugin and not every cloud provider's. Names outside cluster.local
// get no answer from upstream: the testbed has no route out.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
