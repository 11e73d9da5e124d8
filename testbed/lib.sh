# Shared settings and helpers for testbed/build.sh, up.sh and down.sh (sourced, not run).
# shellcheck shell=bash

TB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TB_SRC="$TB_REPO/testbed"
TB_DIR="$TB_REPO/.testbed"
TB_CACHE="$TB_DIR/cache"
TB_BIN="$TB_CACHE/bin"
TB_RUN="$TB_DIR/run"
TB_PKI="$TB_RUN/pki"
TB_PIDS="$TB_RUN/pids"
TB_LOGS="$TB_RUN/logs"
TB_ENV="$TB_DIR/env"
TB_GRINDER="/tmp/fillprob-testbed"

# Pinned versions (kept in one place; go.mod pins the Go side).
TB_K8S_VERSION="v1.36.3"
TB_PROMETHEUS_VERSION="2.55.1" # Go module github.com/prometheus/prometheus v0.55.1 (testbed/prometheus)
TB_ALERTMANAGER_DEB="0.25.0-1+b4"

# Fixed loopback addresses (see notes/common.md).
TB_ETCD_CLIENT="127.0.0.1:23790"
TB_ETCD_PEER="127.0.0.1:23800"
TB_APISERVER="127.0.0.1:6443"
TB_CM_PORT=10257
TB_SCHED_PORT=10259
TB_NODE_NAME="testbed"
# The node: pods on the bridge TB_BRIDGE (its address is the node IP: the kubelet refuses a
# loopback one); Services from TB_SERVICE_CIDR through kube-proxy; cluster DNS at TB_DNS_IP.
# Traffic stays between this machine and its pod network namespaces: no NAT out, and a
# FORWARD rule drops anything from the bridge to another interface.
TB_BRIDGE="fpbr0"
TB_POD_CIDR="10.88.0.0/16"
TB_NODE_IP="10.88.0.1"
TB_SERVICE_CIDR="10.96.0.0/16"
TB_API_SERVICE_IP="10.96.0.1"
TB_DNS_IP="10.96.0.10"
TB_KUBELET_PORT=10250
TB_KUBELET_HEALTHZ="127.0.0.1:10248"
TB_PROXY_METRICS="127.0.0.1:10249"
TB_PROXY_HEALTHZ="127.0.0.1:10256"
# containerd keeps its content store and snapshots (the imported images) in the cache across
# down/up; its state (sockets, task bundles, netns mounts) lives in the run dir.
TB_CONTAINERD_ROOT="$TB_CACHE/containerd"
TB_CONTAINERD_STATE="$TB_RUN/containerd"
TB_CONTAINERD_SOCK="$TB_CONTAINERD_STATE/containerd.sock"
TB_CNI_BIN="/usr/lib/cni"
TB_IMAGES="$TB_DIR/images"
TB_PROM="127.0.0.1:19090"
TB_AM="127.0.0.1:19093"
TB_DEFAULT_WEBHOOK="http://127.0.0.1:19094/alerts"
TB_PORTS="23790 23800 6443 10257 10259 10250 10248 10249 10256 19090 19093"

# Order of start; down stops in reverse.
TB_COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kube-proxy kubelet alertmanager prometheus"

export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

TB_T0=$(date +%s)

if [ -t 1 ]; then TB_B=$'\033[1m' TB_R=$'\033[31m' TB_Y=$'\033[33m' TB_N=$'\033[0m'; else TB_B="" TB_R="" TB_Y="" TB_N=""; fi

tb_elapsed() { echo "$(( $(date +%s) - TB_T0 ))s"; }
tb_step() { printf '%s==> [%s] %s%s\n' "$TB_B" "$(tb_elapsed)" "$*" "$TB_N"; }
tb_info() { printf '    %s\n' "$*"; }
tb_warn() { printf '%sWARNING: %s%s\n' "$TB_Y" "$*" "$TB_N" >&2; }

# tb_fail STEP WHY [LOG]: say which step failed, why, and the tail of its log; exit 1.
tb_fail() {
  local step="$1" why="$2" log="${3:-}"
  printf '%sFAILED step: %s%s\n  why: %s\n' "$TB_R" "$step" "$TB_N" "$why" >&2
  if [ -n "$log" ] && [ -f "$log" ]; then
    printf '  last 40 lines of %s:\n' "$log" >&2
    tail -n 40 "$log" | sed 's/^/    | /' >&2
  fi
  exit 1
}

# tb_pid_alive NAME: true when the pid in pids/NAME.pid is a live process. A zombie is not:
# a killed part the machine's PID 1 has not reaped yet still answers `kill -0`, and
# restart.sh took that for "already running" and refused to start the API server again
# (CI, test_chaos_api_server_restarts: the API server then stayed down).
tb_pid_alive() {
  local f="$TB_PIDS/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$pid" ] && tb_running "$pid"
}

# tb_running PID: the process exists and is not a zombie waiting for init to reap it.
tb_running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# tb_testbed_pids: running processes of any testbed on this machine (this clone's or another's):
# the binaries a testbed starts from its .testbed/cache/bin, as "PID EXE" lines.
tb_testbed_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case "$exe" in */.testbed/cache/bin/*) ;; *) continue ;; esac
    tb_running "${p#/proc/}" && echo "${p#/proc/} $exe"
  done
}

# tb_wait_until DEADLINE_SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
tb_wait_until() {
  local deadline=$(( $(date +%s) + $1 )) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.5
  done
}
