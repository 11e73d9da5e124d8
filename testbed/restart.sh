#!/usr/bin/env bash
# Stop and start one part of a running testbed the way up.sh started it (the command line it
# recorded in .testbed/run/pids/NAME.cmd, the same log, appended), leaving the rest running:
# for tests that restart the API server or Prometheus under the operator (tests/e2e/test_chaos.py).
#
#   testbed/restart.sh apiserver|prometheus [restart|stop|start] [--down SECONDS] [--kill]
#
# restart (the default): stop, stay down SECONDS (default 0: an outage, not only a blip, when
# given), start, wait until ready (/readyz, /-/ready). stop and start do one half, for a caller
# that does something while it is down. --kill stops with SIGKILL (a crash: the API server drops
# its watches and in-flight requests unanswered, Prometheus replays its WAL at start); the
# default is SIGTERM, as `make testbed-down` stops it. Prints how long the part was unavailable.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=procs.sh
. "$TB_SRC/procs.sh"

usage() {
  echo "usage: testbed/restart.sh apiserver|prometheus [restart|stop|start] [--down SECONDS] [--kill]" >&2
  exit 2
}
case "${1:-}" in
  apiserver) name=kube-apiserver ;;
  prometheus) name=prometheus ;;
  *) usage ;;
esac
shift
action=restart down=0 sig=TERM
while [ $# -gt 0 ]; do
  case "$1" in
    restart | stop | start) action="$1" ;;
    --down) down="${2:?--down needs SECONDS}"; shift ;;
    --kill) sig=KILL ;;
    *) usage ;;
  esac
  shift
done

cmd_file="$TB_PIDS/$name.cmd"
[ -f "$cmd_file" ] || tb_fail "restart $name" "no recorded command line in $cmd_file (a testbed started by an older up.sh, or none): make testbed-down && make testbed-up" ""
mapfile -d '' argv <"$cmd_file"

ready() {
  case "$name" in
    kube-apiserver)
      [ "$(curl -sf --max-time 2 --cacert "$TB_PKI/ca.crt" --cert "$TB_PKI/admin.crt" --key "$TB_PKI/admin.key" \
        "https://$TB_APISERVER/readyz")" = ok ] ;;
    prometheus) curl -sf --max-time 2 "http://$TB_PROM/-/ready" >/dev/null ;;
  esac
}

stop_it() {
  local pid
  if pid=$(pid_from "$TB_PIDS/$name.pid"); then
    stop "$name" "$pid" "$sig"
  else
    tb_info "$name: not running"
  fi
  date +%s.%N >"$TB_PIDS/$name.stopped-at"
}

start_it() {
  local deadline stopped_at
  tb_pid_alive "$name" && tb_fail "start $name" "already running (pid $(cat "$TB_PIDS/$name.pid"))" ""
  echo "--- testbed/restart.sh: started again $(date -u +%FT%T.%3NZ) ---" >>"$TB_LOGS/$name.log"
  setsid "${argv[@]}" >>"$TB_LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$TB_PIDS/$name.pid"
  deadline=$(( $(date +%s) + 120 ))
  until ready; do
    tb_pid_alive "$name" || tb_fail "start $name" "process exited before it was ready" "$TB_LOGS/$name.log"
    [ "$(date +%s)" -lt "$deadline" ] || tb_fail "start $name" "not ready after 120s" "$TB_LOGS/$name.log"
    sleep 0.2
  done
  stopped_at=$(cat "$TB_PIDS/$name.stopped-at" 2>/dev/null || echo "")
  rm -f "$TB_PIDS/$name.stopped-at"
  tb_info "$name ready again (pid $(cat "$TB_PIDS/$name.pid"))${stopped_at:+, unavailable $(awk -v now="$(date +%s.%N)" -v then="$stopped_at" 'BEGIN { printf "%.1f", now - then }')s}"
}

case "$action" in
  stop) stop_it ;;
  start) start_it ;;
  restart)
    stop_it
    sleep "$down"
    start_it
    ;;
esac
