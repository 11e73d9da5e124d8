#!/usr/bin/env bash
# Start the testbed: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (one Go binary),
# the process node (testbed/procnode), Alertmanager and Prometheus; all on loopback, in the background.
# State lives in .testbed/run (removed by down.sh); binaries in .testbed/cache (kept).
# Writes .testbed/env (source it) and prints how to use the testbed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBECTL="$TB_BIN/kubectl"
ADMIN_KUBECONFIG="$TB_RUN/kubeconfig"
WEBHOOK_URL="${TESTBED_ALERT_WEBHOOK_URL:-$TB_DEFAULT_WEBHOOK}"

curl_api() { curl -sf --max-time 3 --cacert "$TB_PKI/ca.crt" --cert "$TB_PKI/admin.crt" --key "$TB_PKI/admin.key" "https://$TB_APISERVER$1"; }
api_ready() { [ "$(curl_api /readyz)" = ok ]; }
has_procnode() { [ -d "$TB_SRC/procnode" ]; }

print_usage() {
  cat <<EOF

Use it:
  source .testbed/env            # KUBECONFIG, PROMETHEUS_URL, ALERTMANAGER_URL, PATH (kubectl)
  kubectl get nodes,pods -A
  Prometheus   http://$TB_PROM   (rules: drop *.yml into .testbed/run/prometheus/rules, then POST /-/reload)
  Alertmanager http://$TB_AM   (config: .testbed/run/alertmanager/alertmanager.yml, then POST /-/reload)
  logs: .testbed/run/logs/*.log   stop: make testbed-down
EOF
}

# ---------------------------------------------------------------- already up?
if [ -d "$TB_PIDS" ]; then
  all_alive=1
  for c in $TB_COMPONENTS; do
    [ "$c" = procnode ] && ! has_procnode && continue
    tb_pid_alive "$c" || { all_alive=0; break; }
  done
  if [ $all_alive = 1 ] && api_ready; then
    tb_step "testbed already up (pids in $TB_PIDS); nothing to do"
    print_usage
    exit 0
  fi
  tb_warn "a partial testbed is present in $TB_RUN; stopping it first"
  bash "$TB_SRC/down.sh"
fi

# ---------------------------------------------------------------- build / packages
bash "$TB_SRC/build.sh"
TB_T_START=$TB_T0
TB_T0=$(date +%s) # "ready in" counts from here: the build has its own timer

busy=""
for p in $TB_PORTS; do
  if [ -n "$(ss -Hltn "sport = :$p")" ]; then busy+=" $p"; fi
done
[ -z "$busy" ] || tb_fail "check ports" "already in use:$busy ($(ss -Hltnp | grep -E ":($(echo $busy | tr ' ' '|'))\b" | head -3 | tr '\n' ';'))" ""

mkdir -p "$TB_PKI" "$TB_PIDS" "$TB_LOGS" "$TB_RUN/etcd" "$TB_RUN/node" \
  "$TB_RUN/prometheus/rules" "$TB_RUN/prometheus/data" "$TB_RUN/alertmanager/data" \
  "$TB_RUN/serving/controller-manager" "$TB_RUN/serving/scheduler"
chmod 700 "$TB_RUN/etcd"

# ---------------------------------------------------------------- PKI (EC P-256, openssl)
PKI_LOG="$TB_LOGS/pki.log"
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TB_PKI/$1.key" 2>>"$PKI_LOG"; }
# new_cert NAME SUBJECT EKU [SANS]
new_cert() {
  local name="$1" subj="$2" eku="$3" sans="${4:-}"
  new_key "$name"
  openssl req -new -key "$TB_PKI/$name.key" -subj "$subj" -out "$TB_PKI/$name.csr" 2>>"$PKI_LOG"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$TB_PKI/$name.ext"
  local ca="${CA:-ca}"
  openssl x509 -req -in "$TB_PKI/$name.csr" -CA "$TB_PKI/$ca.crt" -CAkey "$TB_PKI/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$TB_PKI/$name.ext" -out "$TB_PKI/$name.crt" 2>>"$PKI_LOG"
  rm -f "$TB_PKI/$name.csr" "$TB_PKI/$name.ext"
}
make_pki() {
  new_key ca
  openssl req -x509 -new -key "$TB_PKI/ca.key" -subj "/CN=fillprob-testbed-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$TB_PKI/ca.crt" 2>>"$PKI_LOG"
  new_cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert admin "/O=system:masters/CN=testbed-admin" clientAuth
  new_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  new_cert scheduler "/CN=system:kube-scheduler" clientAuth
  new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  new_cert node "/O=system:nodes/CN=system:node:$TB_NODE_NAME" serverAuth,clientAuth "IP:127.0.0.1,DNS:localhost,DNS:$TB_NODE_NAME"
  # Front proxy (aggregation layer / requestheader auth), as kubeadm sets it up.
  new_key front-proxy-ca
  openssl req -x509 -new -key "$TB_PKI/front-proxy-ca.key" -subj "/CN=fillprob-testbed-front-proxy-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$TB_PKI/front-proxy-ca.crt" 2>>"$PKI_LOG"
  CA=front-proxy-ca new_cert front-proxy-client "/CN=front-proxy-client" clientAuth
  new_key sa
  openssl pkey -in "$TB_PKI/sa.key" -pubout -out "$TB_PKI/sa.pub" 2>>"$PKI_LOG"
  chmod 600 "$TB_PKI"/*.key
}
tb_step "PKI: CA, apiserver, admin, controller-manager, scheduler, node, front-proxy, SA keys -> $TB_PKI"
make_pki || tb_fail "PKI (openssl)" "openssl failed" "$PKI_LOG"

# write_kubeconfig FILE USER CERT_NAME
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://$TB_APISERVER
    certificate-authority-data: $(base64 -w0 "$TB_PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$TB_PKI/$3.crt")
    client-key-data: $(base64 -w0 "$TB_PKI/$3.key")
contexts:
- name: testbed
  context:
    cluster: testbed
    user: $2
    namespace: default
current-context: testbed
EOF
  chmod 600 "$1"
}
write_kubeconfig "$ADMIN_KUBECONFIG" testbed-admin admin
write_kubeconfig "$TB_RUN/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
write_kubeconfig "$TB_RUN/scheduler.kubeconfig" system:kube-scheduler scheduler

# ---------------------------------------------------------------- process helpers
# start NAME EXECUTABLE ARGS...: own session, stdin closed, log and pid file.
start() {
  local name="$1"
  shift
  setsid "$@" >"$TB_LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$TB_PIDS/$name.pid"
  tb_info "$name started (pid $!, log .testbed/run/logs/$name.log)"
}
# wait_ready NAME SECONDS WHAT COMMAND...: poll COMMAND; fail early if NAME's process died.
wait_ready() {
  local name="$1" secs="$2" what="$3" deadline
  shift 3
  deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    tb_pid_alive "$name" || tb_fail "start $name" "process exited before $what (run make testbed-down to clean up)" "$TB_LOGS/$name.log"
    [ "$(date +%s)" -lt "$deadline" ] || tb_fail "start $name" "not $what after ${secs}s (run make testbed-down to clean up)" "$TB_LOGS/$name.log"
    sleep 0.3
  done
}

# ---------------------------------------------------------------- etcd
tb_step "etcd on $TB_ETCD_CLIENT"
start etcd "$TB_BIN/etcd" --name testbed --data-dir "$TB_RUN/etcd" \
  --listen-client-urls "http://$TB_ETCD_CLIENT" --advertise-client-urls "http://$TB_ETCD_CLIENT" \
  --listen-peer-urls "http://$TB_ETCD_PEER" --initial-advertise-peer-urls "http://$TB_ETCD_PEER" \
  --initial-cluster "testbed=http://$TB_ETCD_PEER" --initial-cluster-state new \
  --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
etcd_ok() { case "$(curl -sf --max-time 2 "http://$TB_ETCD_CLIENT/health")" in *'"health":"true"'*) ;; *) return 1 ;; esac; }
wait_ready etcd 30 healthy etcd_ok

# ---------------------------------------------------------------- kube-apiserver
tb_step "kube-apiserver on https://$TB_APISERVER"
# No --kubelet-certificate-authority: the apiserver does not verify the process node's serving cert.
# --endpoint-reconciler-type none: Endpoints may not hold a loopback IP (the reconciler would fail every
# 10 s); pods reach the API server through the kubeconfig the process node gives them.
start kube-apiserver "$TB_BIN/kube-apiserver" \
  --etcd-servers "http://$TB_ETCD_CLIENT" \
  --bind-address 127.0.0.1 --secure-port 6443 --advertise-address 127.0.0.1 \
  --tls-cert-file "$TB_PKI/apiserver.crt" --tls-private-key-file "$TB_PKI/apiserver.key" \
  --client-ca-file "$TB_PKI/ca.crt" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota,NodeRestriction \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$TB_PKI/sa.pub" \
  --service-account-signing-key-file "$TB_PKI/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --kubelet-preferred-address-types InternalIP \
  --kubelet-client-certificate "$TB_PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$TB_PKI/apiserver-kubelet-client.key" \
  --requestheader-client-ca-file "$TB_PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$TB_PKI/front-proxy-client.crt" --proxy-client-key-file "$TB_PKI/front-proxy-client.key" \
  --endpoint-reconciler-type none \
  --allow-privileged=true \
  --profiling=false
wait_ready kube-apiserver 120 "ready (/readyz)" api_ready

# ---------------------------------------------------------------- controller-manager, scheduler
tb_step "kube-controller-manager (127.0.0.1:$TB_CM_PORT) and kube-scheduler (127.0.0.1:$TB_SCHED_PORT)"
start kube-controller-manager "$TB_BIN/kube-controller-manager" \
  --kubeconfig "$TB_RUN/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$TB_RUN/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$TB_RUN/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$TB_CM_PORT" --cert-dir "$TB_RUN/serving/controller-manager" \
  --service-account-private-key-file "$TB_PKI/sa.key" \
  --root-ca-file "$TB_PKI/ca.crt" \
  --cluster-signing-cert-file "$TB_PKI/ca.crt" --cluster-signing-key-file "$TB_PKI/ca.key" \
  --use-service-account-credentials=true \
  --leader-elect=false \
  --profiling=false
start kube-scheduler "$TB_BIN/kube-scheduler" \
  --kubeconfig "$TB_RUN/scheduler.kubeconfig" \
  --authentication-kubeconfig "$TB_RUN/scheduler.kubeconfig" \
  --authorization-kubeconfig "$TB_RUN/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$TB_SCHED_PORT" --cert-dir "$TB_RUN/serving/scheduler" \
  --leader-elect=false \
  --profiling=false
wait_ready kube-controller-manager 60 "healthy (/healthz)" curl -skf --max-time 2 "https://127.0.0.1:$TB_CM_PORT/healthz"
wait_ready kube-scheduler 60 "healthy (/healthz)" curl -skf --max-time 2 "https://127.0.0.1:$TB_SCHED_PORT/healthz"
default_sa() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" -n default get serviceaccount default; }
wait_ready kube-controller-manager 60 "creating ServiceAccount default/default" default_sa

# ---------------------------------------------------------------- example grinder data
tb_step "grinder data dirs in $TB_GRINDER/grinder"
mkdir -p "$TB_GRINDER/grinder/model" "$TB_GRINDER/grinder/eval" "$TB_GRINDER/grinder/artifacts"
cat >"$TB_GRINDER/grinder/model/manifest.json" <<'EOF'
{"kind": "fill_prob_model", "model_version": "testbed-1", "created_at": "2026-01-01T00:00:00Z", "files": ["model.json"]}
EOF
cat >"$TB_GRINDER/grinder/model/model.json" <<'EOF'
{"model_version": "testbed-1", "type": "uniform_bins", "bins": [{"lo_bps": 0, "hi_bps": 10000, "fill_prob": 0.5}]}
EOF
cat >"$TB_GRINDER/grinder/eval/eval_report.json" <<'EOF'
{"recommended_bps": 2500, "model_version": "testbed-1", "evaluated_at": "2026-01-01T00:00:00Z", "n_orders": 100000, "auc": 0.71}
EOF
cat >"$TB_GRINDER/grinder/eval/manifest.json" <<'EOF'
{"kind": "fill_prob_eval", "model_version": "testbed-1", "created_at": "2026-01-01T00:00:00Z", "files": ["eval_report.json"]}
EOF

# ---------------------------------------------------------------- process node
if has_procnode; then
  tb_step "process node '$TB_NODE_NAME' (kubelet endpoint https://$TB_NODE_LISTEN)"
  [ -x "$TB_REPO/.venv/bin/python" ] || tb_fail "start procnode" "$TB_REPO/.venv/bin/python missing: run make venv" ""
  (cd "$TB_REPO" && export PYTHONPATH="$TB_SRC${PYTHONPATH:+:$PYTHONPATH}" && start procnode \
    "$TB_REPO/.venv/bin/python" -m procnode --kubeconfig "$ADMIN_KUBECONFIG" --state-dir "$TB_RUN/node" \
    --images "$TB_SRC/images.json" --repo-root "$TB_REPO" --node-name "$TB_NODE_NAME" \
    --listen "$TB_NODE_LISTEN" --cert "$TB_PKI/node.crt" --key "$TB_PKI/node.key")
  node_ready() {
    [ "$("$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" get node "$TB_NODE_NAME" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
  }
  wait_ready procnode 60 "Ready" node_ready
else
  tb_warn "testbed/procnode does not exist yet: no node, pods stay Pending (control plane only)"
fi

# ---------------------------------------------------------------- Alertmanager, Prometheus
tb_step "Alertmanager on http://$TB_AM (webhook receiver: $WEBHOOK_URL)"
sed -e "s|@WEBHOOK_URL@|$WEBHOOK_URL|g" "$TB_SRC/alertmanager.yml.tmpl" >"$TB_RUN/alertmanager/alertmanager.yml"
start alertmanager prometheus-alertmanager \
  --config.file "$TB_RUN/alertmanager/alertmanager.yml" \
  --storage.path "$TB_RUN/alertmanager/data" \
  --web.listen-address "$TB_AM" --cluster.listen-address=
wait_ready alertmanager 30 "ready (/-/ready)" curl -sf --max-time 2 "http://$TB_AM/-/ready"

# --rules.alert.resend-delay 1s: after a /-/reload the notifier has no Alertmanager for up to 5 s (discovery
# throttle); an alert first fired in that window is dropped and, by default, re-sent only a minute later.
tb_step "Prometheus on http://$TB_PROM (pods discovered via the API server, scrape/eval every 1s)"
sed -e "s|@RUN@|$TB_RUN|g" -e "s|@PKI@|$TB_PKI|g" -e "s|@APISERVER@|$TB_APISERVER|g" -e "s|@AM@|$TB_AM|g" \
  "$TB_SRC/prometheus.yml.tmpl" >"$TB_RUN/prometheus/prometheus.yml"
start prometheus "$TB_BIN/prometheus" \
  --config.file "$TB_RUN/prometheus/prometheus.yml" \
  --storage.tsdb.path "$TB_RUN/prometheus/data" --storage.tsdb.retention.time 1d \
  --web.listen-address "$TB_PROM" --web.enable-lifecycle \
  --rules.alert.resend-delay 1s
wait_ready prometheus 30 "ready (/-/ready)" curl -sf --max-time 2 "http://$TB_PROM/-/ready"

# ---------------------------------------------------------------- env file
cat >"$TB_ENV" <<EOF
# written by testbed/up.sh; source it: . .testbed/env
export KUBECONFIG="$ADMIN_KUBECONFIG"
export PROMETHEUS_URL="http://$TB_PROM"
export ALERTMANAGER_URL="http://$TB_AM"
export ALERTMANAGER_CONFIG="$TB_RUN/alertmanager/alertmanager.yml"
export PROMETHEUS_RULES_DIR="$TB_RUN/prometheus/rules"
export TESTBED_GRINDER_DIR="$TB_GRINDER/grinder"
export PATH="$TB_BIN:\$PATH"
EOF

tb_step "testbed ready in $(tb_elapsed), $(( $(date +%s) - TB_T_START ))s with the build check (server $("$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" version -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -1))"
print_usage
