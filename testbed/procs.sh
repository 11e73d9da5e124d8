# Stopping testbed processes by pid, for down.sh and restart.sh (sourced, not run; needs lib.sh).
# shellcheck shell=bash

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

# alive PID: running, not a zombie (lib.sh's tb_running).
alive() { tb_running "$1"; }

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

# stop LABEL PID [SIGNAL]: SIGNAL (default TERM; its process group too when it leads one), wait
# GRACE s, then SIGKILL. SIGNAL=KILL is a crash: no shutdown handlers run.
stop() {
  local label="$1" pid="$2" sig="${3:-TERM}" pgid deadline
  pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
  if [ "$pgid" = "$pid" ]; then kill "-$sig" -- "-$pid" 2>/dev/null; else kill "-$sig" "$pid" 2>/dev/null; fi
  deadline=$(( $(date +%s) + GRACE ))
  while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
  if alive "$pid"; then
    tb_warn "$label (pid $pid) ignored SIG$sig for ${GRACE}s: SIGKILL"
    if [ "$pgid" = "$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
    sleep 0.2
  else
    tb_info "$label (pid $pid) stopped"
  fi
  # leftovers of its process group (e.g. children of a session leader)
  [ "$pgid" = "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null
  return 0
}

