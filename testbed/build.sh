#!/usr/bin/env bash
# Build (or reuse) what the testbed needs (../shared/TESTBED.md, "What runs"):
#  - Debian packages: prometheus-alertmanager, openssl, curl, iproute2, jq, iptables, the CNI
#    plugins (containernetworking-plugins), buildah + debootstrap (images), libseccomp-dev (runc);
#  - from the one Go module testbed/cluster, in one `go build` (CGO off, static), so the packages
#    they share compile once:
#    - the multi-call binary cluster, with symlinks kube-apiserver, kube-controller-manager,
#      kube-scheduler, kubelet, kube-proxy, kubectl, etcd;
#    - containerd 2.x, its runc shim and ctr (the release whose Kubernetes libraries are the
#      control plane's own);
#    - CoreDNS (testbed/cluster/coredns: only the plugins the cluster's Corefile uses);
#    - helm v3 (the chart tests, installing charts/fillprob-operator);
#  - runc 1.5.x from testbed/node (cgo, -tags seccomp: Debian's runc 1.1 fails under containerd 2.x);
#  - Prometheus 2.x and promtool from testbed/prometheus: Debian bookworm's `prometheus` is built
#    without kubernetes_sd_configs, and Prometheus 2.x needs older libraries than Kubernetes 1.36.
# The testbed/cluster build needs only Go, so it starts first and the Debian packages install
# beside it; runc and Prometheus follow in a second lane. Everything lands in .testbed/cache/bin.
# Later runs reuse a binary while it is newer than its module's go.mod, go.sum and .go files.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$TB_BIN" "$TB_CACHE/logs"
APT_LOG="$TB_CACHE/logs/apt.log"
CLUSTER_SRC="$TB_SRC/cluster"
PROMETHEUS_SRC="$TB_SRC/prometheus"
BINARY="$TB_BIN/cluster"
NODE_SRC="$TB_SRC/node"
# testbed/cluster's main packages, each built to .testbed/cache/bin/<last element of its path>.
CLUSTER_PKGS=". ./coredns github.com/containerd/containerd/v2/cmd/containerd
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr
  helm.sh/helm/v3/cmd/helm"
COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd"

