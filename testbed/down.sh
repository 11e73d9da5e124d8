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

GRACE="${TESTBED_STOP_GRACE:-10}"
CLK_TCK=$(getconf CLK_TCK)
BTIME=$(awk '/^btime/ {print $2}' /proc/stat)

# Start time (epoch s) of a process, from /proc/PID/stat field 22.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }            # drop "pid (comm) " (comm may hold spaces)
  set -- $stat                 # field 3 of the file is $1 here
  echo $(( BTIME + ${20} / CLK_TCK ))
}

# alive PID: the process exists and is not a zombie waiting for init to reap it.
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# pid_from FILE: print the pid recorded in FILE if that process is alive and not a recycled pid
# (a process that started after the file was written is someone else's).
pid_from() {
  local f="$1" pid started written
  pid=$(tr -dc 0-9 <"$f" 2>/dev/null)
  [ -n "$pid" ] && alive "$pid" || return 1
  started=$(proc_start "$pid") || return 1
  written=$(stat -c %Y "$f")
  [ "$started" -le $(( written + 2 )) ] || { tb_warn "$f: pid $pid was recycled (started after the pid file); left alone"; return 1; }
  echo "$pid"
}

# stop LABEL PID: SIGTERM (its process group too when it leads one), wait GRACE s, then SIGKILL.
stop() {
  local label="$1" pid="$2" pgid deadline
  pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
  if [ "$pgid" = "$pid" ]; then kill -TERM -- "-$pid" 2>/dev/null; else kill -TERM "$pid" 2>/dev/null; fi
  deadline=$(( $(date +%s) + GRACE ))
  while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
  if alive "$pid"; then
    tb_warn "$label (pid $pid) ignored SIGTERM for ${GRACE}s: SIGKILL"
    if [ "$pgid" = "$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
    sleep 0.2
  else
    tb_info "$label (pid $pid) stopped"
  fi
  # leftovers of its process group (e.g. children of a session leader)
  [ "$pgid" = "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null
  return 0
}

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
