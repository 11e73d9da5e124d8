#!/usr/bin/env bash
# Start the testbed: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (one Go binary),
# a node (containerd + runc, the kubelet, kube-proxy; pods on a bridge: testbed/node.sh) with
# CoreDNS, Alertmanager and Prometheus; the control plane on loopback, all in the background.
# State lives in .testbed/run (removed by down.sh); binaries in .testbed/cache (kept).
# Writes .testbed/env (source it) and prints how to use the testbed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=node.sh
. "$TB_SRC/node.sh"
# shellcheck source=images.sh
. "$TB_SRC/images.sh"  # the image refs (TB_IMG_*), tb_images_build, tb_images_import

KUBECTL="$TB_BIN/kubectl"
ADMIN_KUBECONFIG="$TB_RUN/kubeconfig"
WEBHOOK_URL="${TESTBED_ALERT_WEBHOOK_URL:-$TB_DEFAULT_WEBHOOK}"

curl_api() { curl -sf --max-time 3 --cacert "$TB_PKI/ca.crt" --cert "$TB_PKI/admin.crt" --key "$TB_PKI/admin.key" "https://$TB_APISERVER$1"; }
api_ready() { [ "$(curl_api /readyz)" = ok ]; }

print_usage() {
  cat <<EOF

Use it:
  source .testbed/env            # KUBECONFIG, PROMETHEUS_URL, ALERTMANAGER_URL, PATH (kubectl)
  kubectl get nodes,pods -A
  Prometheus   http://$TB_PROM   (rules: drop *.yml into .testbed/run/prometheus/rules, then POST /-/reload)
  Alertmanager http://$TB_AM   (config: .testbed/run/alertmanager/alertmanager.yml, then POST /-/reload)
  logs: .testbed/run/logs/*.log   stop: make testbed-down
  restart one part: testbed/restart.sh apiserver|prometheus [--down SECONDS] [--kill]
EOF
}

# ---------------------------------------------------------------- already up?
if [ -d "$TB_PIDS" ]; then
  all_alive=1
  for c in $TB_COMPONENTS; do
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

# The node's network has fixed names (the bridge, iptables chains, the kubepods cgroups): one
# testbed per machine. Left by a testbed that is no longer running (a killed session, another
# clone's testbed whose processes are gone), it is removed; while any testbed runs, up refuses.
if ip link show "$TB_BRIDGE" >/dev/null 2>&1; then
  owners=$(tb_testbed_pids)
  [ -z "$owners" ] || tb_fail "check network" "the bridge $TB_BRIDGE exists and a testbed is running: $(echo "$owners" | head -3 | tr '\n' ';') (make testbed-down in its clone stops it)" ""
  tb_warn "the bridge $TB_BRIDGE was left by a testbed that no longer runs (no testbed process on this machine); removing its network and cgroups"
  # As down.sh runs them: without -e (a search that finds nothing is not a failure).
  (set +e; node_kill_leftovers; node_network_down; node_cgroups_clean)
  ip link show "$TB_BRIDGE" >/dev/null 2>&1 && tb_fail "check network" "the stale bridge $TB_BRIDGE could not be removed" ""
fi

mkdir -p "$TB_PKI" "$TB_PIDS" "$TB_LOGS" "$TB_RUN/etcd" \
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
    "IP:127.0.0.1,IP:$TB_API_SERVICE_IP,IP:$TB_NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert admin "/O=system:masters/CN=testbed-admin" clientAuth
  new_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  new_cert scheduler "/CN=system:kube-scheduler" clientAuth
  new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  new_cert node "/O=system:nodes/CN=system:node:$TB_NODE_NAME" clientAuth
  new_cert kubelet "/CN=$TB_NODE_NAME" serverAuth "IP:$TB_NODE_IP,DNS:$TB_NODE_NAME"
  new_cert kube-proxy "/CN=system:kube-proxy" clientAuth
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
tb_step "PKI: CA, apiserver, admin, controller-manager, scheduler, node, kubelet, kube-proxy, front-proxy, SA keys -> $TB_PKI"
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
write_kubeconfig "$TB_RUN/kubelet.kubeconfig" "system:node:$TB_NODE_NAME" node
write_kubeconfig "$TB_RUN/kube-proxy.kubeconfig" system:kube-proxy kube-proxy

# ---------------------------------------------------------------- pod network
tb_step "pod network: bridge $TB_BRIDGE ($TB_NODE_IP, pods in $TB_POD_CIDR), Services $TB_SERVICE_CIDR, nothing forwarded off the bridge"
node_network_up 2>"$TB_LOGS/network.log" || tb_fail "pod network" "ip/iptables failed (run make testbed-down to clean up)" "$TB_LOGS/network.log"

# ---------------------------------------------------------------- process helpers
# start NAME EXECUTABLE ARGS...: own session, stdin closed, log and pid file; the command line
# (NUL-separated) in pids/NAME.cmd, so that testbed/restart.sh starts it again the same way.
start() {
  local name="$1"
  shift
  printf '%s\0' "$@" >"$TB_PIDS/$name.cmd"
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
# Pods reach the API server through the `kubernetes` Service (kube-proxy -> the node IP it
# advertises): it listens on every address, and FILLPROB-INPUT (node.sh) lets only loopback and
# the bridge in.
start kube-apiserver "$TB_BIN/kube-apiserver" \
  --etcd-servers "http://$TB_ETCD_CLIENT" \
  --bind-address 0.0.0.0 --secure-port "${TB_APISERVER##*:}" --advertise-address "$TB_NODE_IP" \
  --tls-cert-file "$TB_PKI/apiserver.crt" --tls-private-key-file "$TB_PKI/apiserver.key" \
  --client-ca-file "$TB_PKI/ca.crt" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota,NodeRestriction \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$TB_PKI/sa.pub" \
  --service-account-signing-key-file "$TB_PKI/sa.key" \
  --service-cluster-ip-range "$TB_SERVICE_CIDR" \
  --kubelet-preferred-address-types InternalIP \
  --kubelet-client-certificate "$TB_PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$TB_PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$TB_PKI/ca.crt" \
  --requestheader-client-ca-file "$TB_PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$TB_PKI/front-proxy-client.crt" --proxy-client-key-file "$TB_PKI/front-proxy-client.key" \
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
# The simulator runs as a non-root user (its image's USER): it reads the model and eval dirs and
# writes its artifacts; tests add their own dirs under grinder/ (one hostPath in the example).
chmod 1777 "$TB_GRINDER/grinder" "$TB_GRINDER/grinder/artifacts"
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

# ---------------------------------------------------------------- the node
tb_step "containerd ($("$TB_BIN/containerd" --version | awk '{print $3}'), $("$TB_BIN/runc" --version | head -1)) on $TB_CONTAINERD_SOCK"
node_containerd_config
start containerd "$TB_BIN/containerd" --config "$TB_NODE_DIR/containerd.toml" --log-level warn
containerd_ok() { "$TB_BIN/ctr" --address "$TB_CONTAINERD_SOCK" --timeout 2s version; }
wait_ready containerd 30 "serving (ctr version)" containerd_ok

tb_step "images: build what changed (testbed/images.sh), import what containerd lacks"
tb_images_build
tb_images_import "$TB_CONTAINERD_SOCK"

tb_step "kube-proxy (iptables) and the kubelet: node '$TB_NODE_NAME' at https://$TB_NODE_IP:$TB_KUBELET_PORT"
node_kubelet_config
start kube-proxy "$TB_BIN/kube-proxy" --config "$TB_NODE_DIR/kube-proxy.yaml"
start kubelet "$TB_BIN/kubelet" --config "$TB_NODE_DIR/kubelet.yaml" \
  --kubeconfig "$TB_RUN/kubelet.kubeconfig" --hostname-override "$TB_NODE_NAME" --node-ip "$TB_NODE_IP" \
  --root-dir "$TB_KUBELET_ROOT" --cert-dir "$TB_NODE_DIR/kubelet-pki"
node_ready() {
  [ "$("$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" get node "$TB_NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_ready kubelet 90 "node Ready" node_ready
wait_ready kube-proxy 30 "healthy (/healthz)" curl -sf --max-time 2 "http://$TB_PROXY_HEALTHZ/healthz"

tb_step "CoreDNS (kube-system/coredns, Service kube-dns $TB_DNS_IP)"
sed -e "s|@DNS_IP@|$TB_DNS_IP|g" -e "s|@IMAGE@|$TB_IMG_COREDNS|g" "$TB_SRC/manifests/coredns.yaml" |
  "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" apply -f - >"$TB_LOGS/coredns-apply.log" 2>&1 ||
  tb_fail "CoreDNS" "kubectl apply failed" "$TB_LOGS/coredns-apply.log"
# Ready = a query from this machine through the Service (kube-proxy) gets an answer from CoreDNS.
dns_ok() { python3 "$TB_SRC/dnsquery.py" "$TB_DNS_IP" kubernetes.default.svc.cluster.local | grep -qx "$TB_API_SERVICE_IP"; }
wait_ready kubelet 90 "answering DNS (kubernetes.default.svc -> $TB_API_SERVICE_IP)" dns_ok

# ---------------------------------------------------------------- Alertmanager, Prometheus
tb_step "Alertmanager on http://$TB_AM (webhook receiver: $WEBHOOK_URL)"
sed -e "s|@WEBHOOK_URL@|$WEBHOOK_URL|g" "$TB_SRC/alertmanager.yml.tmpl" >"$TB_RUN/alertmanager/alertmanager.yml"
start alertmanager prometheus-alertmanager \
  --config.file "$TB_RUN/alertmanager/alertmanager.yml" \
  --storage.path "$TB_RUN/alertmanager/data" \
  --web.listen-address "0.0.0.0:${TB_AM##*:}" --cluster.listen-address=
wait_ready alertmanager 30 "ready (/-/ready)" curl -sf --max-time 2 "http://$TB_AM/-/ready"

# Both listen on every address so pods reach them through the Services in `monitoring`
# (manifests/monitoring.yaml); FILLPROB-INPUT lets in only loopback and the bridge.
# --rules.alert.resend-delay 1s: after a /-/reload the notifier has no Alertmanager for up to 5 s (discovery
# throttle); an alert first fired in that window is dropped and, by default, re-sent only a minute later.
tb_step "Prometheus on http://$TB_PROM (pods discovered via the API server, scrape/eval every 1s)"
sed -e "s|@RUN@|$TB_RUN|g" -e "s|@PKI@|$TB_PKI|g" -e "s|@APISERVER@|$TB_APISERVER|g" -e "s|@AM@|$TB_AM|g" \
  "$TB_SRC/prometheus.yml.tmpl" >"$TB_RUN/prometheus/prometheus.yml"
start prometheus "$TB_BIN/prometheus" \
  --config.file "$TB_RUN/prometheus/prometheus.yml" \
  --storage.tsdb.path "$TB_RUN/prometheus/data" --storage.tsdb.retention.time 1d \
  --web.listen-address "0.0.0.0:${TB_PROM##*:}" --web.enable-lifecycle \
  --rules.alert.resend-delay 1s
wait_ready prometheus 30 "ready (/-/ready)" curl -sf --max-time 2 "http://$TB_PROM/-/ready"

# The names kube-prometheus-stack gives them (the chart's default prometheus.url), for pods.
tb_step "Services monitoring/prometheus-operated and alertmanager-operated -> $TB_NODE_IP:${TB_PROM##*:}, :${TB_AM##*:}"
sed -e "s|@NODE_IP@|$TB_NODE_IP|g" -e "s|@PROM_PORT@|${TB_PROM##*:}|g" -e "s|@AM_PORT@|${TB_AM##*:}|g" \
  "$TB_SRC/manifests/monitoring.yaml" | "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" apply -f - >"$TB_LOGS/monitoring-apply.log" 2>&1 ||
  tb_fail "monitoring Services" "kubectl apply failed" "$TB_LOGS/monitoring-apply.log"

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