# ---------------------------------------------------------------- Debian packages
step_apt() {
  local missing=()
  command -v prometheus-alertmanager >/dev/null || missing+=("prometheus-alertmanager=$TB_ALERTMANAGER_DEB")
  command -v openssl >/dev/null || missing+=("openssl")
  command -v curl >/dev/null || missing+=("curl")
  command -v ss >/dev/null || missing+=("iproute2")
  command -v jq >/dev/null || missing+=("jq")  # the Argo CD ignoreDifferences test runs its jq paths
  command -v iptables >/dev/null || missing+=("iptables")      # kube-proxy, the kubelet's chains
  [ -x /usr/lib/cni/bridge ] || missing+=("containernetworking-plugins")
  command -v buildah >/dev/null || missing+=("buildah")        # images, daemonless
  command -v debootstrap >/dev/null || missing+=("debootstrap") # the local base image
  [ -e /usr/include/seccomp.h ] || missing+=("libseccomp-dev") # runc -tags seccomp
  command -v pkg-config >/dev/null || missing+=("pkg-config")
  command -v gcc >/dev/null || missing+=("gcc" "libc6-dev")   # the pause binary, cgo for runc
  if [ ${#missing[@]} -eq 0 ]; then
    tb_step "Debian packages: present (alertmanager $(prometheus-alertmanager --version 2>&1 | head -1 | awk '{print $3}'), $(openssl version | cut -d' ' -f1-2))"
    return
  fi
  tb_step "Debian packages: installing ${missing[*]}"
  [ "$(id -u)" = 0 ] || tb_fail "apt-get install" "not root; install ${missing[*]} by hand" ""
  # prometheus-alertmanager ships an init script; keep it from starting a daemon on the default port.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  {
    apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  } >"$APT_LOG" 2>&1 || {
    tb_warn "pinned install failed (see $APT_LOG); retrying with the candidate versions"
    local unpinned=("${missing[@]%%=*}")
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${unpinned[@]}" >>"$APT_LOG" 2>&1 || {
      [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
      tb_fail "apt-get install ${unpinned[*]}" "apt-get exited non-zero" "$APT_LOG"
    }
  }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  tb_info "installed: $(prometheus-alertmanager --version 2>&1 | head -1)"
}

# ---------------------------------------------------------------- Go binaries
# fresh SRC_DIR BINARY...: every binary is newer than the module's go.mod, go.sum, its .go files
# (those of its sub-packages too) and overlays (when present).
fresh() {
  local dir="$1" bin f
  shift
  for bin in "$@"; do
    [ -x "$bin" ] || return 1
    for f in "$dir/go.mod" "$dir/go.sum" "$dir"/*.go "$dir"/*/*.go "$dir"/*.overlay; do
      [ -e "$f" ] || continue
      [ "$bin" -nt "$f" ] || return 1
    done
  done
}

k8s_ldflags() {
  local p out="-s -w"
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    out+=" -X $p.gitVersion=$TB_K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=36"
    out+=" -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  echo "$out"
}

prometheus_ldflags() {
  local p=github.com/prometheus/common/version
  echo "-s -w -X $p.Version=$TB_PROMETHEUS_VERSION -X $p.Revision=v0.${TB_PROMETHEUS_VERSION#2.} -X $p.Branch=HEAD -X $p.BuildUser=testbed -X $p.BuildDate=20260101-00:00:00"
}

# go_mod_version DIR MODULE: the version of MODULE that DIR/go.mod requires.
go_mod_version() {
  awk -v m="$2" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"
}

# What helm's own Makefile sets: its version, and the Kubernetes version `helm lint` and
# `helm template` assume (from the client-go it is built with: v0.36 -> 1.36).
helm_ldflags() {
  local hv kv
  hv=$(go_mod_version "$CLUSTER_SRC" helm.sh/helm/v3)
  kv=$(go_mod_version "$CLUSTER_SRC" k8s.io/client-go)
  kv=${kv#v0.}
  kv=${kv%%.*}
  echo "-X helm.sh/helm/v3/internal/version.version=$hv -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kv -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kv"
}

check_go() {
  command -v go >/dev/null || tb_fail "go toolchain" "go not found on PATH (need go 1.26)" ""
  GOVERSION_FOUND=$(go env GOVERSION)
  case "$GOVERSION_FOUND" in go1.26*) ;; *) tb_fail "go toolchain" "found $GOVERSION_FOUND, need go1.26.x (GOTOOLCHAIN=local)" "" ;; esac
}

# build_go LABEL MODULE_DIR "PACKAGES" "OUTPUTS" LDFLAGS MINUTES [TAGS]: one `go build` of the
# module's PACKAGES, the i-th installed as the i-th of OUTPUTS (a package's binary is named after
# the last element of its path). No TAGS: CGO_ENABLED=0 (static); TAGS: a cgo build with them.
build_go() {
  local label="$1" dir="$2" ld="$5" minutes="$6" tags="${7:-}"
  local -a pkgs outs
  read -r -a pkgs <<<"$(echo $3)"
  read -r -a outs <<<"$(echo $4)"
  local log="$TB_CACHE/logs/go-build-$label.log" modlog="$TB_CACHE/logs/go-mod-download-$label.log"
  if fresh "$dir" "${outs[@]}"; then
    tb_step "$label: cached (newer than ${dir#"$TB_REPO/"}/go.mod, go.sum and its .go files)"
    return
  fi
  check_go
  # go list fetches the modules these packages need (only those: `go mod download` would fetch
  # every module go.mod names, test-only ones too) and counts the packages for the progress lines.
  tb_step "$label: fetching the modules it needs (module cache: $(go env GOMODCACHE); log: $modlog)"
  local total
  total=$( (cd "$dir" && go list -deps "${pkgs[@]}") 2>"$modlog" | wc -l) ||
    tb_fail "$label: go list -deps ${pkgs[*]}" "could not fetch the modules pinned in ${dir#"$TB_REPO/"}/go.sum, or the package graph does not resolve" "$modlog"

  tb_step "$label: go build ${#pkgs[@]} command(s) ($GOVERSION_FOUND, $total packages; cold cache: about $minutes min on 2 cores; log: $log)"
  # -gcflags=all=-dwarf=false: no debug info is compiled that -ldflags=-w would drop anyway.
  local tmp="$TB_BIN/.build-$label.$$" start rc bpid last=-1 n cgo=0 i
  local -a flags=(-v -trimpath "-gcflags=all=-dwarf=false" -ldflags "$ld" -o "$tmp/")
  if [ -n "$tags" ]; then
    cgo=1
    flags+=(-tags "$tags")
  fi
  rm -rf "$tmp" && mkdir -p "$tmp"
  start=$(date +%s)
  (cd "$dir" && CGO_ENABLED=$cgo exec go build "${flags[@]}" "${pkgs[@]}") >"$log" 2>&1 &
  bpid=$!
  while kill -0 $bpid 2>/dev/null; do
    n=$(grep -c -v -e '^#' -e ': ' "$log" 2>/dev/null || true)
    if [ "$n" != "$last" ]; then
      tb_info "[$label] $n/$total packages compiled (the rest cached or pending), $(( $(date +%s) - start ))s elapsed"
      last=$n
    fi
    sleep 10 & wait $! 2>/dev/null || true
  done
  wait $bpid && rc=0 || rc=$?
  if [ $rc -ne 0 ]; then
    rm -rf "$tmp"
    tb_fail "$label: go build ${pkgs[*]}" "go build exited $rc after $(( $(date +%s) - start ))s" "$log"
  fi
  for i in "${!pkgs[@]}"; do
    local built="$tmp/$(basename "${pkgs[$i]}")"
    [ "${pkgs[$i]}" = . ] && built="$tmp/$(basename "$(cd "$dir" && go list -f '{{.ImportPath}}' .)")"
    [ -x "$built" ] || tb_fail "$label: go build" "no binary $built for ${pkgs[$i]}" "$log"
    mv -f "$built" "${outs[$i]}"
  done
  rm -rf "$tmp"
  tb_info "built $(for o in "${outs[@]}"; do printf '%s (%s) ' "${o##*/}" "$(du -h "$o" | cut -f1)"; done)in $(( $(date +%s) - start ))s"
}

