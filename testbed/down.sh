#!/usr/bin/env bash
# Stop everything testbed/up.sh started, by pid (SIGTERM, grace, SIGKILL); kill the node's
# containers through containerd, then whatever is left of them (shims, pod processes); remove the
# mounts, network namespaces, veths, bridge, iptables chains and cgroups the node made, and
# .testbed/run, .testbed/env, /tmp/fillprob-testbed. Fails when anything of it is still there.
# Keeps .testbed/cache (binaries, images, containerd's content store).
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=node.sh
. "$TB_SRC/node.sh"
# shellcheck source=procs.sh
. "$TB_SRC/procs.sh"  # pid_from, stop (shared with restart.sh)

stopped=0
# stop_component NAME: stop it by its pid file, when it runs.
stop_component() {
  local f="$TB_PIDS/$1.pid" pid
  [ -f "$f" ] || return 0
  if pid=$(pid_from "$f"); then stop "$1" "$pid"; stopped=$((stopped + 1)); else tb_info "$1: not running"; fi
}
if [ -d "$TB_PIDS" ]; then
  tb_step "stopping testbed processes (pids in $TB_PIDS)"
  # The kubelet first (it would restart containers), then the containers through containerd
  # while it still runs, then the rest in reverse start order.
  for c in prometheus alertmanager kubelet kube-proxy; do stop_component "$c"; done
  node_kill_tasks
  for c in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
fi
tb_step "stopped $stopped process(es); cleaning up the node"
node_kill_leftovers
node_unmount
node_network_down
node_cgroups_clean

rm -rf "$TB_RUN" "$TB_ENV" "$TB_GRINDER"
tb_step "removed .testbed/run, .testbed/env, $TB_GRINDER (kept .testbed/cache)"

left=""
for p in $TB_PORTS; do
  l=$(ss -Hltnp "sport = :$p" 2>/dev/null)
  [ -n "$l" ] && left+="$l"$'\n'
done
if [ -n "$left" ]; then
  printf '%sstill listening on testbed ports:%s\n%s' "$TB_R" "$TB_N" "$left" >&2
  exit 1
fi
left=$(node_leftovers)
if [ -n "$left" ]; then
  printf '%sthe node left:%s\n%s' "$TB_R" "$TB_N" "$left" >&2
  exit 1
fi
tb_step "nothing left: no testbed port listens ($TB_PORTS); no process, mount, bridge, veth, iptables chain or cgroup of the node"
