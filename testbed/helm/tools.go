//go:build tools

// Helm v3 for the chart tests (`helm lint`, `helm template`) and for installing the chart into
// the testbed. A module of its own so its Kubernetes client libraries (pinned by helm) never
// meet the control plane's in testbed/cluster; go.sum pins every dependency. testbed/build.sh
// builds helm.sh/helm/v3/cmd/helm from here into .testbed/cache/bin/helm.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