# prometheus_modfile: a go.mod for testbed/prometheus whose Prometheus is a copy of the module
# with plugins/plugins.go swapped for testbed/prometheus/plugins.go.overlay (kubernetes service
# discovery only), so a cold build does not compile every cloud provider's SDK. (`go build
# -overlay` may not replace files in the module cache, hence the copy.) Prints its path.
prometheus_modfile() {
  local dir src="$TB_CACHE/prometheus-src" mod="$TB_CACHE/prometheus.go.mod"
  dir=$(cd "$PROMETHEUS_SRC" && go mod download -json github.com/prometheus/prometheus | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') &&
    [ -n "$dir" ] || return 1
  rm -rf "$src"
  cp -r "$dir" "$src" && chmod -R u+w "$src" && cp "$PROMETHEUS_SRC/plugins.go.overlay" "$src/plugins/plugins.go" || return 1
  { cat "$PROMETHEUS_SRC/go.mod"; echo "replace github.com/prometheus/prometheus => $src"; } >"$mod"
  cp "$PROMETHEUS_SRC/go.sum" "${mod%.mod}.sum"
  echo "$mod"
}

# Two lanes side by side. The cluster lane needs only Go, so it starts before the Debian
# packages install; the tools lane (runc needs libseccomp-dev and gcc) starts after them. On 2
# cores one lane compiles while the other downloads modules or links (single-threaded). Each
# lane stops at its first failure (tb_fail has printed why); the build fails when either did.
lane_cluster() {
  local cv outs="" p
  cv=$(go_mod_version "$CLUSTER_SRC" github.com/containerd/containerd/v2)
  for p in $CLUSTER_PKGS; do
    case "$p" in .) outs+=" $BINARY" ;; *) outs+=" $TB_BIN/${p##*/}" ;; esac
  done
  build_go cluster "$CLUSTER_SRC" "$CLUSTER_PKGS" "$outs" \
    "$(k8s_ldflags) $(helm_ldflags) -X github.com/containerd/containerd/v2/version.Version=$cv" 15-20
}

lane_tools() {
  local rv
  rv=$(go_mod_version "$NODE_SRC" github.com/opencontainers/runc)
  build_go runc "$NODE_SRC" github.com/opencontainers/runc "$TB_BIN/runc" "-s -w -X main.version=${rv#v}" 1 seccomp
  local modfile=""
  if ! fresh "$PROMETHEUS_SRC" "$TB_BIN/prometheus" "$TB_BIN/promtool"; then
    modfile=$(prometheus_modfile) || tb_fail "prometheus" "could not download or copy github.com/prometheus/prometheus" ""
  fi
  # promtool of the same release: the dashboard and rule tests parse PromQL with it.
  GOFLAGS="$GOFLAGS -modfile=$modfile" build_go prometheus "$PROMETHEUS_SRC" \
    "github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool" \
    "$TB_BIN/prometheus $TB_BIN/promtool" "$(prometheus_ldflags)" 5-9
}

