#!/usr/bin/env bash
# Stop everything testbed/up.sh started, by pid (SIGTERM, grace, SIGKILL), including pod processes the
# process node left behind; remove .testbed/run, .testbed/env and /tmp/fillprob-testbed; check that no
# testbed port is still listening. Keeps .testbed/cache (binaries).
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
if [ -d "$TB_PIDS" ]; then
  tb_step "stopping testbed processes (pids in $TB_PIDS)"
  for c in $(echo "$TB_COMPONENTS" | tr ' ' '\n' | tac); do
    f="$TB_PIDS/$c.pid"
    [ -f "$f" ] || continue
    if pid=$(pid_from "$f"); then stop "$c" "$pid"; stopped=$((stopped + 1)); else tb_info "$c: not running"; fi
  done
fi

# Pod processes the node left (it records them under its state dir).
if [ -d "$TB_RUN/node" ]; then
  while IFS= read -r f; do
    if pid=$(pid_from "$f"); then
      stop "pod process ${f#"$TB_RUN/node/"}" "$pid"
      stopped=$((stopped + 1))
    fi
  done < <(find "$TB_RUN/node" \( -name pid -o -name '*.pid' \) -type f 2>/dev/null)
fi
tb_step "stopped $stopped process(es)"

rm -rf "$TB_RUN" "$TB_ENV" "$TB_GRINDER"
tb_step "removed .testbed/run, .testbed/env, $TB_GRINDER (kept .testbed/cache)"

left=""
for p in $TB_PORTS; do
  l=$(ss -Hltnp "sport = :$p" 2>/dev/null)
  [ -n "$l" ] && left+="$l"$'\n'
done
# pods bind their own loopback IPs 127.1.x.y
l=$(ss -Hltnp 2>/dev/null | awk '$4 ~ /^127\.1\./')
[ -n "$l" ] && left+="$l"$'\n'
if [ -n "$left" ]; then
  printf '%sstill listening on testbed ports:%s\n%s' "$TB_R" "$TB_N" "$left" >&2
  exit 1
fi
tb_step "nothing listens on the testbed ports ($TB_PORTS) nor on pod IPs 127.1.x.y"