step_links() {
  local c
  for c in $COMMANDS; do
    ln -sfn cluster "$TB_BIN/$c"
  done
  local v
  v=$("$TB_BIN/kubectl" version --client 2>&1) || tb_fail "check binary" "kubectl version --client failed: $v" ""
  v=${v%%$'\n'*}
  case "$v" in *"$TB_K8S_VERSION"*) ;; *) tb_fail "check binary" "binary reports '$v', expected $TB_K8S_VERSION" "" ;; esac
  local pv
  pv=$("$TB_BIN/prometheus" --version 2>&1) || tb_fail "check binary" "$TB_BIN/prometheus --version failed: $pv" ""
  pv=${pv%%$'\n'*}
  local hv want
  hv=$("$TB_BIN/helm" version --short 2>&1) || tb_fail "check binary" "$TB_BIN/helm version failed: $hv" ""
  want=$(go_mod_version "$CLUSTER_SRC" helm.sh/helm/v3)
  case "$hv" in "$want"*) ;; *) tb_fail "check binary" "helm reports '$hv', expected $want (testbed/cluster/go.mod)" "" ;; esac
  local cdv rv rcv
  cdv=$("$TB_BIN/containerd" --version 2>&1) || tb_fail "check binary" "containerd --version failed: $cdv" ""
  cdv=$(awk '{print $3}' <<<"$cdv")
  # Whole outputs into variables: `| head -1` would SIGPIPE the writer and, with pipefail, stop
  # this script without a word.
  rv=$("$TB_BIN/runc" --version 2>&1) || tb_fail "check binary" "runc --version failed: $rv" ""
  rcv=${rv%%$'\n'*}
  case "$rv" in *$'\n'libseccomp:*) ;; *) tb_fail "check binary" "runc was built without seccomp: $rv" "" ;; esac
  tb_step "binaries ready in $TB_BIN: $COMMANDS ($v), ${pv%% (*}, helm ${hv%%+*}, containerd $cdv, $rcv, coredns"
}

# The images' downloads (debootstrap, wheels) run beside the Go builds; testbed/images.sh
# builds the images themselves after (up.sh, make images) and waits for this on its lock.
step_images_prefetch() {
  PREFETCH_LOG="$TB_CACHE/logs/images-prefetch.log"
  nice -n 10 bash "$TB_SRC/images.sh" prefetch >"$PREFETCH_LOG" 2>&1 &
  PREFETCH_PID=$!
}

# kill_tree PID: PID and every process under it (a failed step must not leave a go build behind).
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

check_go
lane_cluster &
CLUSTER_LANE=$!
trap 'kill_tree $CLUSTER_LANE; [ -z "${TOOLS_LANE:-}" ] || kill_tree $TOOLS_LANE' EXIT
step_apt
step_images_prefetch
# The cluster lane is the long one (the demo waits for it): the others run niced and take the
# CPU it leaves idle (linking, single-package stretches) rather than half of it.
( renice -n 10 -p "$BASHPID" >/dev/null; lane_tools ) &
TOOLS_LANE=$!
rc=0
wait $CLUSTER_LANE || rc=1
wait $TOOLS_LANE || rc=1
[ $rc = 0 ] || exit 1
trap - EXIT
step_links
if wait "$PREFETCH_PID"; then
  tb_step "images beside the Go builds (base, wheels, grinder-sim, fillprob-operator): $(grep -h -e 'reused' -e 'in [0-9]*s' "$PREFETCH_LOG" | sed 's/^ *//; s/^==> \[[0-9]*s\] //' | tr '\n' ';' | sed 's/;$//')"
else
  tb_fail "images beside the Go builds (testbed/images.sh prefetch)" "debootstrap, pip download or an image build failed" "$PREFETCH_LOG"
fi
# The CPU the build's processes used (user + system, all finished children): on a shared or
# busy machine the wall time varies, this much less.
children_cpu() {
  local f="$TB_CACHE/logs/times.txt"
  times >"$f"  # here, not in a pipe or $(...): a subshell has no children of its own
  awk 'NR == 2 {
    n = split($1 " " $2, t, " "); s = 0
    for (i = 1; i <= n; i++) { split(t[i], p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }
    printf "%d", s }' "$f"
}
children_cpu >"$TB_CACHE/logs/cpu.txt"
tb_step "build done in $(tb_elapsed) (CPU: $(cat "$TB_CACHE/logs/cpu.txt") s of user + system time in its processes, on $(nproc) cores)"
